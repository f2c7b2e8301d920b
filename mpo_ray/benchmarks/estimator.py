"""`mpo-ray bench estimator`: which proposal keeps λ̂ accurate at an equal sample budget?

Issue 14: sampling the m responses per prompt from π_ref alone collapses the
effective sample size when the policies sit several nats from π_ref, and λ̂
goes wrong. This benchmark measures candidate proposals in an exactly
enumerable world (``mpo_ray.testing.enumerable``), where λ* and F are exact,
at the same total budget of m samples per prompt:

* ``reference``: all m from π_ref (uniform base weights).
* ``mixture``: m split evenly over π_ref and every π_k, balance heuristic
  log q = log Σ_c (n_c/m) π_c (docs/design.md §1).
* ``adaptive``: R rounds share the budget. Round 0 is ``mixture``; round r
  draws from the arithmetic mixture q_r = α_ref π_ref + (1 − α_ref) Σ_k λ̂_k π_k
  with λ̂ solved on the rounds before it and α_ref = ``ref_floor``. All rounds
  are weighted together by the balance heuristic over every proposal used
  (deterministic multiple importance sampling, log q = log Σ_r (n_r/m) q_r).
  By AM–GM Π_k π_k^λ_k ≤ Σ_k λ_k π_k, so when λ̂ is near λ the weights of the
  target π_λ stay bounded.
* ``geometric``: as ``adaptive``, but later rounds draw from the normalised
  token-level mixture at λ̂ (what a replica hosting all K policies samples).
* ``geometric-batches``: the pipeline's ``sampling.proposal: geometric`` as
  implemented: the prompts in B batches (``--batches``) are the rounds. Batch 0
  is ``mixture``; batch b draws a share s (``--share``) of its m samples per
  prompt from the token-level mixture at the λ̂ solved on batches < b, the
  rest as ``mixture`` (``core.estimator.proposal_counts``), each batch
  weighted by the balance heuristic over its own components.
* ``adaptive-ess``: ``adaptive`` with two rounds, where round 1's samples go
  to prompts in proportion to 1/ESS at λ̂ (same total N·m, at most 4m each).

For each, the mean L1 error |λ̂ − λ*|₁ over seeds (± its standard deviation
across seeds), the asymptotic prediction of that error (``pred``, delta
method, :func:`predicted_l1`), the median per-prompt ESS at λ̂ and at uniform
λ (ESS = 1/Σ_j w_ij², w_ij ∝ w0_ij exp(λ·L_ij); mean over seeds) and the
milliseconds per estimate (sampling, intermediate and final solves). At
m = K + 1 = 4 the round-based proposals have one round only and coincide with
``mixture`` (same random stream). Figures and ratios only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from mpo_ray.benchmarks import non_negative_int, positive_int
from mpo_ray.core.estimator import proposal_counts, split_counts
from mpo_ray.core.solver import WeightsResult, evaluate_weights, solve_weights
from mpo_ray.testing.enumerable import EnumerableWorld, make_world, sample_sequences, scale_for_kl
from mpo_ray.testing.resampling import logsumexp

PROPOSALS = ("reference", "mixture", "adaptive", "geometric", "geometric-batches", "adaptive-ess")

# The two worlds the issue asks about (K = 3, 4 tokens, responses ≤ 3 tokens: 40 per prompt), named by the
# measurable that defines them: the mean KL(π_k‖π_ref) = E_{π_k}[ℓ_k]; the offset scale is solved for it.
# The policies share part of their offsets (all DPO policies move away from the SFT model in a common direction,
# so the mixture π_λ* is far from π_ref too); policies 1 and 2 agree most, so λ* leans to policy 3, not uniform.
CORRELATION = ((1.0, 0.9, 0.7), (0.9, 1.0, 0.7), (0.7, 0.7, 1.0))
CASES = {
    "easy": dict(kl=1.0, ref_scale=2.0, correlation=CORRELATION),
    "hard": dict(kl=4.0, ref_scale=2.0, correlation=CORRELATION),
}


def case_world(name: str, num_prompts: int = 64, seed: int = 0) -> EnumerableWorld:
    """The ``easy`` (KL ≈ 1 nat) or ``hard`` (KL ≈ 4 nats) world, K = 3."""
    params = dict(CASES[name])
    kl = params.pop("kl")
    kwargs = dict(num_prompts=num_prompts, num_policies=3, seed=seed, **params)
    return make_world(scale=scale_for_kl(kl, **kwargs), **kwargs)


@dataclass(frozen=True)
class Draw:
    """A sampled table: (N, m) response indices (−1 absent), its mask, log-ratios and log importance weights."""

    indices: np.ndarray
    mask: np.ndarray
    log_ratios: np.ndarray
    log_importance: np.ndarray
    rounds: int


@dataclass(frozen=True)
class Estimate:
    proposal: str
    m: int
    seed: int
    weights: np.ndarray
    l1: float
    ess: float  # median per-prompt ESS at λ̂
    ess_uniform: float  # median per-prompt ESS at uniform λ
    seconds: float
    result: WeightsResult


def balance_logp(parts) -> np.ndarray:
    """(N, S) log Σ_r (n_r/n) q_r(y): the balance heuristic over proposals given as (counts, (N, S) log q_r).

    ``counts`` is an int or one count per prompt; n = Σ_r n_r per prompt.
    """
    N = parts[0][1].shape[0]
    counts = np.stack([np.broadcast_to(np.asarray(c, dtype=np.float64), (N,)) for c, _ in parts], axis=-1)  # (N, R)
    with np.errstate(divide="ignore", invalid="ignore"):  # a prompt not drawn yet (batches): NaN, and masked
        log_share = np.log(counts / counts.sum(axis=1, keepdims=True))
    logq = np.stack([q for _, q in parts], axis=-1)  # (N, S, R)
    return logsumexp(logq + log_share[:, None, :], axis=-1)


class _Pool:
    """Samples drawn so far, each proposal with its per-prompt count, and the balance-heuristic table."""

    def __init__(self, world: EnumerableWorld, rng: np.random.Generator):
        self.world, self.rng = world, rng
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # (counts (N,), log q_r (N, S))
        self.indices: list[np.ndarray] = []

    def add(self, logq: np.ndarray, counts) -> None:
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), (self.world.num_prompts,))
        if counts.max(initial=0) == 0:
            return
        self.parts.append((counts, logq))
        self.indices.append(sample_sequences(logq, counts, self.rng))

    def log_q(self) -> np.ndarray:
        return balance_logp(self.parts)

    def draw(self) -> Draw:
        idx = np.concatenate(self.indices, axis=1)
        # Present samples first in each row (keeps tables dense when counts vary by prompt).
        idx = -np.sort(-idx, axis=1)
        idx = idx[:, : max(1, int((idx >= 0).sum(axis=1).max()))]  # rounds of other prompts' batches pad with −1
        mask = idx >= 0
        safe = np.where(mask, idx, 0)
        rows = np.arange(idx.shape[0])[:, None]
        L = np.where(mask[..., None], self.world.log_ratios[rows, safe], 0.0)
        log_imp = np.where(mask, self.world.ref_logp[rows, safe] - self.log_q()[rows, safe], 0.0)
        return Draw(idx, mask, L, log_imp, len(self.parts))

    def solve(self, rows: slice = slice(None)) -> WeightsResult:
        d = self.draw()
        return solve_weights(d.log_ratios[rows], mask=d.mask[rows], log_importance=d.log_importance[rows])


def round_sizes(m: int, rounds: int, first_min: int) -> list[int]:
    """m samples over ``rounds`` rounds; round 0 takes at least ``first_min`` (one per mixture component)."""
    first = min(m, max(first_min, math.ceil(m / rounds)))
    rest = [n for n in split_counts(m - first, rounds - 1) if n > 0] if rounds > 1 else []
    return [first, *rest]


def _add_mixture(pool: _Pool, n: int) -> None:
    """Round 0: n samples split evenly over π_ref and every π_k (π_ref takes any remainder first)."""
    comp = pool.world.component_logp
    for c, n_c in enumerate(split_counts(n, comp.shape[-1])):
        pool.add(comp[..., c], n_c)


def _adaptive_alpha(lam: np.ndarray, ref_floor: float) -> np.ndarray:
    return np.concatenate([[ref_floor], (1.0 - ref_floor) * lam])


def _add_stratified(pool: _Pool, n: int, alpha: np.ndarray) -> None:
    """n samples from Σ_c α_c π_c with the component counts fixed in advance (largest remainder of n·α).

    Each component then enters the balance heuristic with its own count, so the
    weights are those of q_r itself; only the random component allocation of
    i.i.d. mixture sampling (a source of variance) is gone.
    """
    want = n * np.asarray(alpha, dtype=np.float64)
    counts = np.floor(want).astype(np.int64)
    counts[np.argsort(-(want - counts), kind="stable")[: n - int(counts.sum())]] += 1
    comp = pool.world.component_logp
    for c, n_c in enumerate(counts):
        pool.add(comp[..., c], int(n_c))


def batch_bounds(num_prompts: int, batches: int) -> np.ndarray:
    """Start of each of ``batches`` contiguous prompt batches, and the end (as even as possible)."""
    return np.concatenate([[0], np.cumsum(split_counts(num_prompts, min(batches, num_prompts)))])


def _batch_counts(world: EnumerableWorld, m: int, batches: int, share: float) -> np.ndarray:
    """(B, N, K + 2) per-prompt counts of π_ref, each π_k and the mixture at λ̂ in each batch's balance heuristic."""
    bounds = batch_bounds(world.num_prompts, batches)
    out = np.zeros((len(bounds) - 1, world.num_prompts, world.num_policies + 2), dtype=np.int64)
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        out[b, lo:hi] = proposal_counts(m, world.num_policies, share if b else None)
    return out


