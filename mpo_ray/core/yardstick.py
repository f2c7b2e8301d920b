"""MPO's own yardstick: the MaxMin objective a generation set attains, measured on its samples.

For a policy π and the implicit rewards ℓ_k = log π_k − log π_ref (nats, β divided out),

    J(π) = min_k E_x E_{y~π}[ℓ_k(x, y)] − KL(π ‖ π_ref),

the objective MPO maximises over *all* policies (docs/design.md §1): J(π_λ*) = min_λ F(λ) ≥ J(π)
for π_ref, any single policy, any other mix, a Rewarded Soup. A set beating MPO on J beyond noise
therefore means λ̂ (or its decoding) is off. On samples y ~ π with their own log-prob log π(y|x),
ℓ_k and log π − log π_ref are per-sample unbiased terms of the two expectations; prompts are the
bootstrap unit, so each prompt's samples are averaged first.

Resampled sets (``num_candidates`` = n > 1) have no closed-form log-prob: what is served is p_n, one of n
token-level candidates kept ∝ π_λ/q. For them the KL term uses the *target's* log-prob at the served sample,
log π_λ(y|x) ≈ logprob + log_normalizer − log Ẑ(x) (``target_logprob``; Ẑ the mean importance weight over the
prompt's n candidates). That is not KL(p_n‖π_ref): over y ~ p_n, E[log π_λ − log π_ref] = KL(p_n‖π_ref) −
KL(p_n‖π_λ) ≤ KL(p_n‖π_ref) (Gibbs), while log Ẑ is biased low (Jensen), which raises it again; both vanish as
n → ∞. Measured against exact truth (tests/core/test_yardstick_resampled.py, `mpo-ray bench serving`): the substitute's
expectation sits within a few hundredths of a nat of the exact KL(p_n‖π_ref) at n = 4 (docs/design.md §1).
"""

from __future__ import annotations

import numpy as np

from mpo_ray.core.stats import bias_corrected, paired_bootstrap, paired_difference


def served_logprob(sample_logprob, target_logprob=None) -> tuple[np.ndarray, str]:
    """Each row's log-prob for the KL term, and which kind it is: ``exact`` (``sample_logprob``, the distribution
    that drew the row) or ``target`` (resampled rows: ``target_logprob``, π_λ's estimated log-prob at the served
    sample, see the module notes). None/NaN marks a missing value; a set must be one kind throughout."""
    exact = np.array([np.nan if v is None else v for v in np.asarray(sample_logprob, dtype=object)], dtype=np.float64)
    if np.all(np.isfinite(exact)):
        return exact, "exact"
    if target_logprob is not None and not np.any(np.isfinite(exact)):
        target = np.array(
            [np.nan if v is None else v for v in np.asarray(target_logprob, dtype=object)], dtype=np.float64
        )
        if np.all(np.isfinite(target)):
            return target, "target"
    raise ValueError("served_logprob: every row needs sample_logprob, or (resampled sets) every row target_logprob")


def implicit_terms(prompt_ids, sample_logprob, logp_ref, logp_policies) -> tuple[list, np.ndarray, np.ndarray]:
    """Per prompt (sorted ids): the mean ℓ_k over its samples [P, K] and the mean log π − log π_ref [P].
    ``sample_logprob`` is each row's log π(y|x) (`served_logprob`)."""
    ids = np.asarray(prompt_ids)
    ref = np.asarray(logp_ref, dtype=np.float64)
    ell = np.asarray(logp_policies, dtype=np.float64).reshape(len(ids), -1) - ref[:, None]
    kl = np.asarray(sample_logprob, dtype=np.float64) - ref
    if not (np.all(np.isfinite(ell)) and np.all(np.isfinite(kl))):
        raise ValueError("implicit_terms: log-probs must be finite (error rows are dropped before this)")
    unique, group = np.unique(ids, return_inverse=True)
    counts = np.bincount(group, minlength=len(unique)).astype(np.float64)
    ell_p = (
        np.stack([np.bincount(group, ell[:, k], len(unique)) for k in range(ell.shape[1])], axis=1) / counts[:, None]
    )
    kl_p = np.bincount(group, kl, len(unique)) / counts
    return unique.tolist(), ell_p, kl_p


def implicit_min(ell: np.ndarray, kl: np.ndarray) -> float:
    """J on a (prompts, objectives) table of mean ℓ and the prompts' mean log π − log π_ref."""
    return float(np.asarray(ell).mean(axis=0).min() - np.asarray(kl).mean())


def implicit_objective(
    prompt_ids, sample_logprob, logp_ref, logp_policies, names: list[str], *, seed: int = 0, target_logprob=None
) -> dict:
    """J with a bootstrap 95% interval over prompts (raw, and bootstrap bias-corrected: J is a minimum of means, biased
    low, most for balanced sets), each E[ℓ_k] and the KL with theirs, and the
    per-prompt table (`per_prompt`) that `compare_implicit` pairs on. ``kl_estimate`` says what the KL term is:
    ``exact`` (the sampler's own log-probs) or ``target`` (resampled rows: ``target_logprob``, see the module notes)."""
    logprob, kind = served_logprob(sample_logprob, target_logprob)
    ids, ell, kl = implicit_terms(prompt_ids, logprob, logp_ref, logp_policies)
    bc = bias_corrected(implicit_min, ell, kl, seed=seed)
    j, (lo, hi) = bc["raw"], bc["ci95_raw"]  # what paired_bootstrap gives, from the same draws
    values = {}
    for k, name in enumerate(names):
        m, a, b = paired_bootstrap(np.mean, ell[:, k], seed=seed)
        values[name] = {"mean": m, "ci95": [a, b]}
    kl_m, kl_lo, kl_hi = paired_bootstrap(np.mean, kl, seed=seed)
    return {
        "implicit_min": j,
        "implicit_min_ci95": [lo, hi],
        "implicit_min_corrected": bc["corrected"],
        "implicit_min_corrected_ci95": bc["ci95"],
        "values": values,
        "kl": kl_m,
        "kl_ci95": [kl_lo, kl_hi],
        "kl_estimate": kind,
        "prompts": len(ids),
        "per_prompt": {"prompt_ids": ids, "ell": ell.tolist(), "kl": kl.tolist()},
    }


def compare_implicit(a: dict, b: dict, *, seed: int = 0) -> dict:
    """J(a) − J(b) from two `implicit_objective` results, paired over the prompts both answered."""
    side = lambda r: (r["per_prompt"]["prompt_ids"], r["per_prompt"]["ell"], r["per_prompt"]["kl"])  # noqa: E731
    return paired_difference(implicit_min, side(a), side(b), seed=seed)
