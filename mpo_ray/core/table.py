"""The solver's input: a validated (N, m, K) log-ratio table with its mask and importance weights folded in.

Pure numpy. Every public entry point of the solver builds one here, so the input
contract lives in one place.

Input contract (refused with a ValueError naming the argument, never served):

* Every numeric argument must be real: complex arrays are refused, not
  silently truncated to their real part.
* ``log_ratios`` and ``log_importance`` must satisfy |x| ≤ ``MAX_NATS`` = 1e6
  nats (present samples only; masked ones are ignored), and so must the
  log-ratios :func:`normalize_rewards` would return (and ``rewards/beta``).
  Why 1e6: the solver works in float64 with log-sum-exps of ``base + L·λ``
  and a Hessian built from products ``L_k·L_l``; those overflow only near
  1e154, but the certificate's round-off grows like |L|·1e-13 (about 1e-7
  nats at 1e6, so the default ``tol=1e-9`` may end ``converged=False``:
  raise ``tol`` for tables that large) and a log-ratio of 1e6 nats
  (a probability ratio e^1000000) is already a units bug, not data.
  Rescaling instead would not be exact: F̂ is not invariant to scaling L
  (only ``log_importance`` is invariant, to a per-prompt shift, which the
  error message suggests).
* As a last line of defence every public entry point checks its own
  output: a non-finite λ, value, gap or dual is raised as a ValueError,
  never returned.
"""

from __future__ import annotations

import math

import numpy as np

SIMPLEX_ATOL = 1e-6  # how far user-given weights may stray from Σλ = 1
MAX_NATS = 1e6  # largest |log-ratio| / |log_importance| accepted (see the module docstring)


class Table:
    """A validated log-ratio table with its masks folded into base log-weights.

    ``base[i, j]`` is the normalised log importance weight of sample j of
    prompt i (−inf where masked), so every quantity below is a log-sum-exp
    over ``base + L @ λ``; masked ratios are zeroed so they never make NaN.
    """

    def __init__(self, log_ratios: np.ndarray, base: np.ndarray):
        self.L = log_ratios
        self.base = base
        self.N, self.m, self.K = log_ratios.shape

    def subset(self, rows: np.ndarray) -> Table:
        return Table(self.L[rows], self.base[rows])

    def weights(self, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-prompt log-normaliser (N,) and self-normalised weights w (N, m)."""
        a = self.base + self.L @ lam
        top = a.max(axis=1, keepdims=True)
        e = np.exp(a - top)
        s = e.sum(axis=1, keepdims=True)
        return (top + np.log(s))[:, 0], e / s

    def dual(self, lam: np.ndarray) -> float:
        return float(self.weights(lam)[0].mean())

    def evaluate(self, lam: np.ndarray, hessian: bool = False):
        """F̂(λ), its gradient g (K,), per-prompt w, and optionally the Hessian (K, K)."""
        lse, w = self.weights(lam)
        mu = np.einsum("ij,ijk->ik", w, self.L)  # per-prompt values under π_λ
        g = mu.mean(axis=0)
        H = None
        if hessian:
            flat = self.L.reshape(-1, self.K)
            second = (flat * w.reshape(-1, 1)).T @ flat
            H = (second - mu.T @ mu) / self.N
        return float(lse.mean()), g, w, H

    def default_step_size(self, lam: np.ndarray) -> float:
        """c in η = c/√T from the entropic mirror-descent bound c = √(2 log K)/G.

        G is the typical spread of per-prompt gradients at the start (only the
        spread across objectives moves exponentiated gradient, not the level).
        """
        _, w = self.weights(lam)
        mu = np.einsum("ij,ijk->ik", w, self.L)
        spread = float(np.sqrt(np.mean((mu.max(axis=1) - mu.min(axis=1)) ** 2)))
        return math.sqrt(2.0 * math.log(self.K)) / max(spread, 1e-12)


def is_real(value) -> bool:
    """A real scalar (Python or numpy int/float), not bool, not complex."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def as_float_array(name: str, value, ndim: int) -> np.ndarray:
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be a numeric array; could not convert it ({exc}).") from None
    if np.iscomplexobj(raw) or (
        raw.dtype == object and any(isinstance(x, (complex, np.complexfloating)) for x in raw.flat)
    ):
        raise ValueError(
            f"{name} is complex; the solver works on real numbers only and will not drop the imaginary "
            f"part for you. Pass np.real({name}) if the imaginary part is zero by construction, "
            "otherwise fix how it was computed."
        )
    try:
        arr = raw.astype(np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be a numeric array; could not convert it ({exc}).") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}.")
    return arr


def check_mask(mask, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"{name} must be a boolean array (True = sample present), got dtype {mask.dtype}.")
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape (N, m) = {shape} to match the table, got {mask.shape}.")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{name} leaves prompt(s) {empty[:5].tolist()}{'…' if empty.size > 5 else ''} with no samples; "
            "drop those prompts from the table or keep at least one sample for each."
        )
    return mask


