"""The simplex grid: every weight vector over K models whose entries are multiples of 1/n.

The sweep draws its trade-off front on it, and the demo its fixed-weight baselines (`workflows.sweep.grid_points`).
"""

from __future__ import annotations

import itertools

import numpy as np

from mpo_ray.core.errors import UserError


def simplex_grid(k: int, divisions: int) -> np.ndarray:
    """(G, k) every point of the K-simplex with entries in multiples of 1/``divisions``, in descending
    lexicographic order (the first vertex first); G = C(divisions + k − 1, k − 1)."""
    points = [c for c in itertools.product(range(divisions, -1, -1), repeat=k) if sum(c) == divisions]
    return np.array(points, dtype=np.float64).reshape(-1, k) / divisions


def step_divisions(step: float) -> int:
    """n for a grid step of 1/n; UserError for any other step."""
    n = round(1 / step) if step > 0 else 0
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise UserError(f"sweep step must be 1/n for a positive integer n (0.5, 0.25, 0.2, ...), got {step!r}")
    return n
