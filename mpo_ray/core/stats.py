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