def check_finite(name: str, arr: np.ndarray, mask: np.ndarray) -> None:
    present = arr[mask] if arr.ndim == 2 else arr[mask].reshape(-1)
    if not np.all(np.isfinite(present)):
        bad = np.argwhere(~np.isfinite(arr) & (mask if arr.ndim == 2 else mask[..., None]))[0]
        raise ValueError(
            f"{name} has a NaN or infinite value at index {tuple(int(b) for b in bad)}; "
            "mark missing samples with mask=False instead of NaN/inf."
        )


MAGNITUDE_FIX = {
    "log_ratios": "check the units (nats of log π_k − log π_ref per sequence) and mark missing samples with mask=False",
    "log_importance": "it only matters up to a constant per prompt, so subtract each prompt's max "
    "(log_importance - log_importance.max(axis=1, keepdims=True)) and check its units",
}


def check_magnitude(name: str, arr: np.ndarray, mask: np.ndarray, fix: str | None = None) -> None:
    """|x| ≤ MAX_NATS on present entries (NaN fails too)."""
    big = ~(np.abs(arr) <= MAX_NATS)
    big &= mask if arr.ndim == 2 else mask[..., None]
    if big.any():
        bad = tuple(int(b) for b in np.argwhere(big)[0])
        raise ValueError(
            f"{name} has magnitude {abs(float(arr[bad])):.3g} at index {bad}, beyond the ±{MAX_NATS:.0e} nats "
            f"the solver accepts (float64 round-off and overflow make larger values untrustworthy); "
            f"{fix or MAGNITUDE_FIX.get(name, 'rescale it')}."
        )


def check_simplex(name: str, value, K: int) -> np.ndarray:
    arr = as_float_array(name, value, 1)
    if arr.shape[0] != K:
        raise ValueError(
            f"{name} has {arr.shape[0]} entries but the table has K={K} objectives; give one per objective."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr.tolist()}.")
    if np.any(arr < 0) or abs(arr.sum() - 1.0) > SIMPLEX_ATOL:
        raise ValueError(
            f"{name} must lie on the simplex (non-negative, summing to 1), got {arr.tolist()} "
            f"(sum {arr.sum():.6g}); normalise it, e.g. w / w.sum()."
        )
    return arr / arr.sum()


def positive_int(name: str, value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def build_table(log_ratios, mask, log_importance, name: str = "log_ratios", bounded: bool = True) -> Table:
    """Validate and fold; ``bounded=False`` skips the MAX_NATS check on the table (rewards check r/β instead)."""
    L = as_float_array(name, log_ratios, 3)
    N, m, K = L.shape
    if N == 0 or m == 0 or K == 0:
        raise ValueError(f"{name} must be non-empty in every dimension (N, m, K), got shape {L.shape}.")
    mask = check_mask(mask, (N, m))
    check_finite(name, L, mask)
    if bounded:
        check_magnitude(name, L, mask)
    if log_importance is None:
        log_w0 = np.zeros((N, m))
    else:
        log_w0 = as_float_array("log_importance", log_importance, 2)
        if log_w0.shape != (N, m):
            raise ValueError(f"log_importance must have shape (N, m) = {(N, m)}, got {log_w0.shape}.")
        check_finite("log_importance", log_w0, mask)
        check_magnitude("log_importance", log_w0, mask)
    # Fold mask and importance weights into normalised log base weights.
    base = np.where(mask, log_w0, -np.inf)
    top = base.max(axis=1, keepdims=True)
    base = base - (top + np.log(np.exp(base - top).sum(axis=1, keepdims=True)))
    return Table(np.where(mask[..., None], L, 0.0), base)
