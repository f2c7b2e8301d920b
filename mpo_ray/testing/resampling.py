"""Importance resampling, exactly: what serving one of n candidates ∝ π_λ/q gives, in log space (numpy only).

`models/decoding.py` serves ``num_candidates = n`` this way; these transforms give the law of the kept sample
and the bias of its log Ẑ as one-dimensional integrals, so the enumerable worlds can check both exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["logsumexp", "resampling_logp", "log_mean_weight"]


def logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """log Σ exp(a) along ``axis`` (−inf entries allowed, all −inf gives −inf)."""
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def resampling_logp(log_target, log_proposal, n, *, step: float = 0.3, tol: float = 1e-15):
    """Exact log-probs of sampling-importance-resampling: n i.i.d. draws from q, one kept with probability ∝ w.

    This is ``num_candidates = n`` in ``models/decoding.py``: candidates drawn independently (duplicates
    count separately), one picked by inverse CDF on softmax(log w) with w = π_λ/q up to a constant. With
    w normalised so that E_q w = 1 and S_{n−1} the sum of n − 1 i.i.d. weights,

        P_n(y) = n q(y) w(y) E[1 / (w(y) + S_{n−1})],   1/a = ∫_0^∞ e^{−ta} dt,
        E[1 / (w + S_{n−1})] = ∫_0^∞ e^{−tw} φ(t)^{n−1} dt,  φ(t) = E_q e^{−tW} = Σ_y q(y) e^{−t w(y)},

    a one-dimensional integral per response instead of a sum over S^{n−1} tuples. With t = e^u the
    integrand is analytic and bounded in the strip |Im u| < π/2 and decays double-exponentially, so the
    trapezoid rule of step ``step`` is accurate to about exp(−π²/step) (1e−14 at 0.3) on a per-prompt
    range that cuts each tail below ``tol`` relative to the integral. P_1 = q and P_n → π_λ as n → ∞.

    ``log_target``, ``log_proposal``: (N, S) log-probs (normalisation irrelevant), the target's support inside the
    proposal's. ``n``: an int (returns (N, S)) or a sequence of ints (returns (len(n), N, S)).
    """
    log_q, ns, log_w = _weights(log_target, log_proposal, n)
    w = np.exp(log_w)
    support = np.isfinite(log_q) & (w > 0)
    w_max = np.where(support, w, 0.0).max(axis=1)
    w_min = np.where(support, w, np.inf).min(axis=1)
    n_max = float(ns.max())
    lo = np.log(tol / (w_max + n_max))  # ∫_{−∞}^{lo} ≤ e^lo, and the integral is ≥ 1/(w + n − 1)
    hi = np.log((np.log(1.0 / tol) + np.log1p(n_max / w_min)) / w_min)  # e^{−e^hi·w} tail below tol
    nodes = int(np.ceil((hi - lo).max() / step)) + 1
    q = np.exp(log_q)
    acc = np.zeros((ns.size, *w.shape))
    chunk = max(1, int(2e6 // max(1, w.size)))
    for start in range(0, nodes, chunk):
        t = np.exp(lo[:, None] + step * np.arange(start, min(nodes, start + chunk))[None, :])  # (N, M) nodes
        decay = np.exp(-t[:, None, :] * w[:, :, None])  # (N, S, M): e^{−t w(y)}
        phi = np.einsum("is,ism->im", q, decay)  # φ(t); all terms positive, so plain sums lose nothing
        decay *= t[:, None, :]  # dt = t du
        powers = phi[:, :, None] ** (ns - 1)[None, None, :]  # (N, M, len(ns))
        acc += np.moveaxis(np.matmul(decay, powers), -1, 0)  # Σ over nodes, every n in one batched product
    with np.errstate(divide="ignore"):
        out = np.log(ns.astype(np.float64))[:, None, None] + log_q + log_w + np.log(acc) + np.log(step)
    out = np.where(support[None], out, -np.inf)
    return out[0] if np.ndim(n) == 0 else out


def _weights(log_target, log_proposal, n):
    """(log q normalised, the n's as an int array, log w = log π/q scaled so E_q w = 1): where both
    transforms start."""
    log_target = np.asarray(log_target, dtype=np.float64)
    log_q = np.asarray(log_proposal, dtype=np.float64)
    log_q = log_q - logsumexp(log_q)[:, None]
    ns = np.atleast_1d(np.asarray(n, dtype=np.int64))
    if ns.ndim != 1 or ns.size == 0 or (ns < 1).any():
        raise ValueError(f"n must be a positive int or a sequence of them, got {n!r}")
    with np.errstate(invalid="ignore"):
        log_w = np.where(np.isfinite(log_q), log_target - log_q, -np.inf)
    return log_q, ns, log_w - logsumexp(log_q + log_w)[:, None]


def log_mean_weight(log_target, log_proposal, n, *, step: float = 0.3, tol: float = 1e-15):
    """(N,) exact E[log W̄] with W̄ the mean of n i.i.d. importance weights w = π/q under q, normalised so E_q w = 1:
    how far E[log Ẑ] falls below log Z when Ẑ is the mean weight of n candidates (≤ 0 by Jensen, → 0 as n → ∞).

    Frullani, log a = ∫_0^∞ (e^{−t} − e^{−ta}) dt / t, gives E[log Σ_j w_j] = ∫_0^∞ (e^{−t} − φ(t)^n) dt / t with
    φ(t) = Σ_y q(y) e^{−t w(y)}, the same transform as :func:`resampling_logp`; with t = e^u, the trapezoid rule.
    ``n`` an int gives (N,); a sequence of ints gives (len(n), N).
    """
    log_q, ns, log_w = _weights(log_target, log_proposal, n)
    w = np.exp(log_w)
    q = np.exp(log_q)
    w_min = np.where(np.isfinite(log_q) & (w > 0), w, np.inf).min(axis=1)
    lo = np.log(tol / ns.max())  # below: integrand ≈ (n − 1) t
    hi = np.log((np.log(1.0 / tol) + 1.0) / np.minimum(w_min, 1.0))  # above: e^{−t} and φ(t)^n ≤ e^{−n t w_min} gone
    nodes = int(np.ceil((hi.max() - lo) / step)) + 1
    acc = np.zeros((ns.size, w.shape[0]))
    chunk = max(1, int(2e6 // max(1, w.size)))
    for start in range(0, nodes, chunk):
        t = np.exp(lo + step * np.arange(start, min(nodes, start + chunk)))  # (M,)
        phi = np.einsum("is,ism->im", q, np.exp(-t[None, None, :] * w[:, :, None]))  # (N, M)
        acc += (np.exp(-t)[None, None, :] - phi[None] ** ns[:, None, None]).sum(axis=-1)
    out = acc * step - np.log(ns.astype(np.float64))[:, None]
    return out[0] if np.ndim(n) == 0 else out
