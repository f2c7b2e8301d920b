"""The MPO weight solver: log-ratio table in, mixing weights λ out.

Pure numpy (no torch, no ray) so that it is exact, fast and testable alone.

With ``L[i, j, k] = log π_k(y_ij|x_i) − log π_ref(y_ij|x_i)`` for N prompts,
m samples each and K objectives, MPO minimises over the simplex

    F̂(λ) = 1/N Σ_i log Σ_j w0_ij exp(λ·L_ij)

where ``w0_i`` are the self-normalised importance weights of prompt i's samples
(uniform when they came from π_ref). The gradient is the self-normalised
estimate of each objective's value under the mixture π_λ, and the certificate
``gap(λ) = Σ_k λ_k g_k − min_k g_k`` is ≥ 0 and vanishes exactly at the optimum.

Two methods:

* ``full``: an active-set Newton method on the simplex (K is small, so the K×K
  Hessian is cheap) with a Frank–Wolfe fallback step that is always feasible
  and descending. Deterministic, converges to ``tol`` on the certificate.
* ``bsmd``: the paper's batch stochastic mirror descent (exponentiated gradient
  on random prompt batches, step ``c/√T``, averaged iterate). Right when
  prompts stream by once; slower to converge, O(1/√T).

Inputs are validated by :mod:`mpo_ray.core.table` (its docstring is the input contract);
:mod:`mpo_ray.core.streaming` runs BSMD over batches as they arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mpo_ray.core.table import (
    MAX_NATS,
    Table,
    build_table,
    check_magnitude,
    check_simplex,
    is_real,
    positive_int,
)

__all__ = ["WeightsResult", "SolverHistory", "solve_weights", "normalize_rewards", "evaluate_weights"]

OBJECTIVES = ("maxmin", "fixed")
METHODS = ("full", "bsmd")


@dataclass(frozen=True)
class SolverHistory:
    """Per-step trace for plots: ``weights`` (T+1, K) and ``gap`` (T+1,).

    For ``full`` the gap is the exact certificate on the whole table; for
    ``bsmd`` it is the certificate on that step's mini-batch (a noisy estimate).
    """

    weights: np.ndarray
    gap: np.ndarray


@dataclass(frozen=True)
class WeightsResult:
    """Mixing weights and everything needed to judge them.

    ``values[k]`` estimates E_x E_{π_λ}[ℓ_k] in nats; ``gap`` is the optimality
    certificate (0 at the optimum, never negative); ``dual`` is F̂(λ) and
    ``maxmin_value = dual − gap`` is the MaxMin objective that π_λ attains
    (in units of β); ``ess`` is each prompt's effective sample size.
    """

    weights: np.ndarray
    values: np.ndarray
    gap: float
    dual: float
    maxmin_value: float
    ess: np.ndarray
    iterations: int
    converged: bool
    history: SolverHistory = field(repr=False)
    objective: str = "maxmin"
    method: str = "full"

    @property
    def free_riders(self) -> tuple[int, ...]:
        """Objectives with (numerically) zero weight that the mixture already serves better than the worst."""
        worst = float(np.min(self.values))
        scale = 1e-6 * max(1.0, float(np.max(np.abs(self.values))))
        return tuple(int(k) for k in np.flatnonzero((self.weights <= 1e-6) & (self.values > worst + scale)))

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-step history, ESS summarised)."""
        ess = self.ess
        return {
            "weights": [float(x) for x in self.weights],
            "values": [float(x) for x in self.values],
            "gap": float(self.gap),
            "dual": float(self.dual),
            "maxmin_value": float(self.maxmin_value),
            "iterations": int(self.iterations),
            "converged": bool(self.converged),
            "objective": self.objective,
            "method": self.method,
            "free_riders": list(self.free_riders),
            "ess": {
                "min": float(ess.min()),
                "median": float(np.median(ess)),
                "mean": float(ess.mean()),
                "max": float(ess.max()),
            },
        }


def _certificate(lam: np.ndarray, g: np.ndarray) -> float:
    """Σ_k λ_k (g_k − min g): a sum of non-negative terms, so never negative in floating point."""
    return float(np.sum(lam * (g - g.min())))


# --------------------------------------------------------------------------- #
# Full-batch: active-set Newton with a Frank–Wolfe safeguard
# --------------------------------------------------------------------------- #


