"""From score-table rows to the solver's arrays, and the configured solve over them.

The score table has one row per (prompt, sample). The solver wants dense
(N, m, K) log-ratios ℓ_k = log π_k − log π_ref, a mask of present samples and
log importance weights log π_ref − log q for samples drawn from a proposal q
(docs/design.md §1). Pure numpy and pyarrow: no model, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mpo_ray.core.solver import WeightsResult, normalize_rewards, solve_weights


def split_counts(total: int, parts: int) -> list[int]:
    """``total`` samples over ``parts`` samplers as evenly as possible (the first ones take the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def proposal_counts(m: int, num_policies: int, geometric_share: float | None = None) -> list[int]:
    """Samples per prompt from π_ref, each π_k and the token-level mixture at a solved λ (last), summing to m.

    The `mixture` split (m over π_ref and the K policies) takes what the mixture at λ does not: with a
    ``geometric_share`` s, round(s·m) samples (at least 1) come from it. Rounds of the `geometric` proposal
    (the pipeline's batches after the first, `mpo-ray bench estimator`'s ``geometric-batches``) both use this.
    """
    g = 0 if geometric_share is None else min(m, max(1, math.floor(geometric_share * m + 0.5)))
    return [*split_counts(m - g, num_policies + 1), g]


def log_mixture(logps: np.ndarray, counts: list[int]) -> np.ndarray:
    """Balance-heuristic proposal log q = log Σ_c (n_c/m) π_c(y|x), from (n, C) log-probs; components that drew
    no sample (n_c = 0) drop out."""
    used = np.flatnonzero(np.asarray(counts) > 0)
    counts = np.asarray(counts, dtype=np.float64)[used]
    logw = np.log(counts / counts.sum())
    a = np.asarray(logps, dtype=np.float64)[:, used] + logw
    top = a.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]


@dataclass(frozen=True)
class ScoreArrays:
    """A score table as the solver's dense arrays: N prompts (first-seen order) × m sample slots."""

    prompt_ids: list[str]
    log_ratios: np.ndarray  # (N, m, K): ℓ_k = log π_k − log π_ref
    mask: np.ndarray  # (N, m) bool: the sample is present
    log_importance: np.ndarray  # (N, m): log π_ref − log q
    rewards: np.ndarray | None = None  # (N, m, R) with reward columns asked for


def score_arrays(table: pa.Table, policy_names: list[str], reward_columns: list[str] = ()) -> ScoreArrays:
    """(N, m, K) log-ratios, mask, log-importance and rewards from score-table rows, prompts in first-seen order."""
    ids = table.column("prompt_id").to_pylist()
    idx = np.asarray(table.column("sample_idx").to_numpy(), dtype=np.int64)
    order = {pid: i for i, pid in enumerate(dict.fromkeys(ids))}
    rows = np.array([order[p] for p in ids], dtype=np.int64)
    n, m = len(order), int(idx.max()) + 1 if len(idx) else 0
    mask = np.zeros((n, m), dtype=bool)
    mask[rows, idx] = True

    def cube(columns):
        out = np.zeros((n, m, len(columns)))
        for k, c in enumerate(columns):
            out[rows, idx, k] = table.column(c).to_numpy()
        return out

    ref = table.column("logp_ref").to_numpy()
    log_imp = np.zeros((n, m))
    log_imp[rows, idx] = ref - table.column("logp_proposal").to_numpy()
    L = cube([f"logp_{p}" for p in policy_names])
    L[rows, idx, :] -= ref[:, None]
    return ScoreArrays(list(order), L, mask, log_imp, cube(list(reward_columns)) if reward_columns else None)


def estimate_tables(arrays: ScoreArrays, beta: float) -> dict[str, np.ndarray]:
    """The (N, m, K) tables each estimate solves: the implicit log-ratios, and with one reward column per objective
    the rewards normalised by the paper's operator."""
    tables = {"implicit": arrays.log_ratios}
    if arrays.rewards is not None:
        tables["rewards"] = normalize_rewards(
            arrays.rewards, beta, mask=arrays.mask, log_importance=arrays.log_importance
        )
    return tables


def solve_table(
    arrays: ScoreArrays,
    *,
    beta: float,
    method: str = "full",
    tol: float = 1e-9,
    steps: int | None = None,
    step_size: float | None = None,
    batch_prompts: int = 1,
    seed: int = 0,
    init=None,
) -> dict[str, WeightsResult]:
    """Each estimate's solve (see :func:`estimate_tables`), by estimate name."""
    kwargs = dict(
        mask=arrays.mask,
        log_importance=arrays.log_importance,
        method=method,
        tol=tol,
        steps=steps,
        step_size=step_size,
        init=init,
        seed=seed,
    )
    if method == "bsmd":
        kwargs["batch_prompts"] = min(batch_prompts, arrays.mask.shape[0])
    return {name: solve_weights(L, **kwargs) for name, L in estimate_tables(arrays, beta).items()}


def bootstrap_weights(
    L: np.ndarray,
    mask: np.ndarray,
    log_importance: np.ndarray,
    *,
    resamples: int = 200,
    level: float = 0.9,
    seed: int = 0,
) -> dict:
    """Percentile intervals for λ from prompts resampled with replacement (prompts are the sampling unit), each
    resample solved in full. Also the spread of the draws, so a report can say how much λ moves."""
    rng = np.random.default_rng(seed)
    n = mask.shape[0]
    draws = np.empty((resamples, L.shape[2]))
    for b in range(resamples):
        rows = rng.integers(0, n, n)
        draws[b] = solve_weights(L[rows], mask=mask[rows], log_importance=log_importance[rows]).weights
    lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {"level": level, "resamples": resamples, "lower": lower, "upper": upper, "std": draws.std(axis=0)}
