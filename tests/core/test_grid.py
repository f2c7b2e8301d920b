"""core.grid: the simplex grid the sweep and the demo build their fixed-weight points on."""

import numpy as np
import pytest

from mpo_ray.core.grid import simplex_grid, step_divisions


def test_simplex_grid_is_every_multiple_of_one_over_n_first_vertex_first():
    g = simplex_grid(3, 2)
    assert g.shape == (6, 3) and np.allclose(g.sum(1), 1)
    assert [tuple(r) for r in g] == [(1, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 1, 0), (0, 0.5, 0.5), (0, 0, 1)]
    assert simplex_grid(3, 4).shape == (15, 3) and simplex_grid(2, 10).shape == (11, 2)
    assert simplex_grid(4, 1).tolist() == np.eye(4).tolist()


def test_a_step_is_one_over_a_positive_integer():
    assert [step_divisions(s) for s in (1.0, 0.5, 0.25, 0.1, 1 / 3)] == [1, 2, 4, 10, 3]
    for bad in (0.3, 0.0, -0.5, 2.0):
        with pytest.raises(ValueError, match="1/n for a positive integer n"):
            step_divisions(bad)