def _newton_direction(lam: np.ndarray, g: np.ndarray, H: np.ndarray) -> np.ndarray | None:
    """Newton step on the face spanned by the support of λ plus the best vertex.

    Solves  min g·d + ½ dᵀHd  s.t. Σd = 0, d_k = 0 off the face,  through its
    KKT system. Returns None when the step is not usable (would push a zero
    coordinate negative, or is not a descent direction).
    """
    face = lam > 0
    face[np.argmin(g)] = True
    idx = np.flatnonzero(face)
    n = idx.size
    if n == 1:
        return None
    Hs = H[np.ix_(idx, idx)]
    Hs = Hs + (1e-12 * max(np.trace(Hs) / n, 1e-300)) * np.eye(n)  # identical objectives → singular H
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = Hs
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.concatenate([-g[idx], [0.0]])
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return None
    d = np.zeros_like(lam)
    d[idx] = sol[:n]
    if not np.all(np.isfinite(d)) or g @ d >= 0 or np.any(d[lam == 0] < 0):
        return None
    return d


def _line_search(table: Table, lam, d, f, slope, t_max, blocking):
    """Backtracking (Armijo) along d from min(1, t_max); returns (t, λ_new).

    A step clipped at the boundary sets the blocking coordinate to exactly
    zero, which is how the active set shrinks.
    """
    t = min(1.0, t_max)
    slack = 1e-13 * (1.0 + abs(f))  # round-off allowance near the optimum
    for _ in range(60):
        new = np.maximum(lam + t * d, 0.0)
        if t == t_max:
            new[blocking] = 0.0
        new /= new.sum()
        if table.dual(new) <= f + 1e-4 * t * slope + slack:
            return t, new
        t *= 0.5
    return 0.0, lam


def _solve_full(table: Table, lam: np.ndarray, tol: float, max_steps: int):
    weights_hist, gap_hist = [], []
    for it in range(max_steps + 1):
        f, g, _, H = table.evaluate(lam, hessian=True)
        gap = _certificate(lam, g)
        weights_hist.append(lam.copy())
        gap_hist.append(gap)
        if gap <= tol or it == max_steps:
            break
        d = _newton_direction(lam, g, H)
        if d is None:  # Frank–Wolfe: towards the worst-served objective's vertex
            d = -lam.copy()
            d[np.argmin(g)] += 1.0
        ratio = np.where(d < 0, lam / np.where(d < 0, -d, 1.0), np.inf)
        blocking = int(np.argmin(ratio))
        t, new = _line_search(table, lam, d, f, float(g @ d), float(ratio[blocking]), blocking)
        if t == 0.0:  # no further progress is representable in float64
            break
        lam = new
    return lam, it, SolverHistory(np.array(weights_hist), np.array(gap_hist))


# --------------------------------------------------------------------------- #
# BSMD: the paper's batch stochastic mirror descent
# --------------------------------------------------------------------------- #


