"""Means, intervals and win rates: the statistics every report's comparison rests on."""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054


def mean_ci(x) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% interval (exact enough at the demo's n ≥ 16)."""
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, m - half, m + half


def win_rates(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per prompt: 1 when the score beats the reference's, ½ on a tie, 0 otherwise."""
    return np.where(scores > reference, 1.0, np.where(scores == reference, 0.5, 0.0))


def wilson(outcomes) -> tuple[float, float, float]:
    """Rate and 95% Wilson score interval of 0/½/1 outcomes (a tie counts half a success).

    Unlike the normal approximation it never collapses to [1, 1] at 8 wins out of 8: it says
    how little 8 prompts can show.
    """
    x = np.asarray(outcomes, dtype=np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), 0.0, 1.0
    p, z2 = float(x.mean()), Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_draws(stat, *columns, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``stat`` on ``resamples`` resamples of the rows (prompts) of every column together (one index stream)."""
    columns = [np.asarray(c) for c in columns]
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    return np.array([stat(*(c[rows] for c in columns)) for rows in (rng.integers(0, n, n) for _ in range(resamples))])


def paired_bootstrap(
    stat, *columns, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``stat(*columns)`` and its percentile interval, resampling the rows (prompts) of every column together,
    so that a difference between two sets on the same prompts keeps its pairing."""
    draws = bootstrap_draws(stat, *columns, resamples=resamples, seed=seed)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(stat(*(np.asarray(c) for c in columns))), float(lo), float(hi)


def bias_corrected(stat, *columns, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """``stat`` with its bootstrap bias correction, 2·stat − mean(stat*), for a statistic biased by its shape: a
    minimum of means (J, the min win rate) is biased low, more when several means are close, so balanced sets such
    as MPO's are understated most. The interval is the percentile interval shifted by the same correction. Both
    the raw and the corrected value are returned: a minimum is not smooth where means tie, so the correction removes
    part of the bias, not all (three tied means, 30 prompts: −0.153 → −0.092, tests/core/test_stats.py; `bench
    protocol`'s ΔĴ(MPO − uniform) at 48×4, 50×1: −0.13 → −0.07 nats), at some variance."""
    draws = bootstrap_draws(stat, *columns, resamples=resamples, seed=seed)
    raw = float(stat(*(np.asarray(c) for c in columns)))
    bias = float(draws.mean()) - raw
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {
        "raw": raw,
        "corrected": raw - bias,
        "bias": bias,
        "ci95": [float(lo) - bias, float(hi) - bias],
        "ci95_raw": [float(lo), float(hi)],
        "se": float(draws.std(ddof=1)),
    }


def normal_power(effect: float, sd: float, n: int, level: float = 0.95) -> float:
    """Chance that a paired two-sided test at ``level`` over n prompts puts its interval above 0 when the true
    difference is ``effect`` and one prompt's paired difference has standard deviation ``sd`` (normal approximation
    of the bootstrap interval: Δ̂ ~ N(effect, sd²/n))."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    return float(NormalDist().cdf(effect * np.sqrt(n) / sd - z))


def detectable_effect(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """The smallest true difference a paired test over n prompts finds with ``power`` (normal approximation)."""
    from statistics import NormalDist

    return float((NormalDist().inv_cdf((1 + level) / 2) + NormalDist().inv_cdf(power)) * sd / np.sqrt(n))


def min_mean(wins: np.ndarray) -> float:
    """The MaxMin yardstick on a (prompts, objectives) table: the worst objective's mean."""
    return float(np.asarray(wins, dtype=np.float64).mean(axis=0).min())


def paired_difference(stat, a: tuple, b: tuple, *, seed: int = 0) -> dict:
    """``stat(a) − stat(b)`` over the prompts both sets answered, with a paired bootstrap 95% interval and
    ``within_noise`` when it holds 0, its bootstrap standard error ``se``, and the bias-corrected difference
    (``corrected``: `bias_corrected`, same draws). ``a`` and ``b`` are ``(prompt_ids, *columns)``, rows in any order;
    ``stat`` takes the columns. The one comparison behind every report's headline."""
    common = sorted(set(a[0]) & set(b[0]))
    if not common:
        raise ValueError("paired_difference: the two sets share no prompt; evaluate both on the same corpus")

    def aligned(side):
        pos = {pid: i for i, pid in enumerate(side[0])}
        take = [pos[pid] for pid in common]
        return [np.asarray(c)[take] for c in side[1:]]

    ca, cb = aligned(a), aligned(b)
    d = bias_corrected(lambda *c: stat(*c[: len(ca)]) - stat(*c[len(ca) :]), *ca, *cb, seed=seed)
    lo, hi = d["ci95_raw"]  # paired_bootstrap's percentile interval (same draws)
    return {
        "difference": d["raw"],
        "ci95": [lo, hi],
        "prompts": len(common),
        "within_noise": lo <= 0 <= hi,
        "se": d["se"],
        "corrected": {
            "difference": d["corrected"],
            "ci95": d["ci95"],
            "within_noise": d["ci95"][0] <= 0 <= d["ci95"][1],
        },
    }
