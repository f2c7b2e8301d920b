"""`mpo-ray bench solver`: full-batch and BSMD solve times on a synthetic table.

The table mimics real log-ratios: per-prompt offsets (prompts differ in how
much any policy likes them), objective-specific means that pull against each
other, and heavy-ish tails. The default size (N=100k, m=16, K=5) is the scale
docs/design.md §1 says nearly always fits in memory.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mpo_ray.benchmarks import non_negative_int, positive_float, positive_int
from mpo_ray.core.solver import solve_weights


def synthetic_table(n: int, m: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prompt_offset = rng.normal(0.0, 1.0, size=(n, 1, k))
    pull = np.linspace(-0.5, 0.5, k)  # objectives favour different responses
    noise = rng.standard_t(df=5, size=(n, m, k)) * 2.0
    return prompt_offset + pull + noise


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mpo-ray bench solver", description=__doc__)
    p.add_argument("--prompts", type=positive_int, default=100_000)
    p.add_argument("--samples", type=positive_int, default=16)
    p.add_argument("--objectives", type=positive_int, default=5)
    p.add_argument("--tol", type=positive_float, default=1e-9)
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    table = synthetic_table(args.prompts, args.samples, args.objectives, args.seed)
    print(f"table {table.shape} float64 ({table.nbytes / 2**20:.0f} MiB) built in {time.perf_counter() - t0:.2f}s")

    t0 = time.perf_counter()
    full = solve_weights(table, tol=args.tol)
    t_full = time.perf_counter() - t0
    print(
        f"full : {t_full:6.2f}s  iterations={full.iterations:3d}  gap={full.gap:.2e}  converged={full.converged}  "
        f"λ={np.round(full.weights, 4).tolist()}"
    )

    t0 = time.perf_counter()
    bsmd = solve_weights(table, method="bsmd", batch_prompts=64, steps=max(1, args.prompts // 64), seed=args.seed)
    t_bsmd = time.perf_counter() - t0
    print(
        f"bsmd : {t_bsmd:6.2f}s  steps={bsmd.iterations:5d} (64 prompts each)  gap={bsmd.gap:.2e}  "
        f"|λ_bsmd − λ_full|₁={np.abs(bsmd.weights - full.weights).sum():.2e}"
    )
    print(
        f"ratio: bsmd (one pass) / full = {t_bsmd / t_full:.2f}×; "
        f"full-batch gap / bsmd gap = {full.gap / max(bsmd.gap, 1e-300):.1e}"
    )


if __name__ == "__main__":
    main()
