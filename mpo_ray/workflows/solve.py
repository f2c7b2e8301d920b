"""From a score table to a weights artifact: the configured solve, and the record that makes λ trustworthy.

`reweight` and `nightly` share it, so both write the same artifact (docs/design.md §4):
λ, its certificate, the effective sample size, both estimates, the models it was
computed from, and how long each stage took.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mpo_ray import __version__
from mpo_ray.config import Config, SamplingConfig, SolverConfig
from mpo_ray.core.estimator import bootstrap_weights, estimate_tables, score_arrays, solve_table
from mpo_ray.core.serving import serving
from mpo_ray.core.solver import evaluate_weights
from mpo_ray.io.artifact import WeightsArtifact
from mpo_ray.workflows.pipeline import model_identities, reward_columns_by_objective


def solve_scores(config: Config, table: pa.Table, solver: SolverConfig, *, seed: int, init=None) -> tuple[dict, dict]:
    """(arrays, estimates by name) for the whole table; the reward-normalised estimate when every policy has a reward."""
    arrays = score_arrays(table, config.policy_names, reward_columns_by_objective(config))
    estimates = solve_table(arrays, beta=config.beta, method=solver.method, tol=solver.tol, steps=solver.steps,
                            step_size=solver.step_size, batch_prompts=solver.batch_prompts, seed=seed, init=init)
    return arrays, estimates


def uncertainty(config: Config, arrays: dict, estimate: str, *, resamples: int, seed: int) -> dict:
    """How far to trust λ̂: its 90% bootstrap interval over prompts, and the median ESS at uniform λ.

    The ESS at λ̂ alone can be fooled: it looks healthy exactly when λ̂ drifted to where the samples
    happen to be. The ESS at uniform λ does not depend on the estimate.
    """
    L, mask, log_imp = estimate_tables(arrays, config.beta)[estimate], arrays["mask"], arrays["log_importance"]
    k = L.shape[2]
    at_uniform = evaluate_weights(L, np.full(k, 1.0 / k), mask=mask, log_importance=log_imp).ess
    out = {"ess_median_at_uniform": float(np.median(at_uniform))}
    if resamples:
        boot = bootstrap_weights(L, mask, log_imp, resamples=resamples, seed=seed)
        out["weights_ci"] = {n: [float(lo), float(hi)] for n, lo, hi in zip(config.policy_names, boot["lower"], boot["upper"])}
        out["weights_ci_method"] = {"level": boot["level"], "resamples": resamples, "unit": "prompt",
                                    "std": dict(zip(config.policy_names, boot["std"].tolist()))}
    return out


def ci_width(spread) -> float | None:
    """The widest λ_k interval of an :func:`uncertainty` result or an artifact (None without intervals)."""
    ci = spread.get("weights_ci")
    return max(hi - lo for lo, hi in ci.values()) if ci else None


def build_artifact(config: Config, *, version: str, estimate: str, estimates: dict, sampling: SamplingConfig,
                   solver: SolverConfig, seed: int, min_median_ess: float, score_table: dict, timings: dict,
                   placement: dict, created_at: str, spread: dict, **extra) -> WeightsArtifact:
    """The weights artifact of the ``estimate`` solve; ``spread`` is :func:`uncertainty`'s; ``extra`` keys
    (e.g. ``streaming_bsmd``, ``nightly``) go last."""
    chosen = estimates[estimate]
    names, ess, identities = config.policy_names, chosen.ess, model_identities(config)
    worst_ess = min(float(np.median(ess)), spread["ess_median_at_uniform"])
    interval = {k: spread[k] for k in ("weights_ci", "weights_ci_method") if k in spread}
    return WeightsArtifact.build(
        version=version, policies=names, weights=chosen.weights.tolist(), beta=config.beta,
        estimate=estimate,
        solver={**solver.model_dump(), "iterations": chosen.iterations, "converged": chosen.converged},
        certificate={"gap_nats": chosen.gap, "gap_reward_units": chosen.gap * config.beta},
        values=dict(zip(names, chosen.values.tolist())),
        dual=chosen.dual, maxmin_value=chosen.maxmin_value,
        free_riders=[names[k] for k in chosen.free_riders],
        **interval,
        ess={"min": float(ess.min()), "median": float(np.median(ess)), "mean": float(ess.mean()),
             "median_at_uniform": spread["ess_median_at_uniform"], "samples_per_prompt": sampling.samples_per_prompt,
             "low": bool(worst_ess < min_median_ess)},
        estimates={name: r.to_dict() for name, r in estimates.items()},
        score_table=score_table,
        sampling=sampling.model_dump(),
        models={"reference": identities[0], "policies": identities[1:]},
        rewards=[r.model_dump() for r in config.rewards],
        timings_s=timings, placement=placement, created_at=created_at, library_version=__version__, seed=seed,
        serving={**serving(1), "note": "λ is solved for the sequence-level π_λ; generate.num_candidates = n > 1 "
                                        "serves nearer it (mpo-ray bench serving measures the gap)"},
        **extra,
    )