def draw_table(
    world: EnumerableWorld,
    proposal: str,
    m: int,
    seed: int,
    *,
    rounds: int = 2,
    ref_floor: float = 0.2,
    stratify: bool = True,
    batches: int = 4,
    share: float = 0.5,
) -> Draw:
    """The (N, m, K) log-ratio table and its log importance weights for one proposal at budget m per prompt.

    ``stratify`` (``adaptive`` only): draw each round's arithmetic mixture with
    fixed component counts rather than i.i.d. from q_r. ``batches``, ``share``:
    ``geometric-batches`` only.
    """
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    # Common random numbers: the seed and m alone fix the stream, so proposals that coincide (adaptive at m = K+1)
    # give identical tables and differences between proposals are not seed noise.
    pool = _Pool(world, np.random.default_rng([seed, m]))
    K = world.num_policies
    if proposal == "reference":
        pool.add(world.ref_logp, m)
    elif proposal == "mixture":
        _add_mixture(pool, m)
    elif proposal in ("adaptive", "geometric"):
        sizes = round_sizes(m, rounds, K + 1)
        _add_mixture(pool, sizes[0])
        for n in sizes[1:]:
            lam = pool.solve().weights
            if proposal == "geometric":
                pool.add(world.geometric_token_logp(lam), n)
            elif stratify:
                _add_stratified(pool, n, _adaptive_alpha(lam, ref_floor))
            else:
                pool.add(world.mixture_logp(_adaptive_alpha(lam, ref_floor)), n)
    elif proposal == "geometric-batches":
        bounds = batch_bounds(world.num_prompts, batches)
        for b, counts in enumerate(_batch_counts(world, m, batches, share)):
            for c in range(K + 1):
                pool.add(world.component_logp[..., c], counts[:, c])
            if b:
                pool.add(world.geometric_token_logp(pool.solve(slice(0, bounds[b])).weights), counts[:, -1])
    else:  # adaptive-ess
        first = min(m, max(K + 1, m // 2))
        _add_mixture(pool, first)
        if first < m:
            res = pool.solve()
            pool.add(
                world.mixture_logp(_adaptive_alpha(res.weights, ref_floor)),
                allocate_by_ess(res.ess, world.num_prompts * (m - first), cap=4 * m - first),
            )
    return pool.draw()


def allocate_by_ess(ess: np.ndarray, total: int, cap: int) -> np.ndarray:
    """``total`` extra samples over prompts ∝ 1/ESS (largest remainder), at most ``cap`` each."""
    share = 1.0 / np.maximum(ess, 1.0)
    counts = np.zeros(ess.shape[0], dtype=np.int64)
    left = total
    while left > 0:
        open_ = counts < cap
        if not open_.any():
            break
        want = np.where(open_, share, 0.0) / np.where(open_, share, 0.0).sum() * left
        add = np.minimum(np.floor(want).astype(np.int64), cap - counts)
        if add.sum() == 0:  # hand out the remainder one by one, largest fractional part first
            order = np.argsort(-(want - np.floor(want)) * open_)
            for i in order[:left]:
                if counts[i] < cap:
                    counts[i] += 1
            left = total - int(counts.sum())
            break
        counts += add
        left = total - int(counts.sum())
    return counts


def limiting_proposal_logp(
    world: EnumerableWorld,
    proposal: str,
    m: int,
    *,
    rounds: int = 2,
    ref_floor: float = 0.2,
    batches: int = 4,
    share: float = 0.5,
) -> np.ndarray | None:
    """(N, S) log q of the balance heuristic a proposal uses once its intermediate λ̂ equals λ*.

    None for ``adaptive-ess``, whose per-prompt counts depend on the sampled ESS.
    """
    if proposal == "reference":
        return world.ref_logp
    if proposal == "adaptive-ess":
        return None
    K, lam = world.num_policies, world.exact.weights
    if proposal == "geometric-batches":
        counts = _batch_counts(world, m, batches, share).sum(axis=0)  # each prompt sits in one batch
        comp = np.concatenate([world.component_logp, world.geometric_token_logp(lam)[..., None]], axis=-1)
        return balance_logp([(counts[:, c], comp[..., c]) for c in range(K + 2)])
    sizes = [m] if proposal == "mixture" else round_sizes(m, rounds, K + 1)
    comp = world.component_logp
    parts = [(n, comp[..., c]) for c, n in enumerate(split_counts(sizes[0], K + 1))]
    later = (
        world.mixture_logp(_adaptive_alpha(lam, ref_floor))
        if proposal == "adaptive"
        else world.geometric_token_logp(lam)
    )
    parts += [(n, later) for n in sizes[1:]]
    return balance_logp(parts)


def predicted_l1(world: EnumerableWorld, logq: np.ndarray, m: int) -> float:
    """Asymptotic E|λ̂ − λ*|₁ with m i.i.d. samples per prompt from q (delta method, exact sums over responses).

    With p_i = π_λ*(·|x_i), μ_i = E_{p_i}[ℓ] and D = ℓ − μ_i, the self-normalised
    gradient of F̂ at λ* has covariance C_g = 1/(N² m) Σ_i Σ_y p_i(y)²/q_i(y) D Dᵀ,
    F's Hessian is H = 1/N Σ_i Cov_{p_i}(ℓ), and on the face Z of λ*'s support
    (Σ d = 0) λ̂ − λ* ≈ −Z (ZᵀHZ)⁻¹ Zᵀ δg, a Gaussian whose E|·|₁ = Σ_k √(2 C_kk/π).
    Stratified round-0 sampling only lowers the variance, so for ``mixture`` this is
    an upper estimate; it ignores the simplex boundary, so it overstates large errors.
    """
    lam = world.exact.weights
    p = np.exp(world.target_logp(lam))
    L = world.log_ratios
    mu = np.einsum("is,isk->ik", p, L)
    D = L - mu[:, None, :]
    N = world.num_prompts
    H = np.einsum("is,isk,isl->kl", p, D, D) / N
    Cg = np.einsum("is,isk,isl->kl", p * p / np.exp(logq), D, D) / (N * N * m)
    support = np.flatnonzero(lam > 1e-9)
    if support.size < 2:
        return 0.0
    n = support.size
    Z = np.zeros((lam.size, n - 1))
    Z[support] = np.linalg.qr(np.vstack([np.eye(n - 1), -np.ones((1, n - 1))]))[0]
    A = np.linalg.pinv(Z.T @ H @ Z)
    C = Z @ A @ Z.T @ Cg @ Z @ A @ Z.T
    return float(np.sqrt(2.0 / np.pi) * np.sqrt(np.clip(np.diag(C), 0.0, None)).sum())


def estimate(world: EnumerableWorld, proposal: str, m: int, seed: int, **kwargs) -> Estimate:
    """λ̂ from one proposal's table, its L1 error against the exact λ*, and the median ESS at λ̂ and uniform λ."""
    t0 = time.perf_counter()
    d = draw_table(world, proposal, m, seed, **kwargs)
    res = solve_weights(d.log_ratios, mask=d.mask, log_importance=d.log_importance)
    seconds = time.perf_counter() - t0
    K = world.num_policies
    uniform = evaluate_weights(d.log_ratios, np.full(K, 1.0 / K), mask=d.mask, log_importance=d.log_importance)
    return Estimate(
        proposal=proposal,
        m=m,
        seed=seed,
        weights=res.weights,
        l1=float(np.abs(res.weights - world.exact.weights).sum()),
        ess=float(np.median(res.ess)),
        ess_uniform=float(np.median(uniform.ess)),
        seconds=seconds,
        result=res,
    )


def describe_world(name: str, world: EnumerableWorld) -> str:
    kl = world.kl().mean(axis=0)
    ex = world.exact
    corr = np.round(np.asarray(CORRELATION), 2).tolist()
    return (
        f"[{name}] N={world.num_prompts} prompts, K={world.num_policies}, 4 tokens (EOS=0), responses ≤ 3 tokens "
        f"({world.num_sequences} per prompt); offset scale={world.scale:.2f}, ref_scale={CASES[name]['ref_scale']}, "
        f"offset correlation {corr}\n"
        f"  KL(π_k‖π_ref) = E_πk[ℓ_k] = {np.round(kl, 2).tolist()} nats (mean {kl.mean():.2f}); "
        f"KL(π_λ*‖π_ref) = {world.target_kl(ex.weights):.2f}\n"
        f"  λ* = {np.round(ex.weights, 3).tolist()}  F(λ*) = {ex.dual:.4f}  "
        f"(|λ*−uniform|₁ = {np.abs(ex.weights - 1 / world.num_policies).sum():.3f})"
    )


def run_case(world: EnumerableWorld, proposals, ms, seeds, **kwargs) -> dict:
    rows = {}
    for m in ms:
        for p in proposals:
            rows[p, m] = [estimate(world, p, m, s, **kwargs) for s in seeds]
    return rows


def print_case(world: EnumerableWorld, rows: dict, proposals, ms, **kwargs) -> None:
    print(
        f"  {'proposal':<18}{'m':>4}  {'L1 |λ̂−λ*| mean ± sd':>20}  {'pred':>6}  {'ESS@λ̂':>7}  {'ESS@unif':>8}  "
        f"{'ms/est':>7}"
    )
    for m in ms:
        for p in proposals:
            est = rows[p, m]
            l1 = np.array([e.l1 for e in est])
            logq = limiting_proposal_logp(world, p, m, **kwargs)
            pred = predicted_l1(world, logq, m) if logq is not None else None
            pred = f"{'—':>6}" if pred is None else f"{'>2':>6}" if pred > 2 else f"{pred:6.3f}"
            print(
                f"  {p:<18}{m:>4}  {l1.mean():>11.3f} ± {l1.std(ddof=1) if l1.size > 1 else 0.0:.3f}  {pred}"
                f"  {np.mean([e.ess for e in est]):>7.2f}  {np.mean([e.ess_uniform for e in est]):>8.2f}"
                f"  {1e3 * np.mean([e.seconds for e in est]):>7.1f}"
            )
    for m in ms:
        mean = {p: float(np.mean([e.l1 for e in rows[p, m]])) for p in proposals}
        best = min(mean, key=mean.get)
        others = ", ".join(f"{p} {mean[p] / max(mean[best], 1e-12):.1f}×" for p in proposals if p != best)
        print(f"  m={m}: best {best} (L1 {mean[best]:.3f}); error relative to it: {others}")


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="mpo-ray bench estimator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--prompts", type=positive_int, default=64)
    p.add_argument("--samples", type=positive_int, nargs="+", default=[4, 16, 64], help="m values (per prompt)")
    p.add_argument("--seeds", type=positive_int, default=4, help="seeds per cell (the world itself is fixed)")
    p.add_argument("--case", choices=[*CASES, "both"], default="both")
    p.add_argument("--proposals", nargs="+", choices=PROPOSALS, default=list(PROPOSALS))
    p.add_argument("--rounds", type=positive_int, default=2, help="rounds for adaptive / geometric")
    p.add_argument("--ref-floor", type=float, default=0.2, help="α_ref in the adaptive rounds")
    p.add_argument("--batches", type=positive_int, default=4, help="prompt batches for geometric-batches")
    p.add_argument(
        "--share",
        type=_share,
        default=0.5,
        help="geometric-batches: share of m drawn from the mixture at λ̂ after batch 0",
    )
    p.add_argument("--world-seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)

    cases = list(CASES) if args.case == "both" else [args.case]
    for name in cases:
        try:
            world = case_world(name, args.prompts, args.world_seed)
        except ValueError as exc:  # e.g. too few prompts to reach the case's KL
            p.error(f"case {name!r} with --prompts {args.prompts}: {exc}")
        print(describe_world(name, world))
        t0 = time.perf_counter()
        kwargs = dict(rounds=args.rounds, ref_floor=args.ref_floor, batches=args.batches, share=args.share)
        rows = run_case(world, args.proposals, args.samples, range(args.seeds), **kwargs)
        print_case(world, rows, args.proposals, args.samples, **kwargs)
        print(f"  ({time.perf_counter() - t0:.1f}s for {len(rows) * args.seeds} estimates)\n")


if __name__ == "__main__":
    main()
