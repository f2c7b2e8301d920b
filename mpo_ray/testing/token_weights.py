"""The λ best for a one-candidate server in an enumerable world: searched (`tuned_token_weights`) and the
limit of sampled rounds (`equalised_token_weights`). The token-level mixture at λ* is not π_λ*, so these
differ from λ*; `bench serving` and the serving tests compare them."""

from __future__ import annotations

import numpy as np

from mpo_ray.core.grid import simplex_grid
from mpo_ray.testing.enumerable import EnumerableWorld

__all__ = ["tuned_token_weights", "equalised_token_weights"]


def tuned_token_weights(
    world: EnumerableWorld, *, resolution: int = 10, tol: float = 1e-4, starts=()
) -> tuple[np.ndarray, float]:
    """(λ, J): the λ whose *token-level* mixture has the largest exact J found, and that J.

    The token-level mixture at λ* is not π_λ*, so the best weights for a one-candidate server differ from λ*.
    J of the token-level mixture is a minimum (not smooth) and not known to be concave in λ, so: the best of a
    simplex grid, λ*, the equalising λ (:func:`equalised_token_weights`) and ``starts``, then a pattern search
    (fixed tangent directions, step halved when none improves) down to ``tol``. A search, not a certificate:
    the J returned is a lower bound on the best token-level J, and never below the token-level J at λ*.
    """
    K = world.num_policies

    def j(lam):
        return world.objective(world.geometric_token_logp(lam))

    points = [
        *simplex_grid(K, resolution),
        world.exact.weights,
        equalised_token_weights(world),
        *(np.asarray(s, dtype=np.float64) for s in starts),
    ]
    values = [j(lam) for lam in points]
    lam, best = points[int(np.argmax(values))], float(max(values))
    pairs = [np.eye(K)[a] - np.eye(K)[b] for a in range(K) for b in range(K) if a != b]
    extra = np.random.default_rng(0).standard_normal((4 * K, K))
    extra -= extra.mean(axis=1, keepdims=True)
    dirs = [d / np.linalg.norm(d) for d in (*pairs, *extra)]
    delta = 1.0 / resolution
    while delta > tol:
        cands = [np.clip(lam + delta * d, 0.0, None) for d in dirs]
        cands = [c / c.sum() for c in cands]
        vals = [j(c) for c in cands]
        k = int(np.argmax(vals))
        if vals[k] > best + 1e-12:
            lam, best = cands[k], float(vals[k])
        else:
            delta /= 2
    return lam, best


def equalised_token_weights(world: EnumerableWorld, *, steps: int = 300, tol: float = 1e-6) -> np.ndarray:
    """λ at which the token-level mixture serves every weighted objective equally (the limit of sampled rounds).

    The rounds of issue 19 sample the token-level mixture at λ̂, measure the served E[ℓ_k] and move weight to the
    worst-served objective; with infinitely many samples per round that is exponentiated-gradient on the served
    values, λ ← λ ⊙ exp(−η (v(λ) − λ·v)), whose rest point has v_k = min v wherever λ_k > 0. η grows
    by half after a step that shrinks the spread of v over the support and halves after one that does not. This
    equalises the served values; it need not maximise J of the token-level mixture, whose KL also moves with λ
    (compare :func:`tuned_token_weights`).
    """
    K = world.num_policies
    lam = np.full(K, 1.0 / K)

    def spread(lam, v):
        on = lam > 1e-6
        return float(v[on].max() - v.min())

    v = world.served_values(world.geometric_token_logp(lam))
    eta = 1.0 / max(float(v.max() - v.min()), 1e-12)
    for _ in range(steps):
        s = spread(lam, v)
        if s < tol:
            break
        new = lam * np.exp(-eta * (v - lam @ v))
        new /= new.sum()
        v_new = world.served_values(world.geometric_token_logp(new))
        if spread(new, v_new) < s:
            lam, v, eta = new, v_new, eta * 1.5
        else:
            eta /= 2
    return lam
