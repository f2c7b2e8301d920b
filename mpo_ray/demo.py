"""`mpo-ray demo`: MPO on a small built-in problem whose answer is known exactly.

Three single-objective policies (helpful, harmless, humorous) are the exact
KL-regularised optima π_k ∝ π_ref·exp(r_k/β) over a small response space, so
their log-ratios, the optimal mixture and its MaxMin value can be enumerated.
The demo samples responses from π_ref as the real workflow does, solves for λ,
and compares the mixture with each single policy and the uniform mix.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from mpo_ray.solver import evaluate_weights, solve_weights

OBJECTIVES = ("helpful", "harmless", "humorous")


def tabular_problem(prompts: int = 64, responses: int = 24, beta: float = 0.5, seed: int = 0):
    """Rewards that pull against each other: a helpful answer risks harm, a joke costs helpfulness."""
    rng = np.random.default_rng(seed)
    log_ref = np.log(rng.dirichlet(np.full(responses, 2.0), size=prompts))
    style = rng.normal(size=(prompts, responses, 2))
    rewards = np.stack(
        [style[..., 0], -0.8 * style[..., 0] + 0.6 * style[..., 1], -0.6 * style[..., 1] - 0.3], axis=-1
    )
    scaled = rewards / beta
    a = log_ref[..., None] + scaled
    top = a.max(axis=1, keepdims=True)
    log_z = top + np.log(np.exp(a - top).sum(axis=1, keepdims=True))
    return log_ref, scaled - log_z  # log π_ref (N, Y), exact log-ratios ℓ_k (N, Y, K)


def run_demo(output: str | None = None, quick: bool = False, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    samples = 16 if quick else 64
    log_ref, log_ratios = tabular_problem(seed=seed)
    n, y, k = log_ratios.shape
    print(f"MPO demo: {n} prompts, {y} possible responses, K={k} objectives {OBJECTIVES}")

    # 1. What the workflow does: sample m responses per prompt from π_ref and solve on the table.
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.choice(y, size=samples, p=np.exp(row)) for row in log_ref])
    table = np.take_along_axis(log_ratios, picks[..., None], axis=1)
    sampled = solve_weights(table)
    print(f"\nsampled table ({n}×{samples}×{k}): λ = {np.round(sampled.weights, 3).tolist()}, "
          f"gap = {sampled.gap:.1e}, median ESS = {np.median(sampled.ess):.1f}/{samples}")

    # 2. The exact answer by enumeration (every response, weighted by π_ref).
    exact = solve_weights(log_ratios, log_importance=log_ref)
    print(f"exact (enumerated):        λ* = {np.round(exact.weights, 3).tolist()}, gap = {exact.gap:.1e}")

    # 3. Compare mixtures on the exact problem: MaxMin value = min_k E[ℓ_k] − KL.
    candidates = {name: np.eye(k)[i] for i, name in enumerate(OBJECTIVES)}
    candidates["uniform"] = np.full(k, 1.0 / k)
    candidates["MPO (sampled λ)"] = sampled.weights
    print(f"\n{'policy':<18}" + "".join(f"{o:>10}" for o in OBJECTIVES) + f"{'worst':>10}{'MaxMin':>10}")
    rows = {}
    for name, lam in candidates.items():
        r = evaluate_weights(log_ratios, lam, log_importance=log_ref)
        rows[name] = {"weights": lam.tolist(), "values": r.values.tolist(), "maxmin_value": r.maxmin_value}
        print(f"{name:<18}" + "".join(f"{v:10.3f}" for v in r.values) + f"{r.values.min():10.3f}{r.maxmin_value:10.3f}")
    print("\nvalues are E_x E_{π_λ}[log π_k − log π_ref] in nats; MaxMin = worst value − KL(π_λ‖π_ref).")
    print(f"done in {time.perf_counter() - t0:.2f}s")

    summary = {"objectives": list(OBJECTIVES), "sampled": sampled.to_dict(), "exact": exact.to_dict(), "compare": rows}
    if output:
        os.makedirs(output, exist_ok=True)
        path = os.path.join(output, "weights.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")
    return summary