def _solve_bsmd(table: Table, lam, steps, step_size, batch_prompts, seed):
    rng = np.random.default_rng(seed)
    eta = step_size / math.sqrt(steps)
    iterates, gaps = np.empty((steps, table.K)), np.empty(steps)
    for t in range(steps):
        batch = table.subset(rng.choice(table.N, size=batch_prompts, replace=False))
        _, g, _, _ = batch.evaluate(lam)
        iterates[t], gaps[t] = lam, _certificate(lam, g)
        logits = np.log(np.maximum(lam, 1e-300)) - eta * (g - g.min())
        lam = np.exp(logits - logits.max())
        lam /= lam.sum()
    return iterates.mean(axis=0), SolverHistory(iterates, gaps)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def solve_weights(
    log_ratios,
    *,
    mask=None,
    log_importance=None,
    objective: str = "maxmin",
    weights=None,
    method: str = "full",
    steps: int | None = None,
    step_size: float | None = None,
    batch_prompts: int | None = None,
    init=None,
    seed: int = 0,
    tol: float = 1e-9,
) -> WeightsResult:
    """Mixing weights λ for the policies whose log-ratios fill the table.

    ``objective="maxmin"`` minimises F̂ over the simplex (MPO);
    ``objective="fixed"`` evaluates the given ``weights`` without solving.
    ``method="full"`` solves the whole table to ``tol`` on the certificate
    (``steps`` caps the iterations, default 200); ``method="bsmd"`` runs
    ``steps`` batch stochastic mirror-descent steps of ``batch_prompts``
    prompts each (defaults: 1 prompt, one pass over the prompts) with step
    size ``step_size/√steps`` and returns the averaged iterate.

    Raises ValueError for complex input, non-finite or |x| > ``MAX_NATS``
    log-ratios / log_importance (present samples), and, as a final check,
    rather than return a non-finite λ, value, gap or dual.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if not (is_real(tol) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
    if step_size is not None and not (is_real(step_size) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size!r}.")
    table = build_table(log_ratios, mask, log_importance)
    K = table.K

    if objective == "fixed":
        if weights is None:
            raise ValueError('objective="fixed" needs weights=[...] (one per objective, on the simplex).')
        lam = check_simplex("weights", weights, K)
        return _result(table, lam, 0, True, SolverHistory(lam[None].copy(), np.array([np.nan])), objective, method, tol)
    if weights is not None:
        raise ValueError('weights is only used with objective="fixed"; use init=... to warm-start the maxmin solve.')

    if init is None:
        lam = np.full(K, 1.0 / K)
    else:
        # Mix in a little uniform mass: exact zeros would pin a coordinate forever.
        lam = 0.999 * check_simplex("init", init, K) + 0.001 / K
    if method == "full":
        max_steps = positive_int("steps", steps, 200)
        if K == 1:
            lam, iters, history = np.ones(1), 0, SolverHistory(np.ones((1, 1)), np.zeros(1))
        else:
            lam, iters, history = _solve_full(table, lam, tol, max_steps)
    else:
        batch = positive_int("batch_prompts", batch_prompts, 1)
        if batch > table.N:
            raise ValueError(f"batch_prompts={batch} exceeds the number of prompts N={table.N}; use at most N.")
        iters = positive_int("steps", steps, max(100, math.ceil(table.N / batch)))
        if K == 1:
            lam, history = np.ones(1), SolverHistory(np.ones((1, 1)), np.zeros(1))
        else:
            c = step_size if step_size is not None else table.default_step_size(lam)
            lam, history = _solve_bsmd(table, lam, iters, c, batch, seed)
    return _result(table, lam, iters, None, history, objective, method, tol)


def evaluate_weights(log_ratios, weights, *, mask=None, log_importance=None) -> WeightsResult:
    """Shorthand for ``solve_weights(..., objective="fixed", weights=weights)``."""
    return solve_weights(log_ratios, mask=mask, log_importance=log_importance, objective="fixed", weights=weights)


def _result(table, lam, iterations, converged, history, objective, method, tol) -> WeightsResult:
    f, g, w, _ = table.evaluate(lam)
    gap = _certificate(lam, g)
    ess = 1.0 / np.sum(w * w, axis=1)
    for what, x in (
        ("weights", lam),
        ("values", g),
        ("gap", gap),
        ("dual", f),
        ("maxmin_value", f - gap),
        ("ess", ess),
    ):
        if not np.all(np.isfinite(x)):
            raise ValueError(
                f"the solver's {what} came out non-finite ({np.asarray(x).tolist()!r:.120}) on inputs that passed "
                f"validation; refusing to return it. Check log_ratios/log_importance (|x| ≤ {MAX_NATS:.0e} nats, "
                "units, masked samples) and report this table as a bug if they look sane."
            )
    return WeightsResult(
        weights=lam,
        values=g,
        gap=gap,
        dual=f,
        maxmin_value=f - gap,
        ess=ess,
        iterations=int(iterations),
        converged=bool(gap <= tol) if converged is None else converged,
        history=history,
        objective=objective,
        method=method,
    )


def normalize_rewards(rewards, beta: float, *, mask=None, log_importance=None) -> np.ndarray:
    """Explicit rewards (N, m, K) → log-ratios via the paper's normaliser P_{π_ref}(r)/β.

    ``L[i,j,k] = r_k(x_i, y_ij)/β − log Σ_j' w0_ij' exp(r_k(x_i, y_ij')/β)``, the
    log-partition estimated with the same samples (importance-weighted when
    ``log_importance`` says they came from a proposal other than π_ref).
    Masked entries come back as NaN so they cannot be used by mistake; pass
    the same ``mask`` to :func:`solve_weights`.

    Refuses (ValueError) complex rewards, |rewards/beta| > ``MAX_NATS`` and
    results whose present log-ratios would exceed ``MAX_NATS`` (what
    :func:`solve_weights` accepts), so its output is always solvable.
    """
    if not is_real(beta) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(
            f"beta must be a finite number > 0 (the KL strength the policies were aligned with), got {beta!r}."
        )
    beta = float(beta)
    table = build_table(rewards, mask, log_importance, name="rewards", bounded=False)
    present = np.isfinite(table.base)
    # |r| ≤ MAX_NATS·β, compared without dividing (r/β could overflow to inf).
    too_big = (np.abs(table.L) > MAX_NATS * beta) & present[..., None]
    if too_big.any():
        bad = tuple(int(b) for b in np.argwhere(too_big)[0])
        raise ValueError(
            f"rewards/beta is {abs(float(table.L[bad])):.3g}/{beta:.3g} at index {bad}, beyond the ±{MAX_NATS:.0e} "
            "nats the solver accepts; use a larger beta (the KL strength) or check the rewards' scale."
        )
    scaled = table.L / beta
    a = table.base[..., None] + scaled
    top = a.max(axis=1, keepdims=True)
    log_z = top + np.log(np.exp(a - top).sum(axis=1, keepdims=True))
    out = scaled - log_z
    check_magnitude(
        "normalised log-ratios",
        out,
        present,
        fix="their spread within a prompt comes from "
        "rewards/beta (and log_importance); use a larger beta or check the rewards' scale",
    )
    out[~present] = np.nan
    return out
