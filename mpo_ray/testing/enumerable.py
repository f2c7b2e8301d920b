"""A tiny, exactly enumerable world for measuring MPO's weight estimators (numpy only).

Each prompt has an autoregressive reference policy over a small vocabulary
(token 0 is EOS) and responses of at most ``max_len`` tokens: a response ends
at EOS or is cut at ``max_len``. With 4 tokens and ``max_len = 3`` there are
1 + 3 + 9 + 27 = 40 responses per prompt, so every expectation below is an
exact finite sum, and every sampler is an exact categorical draw.

The K policies' next-token logits are the reference's plus seeded Gaussian
offsets of standard deviation ``scale`` (times ``policy_scales[k]``), one per
(prompt, prefix, token). ``scale`` sets how far the policies sit from π_ref,
measured by ``kl()``: KL(π_k‖π_ref) = E_{π_k}[ℓ_k] in nats per prompt.

What this gives the estimator study (docs/design.md §1):

* exact sequence log-probs under π_ref and each π_k, hence the log-ratios
  ℓ_k = log π_k − log π_ref of every response;
* exact samplers (a seeded ``np.random.Generator``) from any table of
  sequence log-probs: π_ref, π_k, an arithmetic mixture Σ_c α_c π_c, and the
  normalised token-level geometric mixture at λ (what a decoder that hosts all
  K policies samples, ``models/decoding.py``);
* the exact dual F(λ) and the exact λ* = argmin F over the simplex, found by
  :func:`~mpo_ray.core.solver.solve_weights` with every response as a sample
  and ``log_importance = log π_ref(y)``: the solver's self-normalised base
  weights are then exactly π_ref(y), so its F̂ *is* F;
* what a server actually serves (issue 19), exactly: the token-level mixture,
  resampling one of n token-level candidates ∝ π_λ/q (``testing/resampling.py``,
  the decoder's ``num_candidates``), a token-by-token sampler that couples sets
  through shared uniforms as the demo's shared seeds do, the exact MaxMin
  objective J of any table (``objective``), and the λ best for a one-candidate
  server (``testing/token_weights.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from mpo_ray.core.solver import WeightsResult, solve_weights
from mpo_ray.testing.resampling import log_mean_weight, logsumexp, resampling_logp

__all__ = ["EOS", "EnumerableWorld", "make_world", "scale_for_kl", "sample_sequences"]

EOS = 0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    return logits - logsumexp(logits)[..., None]


def _enumerate(vocab_size: int, max_len: int):
    """All responses, and for each its (prefix index, token) steps padded to ``max_len``.

    Prefixes are the EOS-free token tuples of length < max_len; a response is
    a prefix followed by one more token (EOS, or anything at the last step),
    or an EOS-free tuple of length max_len.
    """
    words = [t for t in range(vocab_size) if t != EOS]
    prefixes = [p for n in range(max_len) for p in itertools.product(words, repeat=n)]
    prefix_index = {p: i for i, p in enumerate(prefixes)}
    sequences = []
    for p in prefixes:
        sequences.append(p + (EOS,))
        if len(p) == max_len - 1:
            sequences.extend(p + (t,) for t in words)
    steps = np.zeros((len(sequences), max_len), dtype=np.int64)  # flat index prefix * V + token
    present = np.zeros((len(sequences), max_len), dtype=bool)
    for s, seq in enumerate(sequences):
        for t, tok in enumerate(seq):
            steps[s, t] = prefix_index[seq[:t]] * vocab_size + tok
            present[s, t] = True
    return tuple(sequences), tuple(prefixes), steps, present


def sample_sequences(logp: np.ndarray, n, rng: np.random.Generator) -> np.ndarray:
    """Exact draws from per-prompt categorical distributions given as (N, S) log-probs.

    ``n`` is the number of draws per prompt (an int, or one count per prompt);
    returns (N, max n) response indices, with −1 padding past a prompt's count.
    Inverse-CDF sampling on a CDF renormalised so its last entry is exactly 1.
    """
    logp = np.asarray(logp, dtype=np.float64)
    N, S = logp.shape
    counts = np.broadcast_to(np.asarray(n, dtype=np.int64), (N,))
    width = int(counts.max()) if N else 0
    p = np.exp(logp - logsumexp(logp)[:, None])
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((N, width))
    idx = np.empty((N, width), dtype=np.int64)
    for i in range(N):
        idx[i] = np.searchsorted(cdf[i], u[i], side="right")
    idx = np.minimum(idx, S - 1)
    idx[np.arange(width)[None, :] >= counts[:, None]] = -1
    return idx


@dataclass(frozen=True)
class EnumerableWorld:
    """N prompts × S enumerable responses, a reference and K policies, all exact.

    ``ref_token_logp`` is (N, P, V) and ``policy_token_logp`` (K, N, P, V):
    next-token log-probs after each of the P ``prefixes``. Everything else derives.
    """

    sequences: tuple[tuple[int, ...], ...]
    prefixes: tuple[tuple[int, ...], ...]
    ref_token_logp: np.ndarray
    policy_token_logp: np.ndarray
    steps: np.ndarray = field(repr=False)
    present: np.ndarray = field(repr=False)
    scale: float = 0.0
    seed: int = 0

    @property
    def num_prompts(self) -> int:
        return self.ref_token_logp.shape[0]

    @property
    def num_policies(self) -> int:
        return self.policy_token_logp.shape[0]

    @property
    def num_sequences(self) -> int:
        return len(self.sequences)

    def sequence_logp(self, token_logp: np.ndarray) -> np.ndarray:
        """(N, P, V) next-token log-probs → (N, S) log-probs of every response."""
        flat = token_logp.reshape(token_logp.shape[0], -1)
        return np.where(self.present[None], flat[:, self.steps], 0.0).sum(axis=-1)

    @cached_property
    def ref_logp(self) -> np.ndarray:
        """(N, S) log π_ref(y|x_i)."""
        return self.sequence_logp(self.ref_token_logp)

    @cached_property
    def policy_logp(self) -> np.ndarray:
        """(N, S, K) log π_k(y|x_i)."""
        return np.stack([self.sequence_logp(t) for t in self.policy_token_logp], axis=-1)

    @cached_property
    def component_logp(self) -> np.ndarray:
        """(N, S, 1 + K): π_ref then every π_k, the components of the arithmetic mixtures."""
        return np.concatenate([self.ref_logp[..., None], self.policy_logp], axis=-1)

    @cached_property
    def log_ratios(self) -> np.ndarray:
        """(N, S, K) ℓ_k(x_i, y) = log π_k − log π_ref for every response."""
        return self.policy_logp - self.ref_logp[..., None]

    def kl(self) -> np.ndarray:
        """(N, K) KL(π_k‖π_ref) = E_{π_k}[ℓ_k] per prompt, nats."""
        return np.einsum("isk,isk->ik", np.exp(self.policy_logp), self.log_ratios)

    def target_kl(self, lam) -> float:
        """KL(π_λ‖π_ref) averaged over prompts: how far the distribution λ̂'s estimator must reach sits, nats."""
        lp = self.target_logp(lam)
        return float((np.exp(lp) * (lp - self.ref_logp)).sum(axis=1).mean())

    def mixture_logp(self, alpha) -> np.ndarray:
        """(N, S) log Σ_c α_c π_c(y) over components (π_ref, π_1..π_K); ``alpha`` (1+K,) or (N, 1+K), Σ = 1."""
        alpha = np.asarray(alpha, dtype=np.float64)
        with np.errstate(divide="ignore"):
            log_alpha = np.log(alpha)
        if log_alpha.ndim == 2:
            log_alpha = log_alpha[:, None, :]
        return logsumexp(self.component_logp + log_alpha, axis=-1)

    def geometric_token_logp(self, lam) -> np.ndarray:
        """(N, S) log-probs of the normalised token-level mixture softmax_v(Σ_k λ_k log π_k(v|prefix))."""
        lam = np.asarray(lam, dtype=np.float64)
        scores = np.einsum("k,kipv->ipv", lam, self.policy_token_logp)
        return self.sequence_logp(_log_softmax(scores))

    def target_logp(self, lam) -> np.ndarray:
        """(N, S) log π_λ(y) = log [π_ref exp(λ·ℓ) / Z], the sequence-level mixed policy, normalised."""
        a = self.ref_logp + self.log_ratios @ np.asarray(lam, dtype=np.float64)
        return a - logsumexp(a)[:, None]

    def dual(self, lam) -> float:
        """The exact F(λ) = 1/N Σ_i log Σ_y π_ref(y|x_i) exp(λ·ℓ(x_i, y))."""
        a = self.ref_logp + self.log_ratios @ np.asarray(lam, dtype=np.float64)
        return float(logsumexp(a).mean())

    def values(self, lam) -> np.ndarray:
        """(K,) exact E_x E_{π_λ}[ℓ_k], the gradient of F."""
        p = np.exp(self.target_logp(lam))
        return np.einsum("is,isk->k", p, self.log_ratios) / self.num_prompts

    def solve_all(self, **kwargs) -> WeightsResult:
        """``solve_weights`` with every response a sample and base weights exactly π_ref(y)."""
        return solve_weights(self.log_ratios, log_importance=self.ref_logp, **kwargs)

    @cached_property
    def exact(self) -> WeightsResult:
        """The exact λ* (``.weights``) and F(λ*) (``.dual``)."""
        return self.solve_all()

    def sample(self, logp: np.ndarray, n, rng: np.random.Generator) -> np.ndarray:
        """(N, n) response indices drawn exactly from the (N, S) log-prob table ``logp``."""
        return sample_sequences(logp, n, rng)

    def sample_reference(self, n, rng):
        return self.sample(self.ref_logp, n, rng)

    def sample_policy(self, k: int, n, rng):
        return self.sample(self.policy_logp[..., k], n, rng)

    def sample_mixture(self, alpha, n, rng):
        return self.sample(self.mixture_logp(alpha), n, rng)

    def sample_geometric(self, lam, n, rng):
        return self.sample(self.geometric_token_logp(lam), n, rng)

    # What a decoder actually serves (issue 19): the token-level mixture, n-candidate resampling, and the exact
    # MaxMin objective J of any table, so serving modes can be compared with F(λ*) without sampling noise.

    def subset(self, rows) -> EnumerableWorld:
        """The world restricted to the prompts ``rows``: a reweight or eval sample drawn from the population."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self, ref_token_logp=self.ref_token_logp[rows], policy_token_logp=self.policy_token_logp[:, rows]
        )

    def token_mixture(self, lam) -> np.ndarray:
        """(N, P, V) next-token log-probs softmax_v(Σ_k λ_k log π_k(v|prefix)): the decoder's step distribution."""
        lam = np.asarray(lam, dtype=np.float64)
        return _log_softmax(np.einsum("k,kipv->ipv", lam, self.policy_token_logp))

    def resampled_logp(self, lam, n, **kwargs) -> np.ndarray:
        """(N, S) exact log-probs of ``num_candidates = n`` at λ: n token-level draws, one kept ∝ π_λ/q.

        ``n`` an int gives (N, S); a sequence of ints gives (len(n), N, S). See :func:`resampling_logp`.
        """
        return resampling_logp(self.target_logp(lam), self.geometric_token_logp(lam), n, **kwargs)

    def served_logp(self, lam, candidates: int = 1, **kwargs) -> np.ndarray:
        """(N, S) log-probs of what ``MixedPolicy.generate(num_candidates=candidates)`` serves at λ (temperature 1)."""
        if candidates == 1:
            return self.geometric_token_logp(lam)
        return self.resampled_logp(lam, int(candidates), **kwargs)

    def served_values(self, logp: np.ndarray) -> np.ndarray:
        """(K,) exact E_x E_π[ℓ_k] of the policy whose (N, S) log-probs are ``logp``."""
        return np.einsum("is,isk->k", np.exp(logp), self.log_ratios) / self.num_prompts

    def served_kl(self, logp: np.ndarray) -> float:
        """Exact KL(π‖π_ref) averaged over prompts, nats, of the (N, S) table ``logp``."""
        p = np.exp(logp)
        return float(np.where(p > 0, p * (logp - self.ref_logp), 0.0).sum(axis=1).mean())

    def served_kl_estimate(self, lam, n: int, **kwargs) -> float:
        """Exact expectation of the KL term `core.yardstick` uses for a set served with ``num_candidates = n`` at λ:
        over the served y ~ p_n and its n candidates, log π̃_λ(y) − log Ẑ(x) − log π_ref(y) with Ẑ the candidates'
        mean importance weight (``target_logprob``). Equals E_{p_n}[log π_λ − log π_ref] − E[log Ẑ/Z]: the first
        term is KL(p_n‖π_ref) − KL(p_n‖π_λ), the second ≥ 0 (Jensen); log Ẑ does not depend on which candidate is
        kept, so its expectation is over n i.i.d. draws from q. Averaged over prompts, nats."""
        target, q = self.target_logp(lam), self.geometric_token_logp(lam)
        p_n = self.served_logp(lam, n, **kwargs)
        term = np.where(np.exp(p_n) > 0, np.exp(p_n) * (target - self.ref_logp), 0.0).sum(axis=1)
        return float((term - log_mean_weight(target, q, n, **kwargs)).mean())

    def objective(self, logp: np.ndarray) -> float:
        """Exact J(π) = min_k E_x E_π[ℓ_k] − KL(π‖π_ref) of the table ``logp`` (core/yardstick.py's J)."""
        return float(self.served_values(logp).min() - self.served_kl(logp))

    @cached_property
    def children(self) -> np.ndarray:
        """(P, V): after prefix p and token v, the next prefix's index (≥ 0), or −(s + 1) if response s ends."""
        prefix_index = {p: i for i, p in enumerate(self.prefixes)}
        seq_index = {s: i for i, s in enumerate(self.sequences)}
        V = self.ref_token_logp.shape[-1]
        out = np.empty((len(self.prefixes), V), dtype=np.int64)
        for i, p in enumerate(self.prefixes):
            for v in range(V):
                nxt = p + (v,)
                out[i, v] = prefix_index[nxt] if nxt in prefix_index else -(seq_index[nxt] + 1)
        return out

    def sample_tokens(self, token_logp: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Response indices drawn token by token, one uniform per step, as ``models/decoding.py`` draws them.

        ``token_logp`` (N, P, V) next-token log-probs; ``uniforms`` (N, B, T ≥ max_len): B draws per prompt.
        Inverse CDF over token ids in order, like the decoder's ``_inverse_cdf``: sets decoded with the same
        uniforms are coupled as the demo's sets are (the same seed per prompt for every set).
        """
        N, B = uniforms.shape[:2]
        state = np.zeros((N, B), dtype=np.int64)  # prefix index; () is prefix 0
        done = np.full((N, B), -1, dtype=np.int64)
        rows = np.arange(N)[:, None]
        for t in range(max(len(s) for s in self.sequences)):
            cdf = np.cumsum(np.exp(token_logp[rows, state]), axis=-1)  # (N, B, V)
            tok = (cdf <= (uniforms[..., t] * cdf[..., -1])[..., None]).sum(-1)
            tok = np.minimum(tok, cdf.shape[-1] - 1)
            nxt = self.children[state, tok]
            live = done < 0
            ended = live & (nxt < 0)
            done[ended] = -nxt[ended] - 1
            state = np.where(live & (nxt >= 0), nxt, state)
        return done

    def sample_served(self, lam, candidates: int, token_uniforms: np.ndarray, pick_uniforms=None) -> np.ndarray:
        """(N, B) responses served at λ with ``num_candidates = candidates``, exactly by the decoder's rule.

        ``token_uniforms`` (N, B, candidates, T): candidate c of draw b decodes with its own stream; with more
        than one candidate, ``pick_uniforms`` (N, B) keeps one by inverse CDF on softmax(log w),
        log w = log π̃_λ − log q (``generate``'s logprob + log_normalizer − proposal_logprob at temperature 1).
        """
        if token_uniforms.shape[2] != candidates:
            raise ValueError(f"token_uniforms has {token_uniforms.shape[2]} candidates per draw, expected {candidates}")
        q_tok = self.token_mixture(lam)
        log_w = self.target_logp(lam) - self.sequence_logp(q_tok)  # (N, S), up to a per-prompt constant
        return self.sample_resampled(q_tok, log_w, token_uniforms, pick_uniforms)

    def sample_resampled(
        self, token_logp: np.ndarray, log_w: np.ndarray, token_uniforms: np.ndarray, pick_uniforms=None
    ) -> np.ndarray:
        """(N, B): per draw, n candidates decoded token by token from ``token_logp`` (N, P, V), one kept by inverse CDF
        on softmax of the (N, S) ``log_w`` of the candidates (a single policy: log_w = 0, a uniform pick)."""
        N, B, n, T = token_uniforms.shape
        cand = self.sample_tokens(token_logp, token_uniforms.reshape(N, B * n, T)).reshape(N, B, n)
        if n == 1:
            return cand[..., 0]
        lw = np.take_along_axis(np.asarray(log_w, dtype=np.float64), cand.reshape(N, -1), axis=1).reshape(N, B, n)
        prob = np.exp(lw - lw.max(-1, keepdims=True))
        cdf = np.cumsum(prob / prob.sum(-1, keepdims=True), axis=-1)
        pick = np.minimum((cdf <= (pick_uniforms * cdf[..., -1])[..., None]).sum(-1), n - 1)
        return np.take_along_axis(cand, pick[..., None], axis=-1)[..., 0]


def make_world(
    num_prompts: int = 32,
    num_policies: int = 3,
    *,
    scale: float = 1.0,
    policy_scales=None,
    correlation=None,
    ref_scale: float = 1.0,
    vocab_size: int = 4,
    max_len: int = 3,
    seed: int = 0,
) -> EnumerableWorld:
    """A seeded world: reference logits ~ ref_scale·N(0,1), policy k's = reference + scale·s_k·ε_k.

    ε_k ~ N(0, 1) per (prompt, prefix, token), correlated across policies by
    the (K, K) ``correlation`` matrix (default identity: independent policies;
    two correlated policies agree, so the mixture serves them together and λ*
    moves towards the odd one out). ``policy_scales`` (default all 1) makes
    the policies unequally far from π_ref.
    """
    if vocab_size < 2 or max_len < 1 or num_prompts < 1 or num_policies < 1:
        raise ValueError("need vocab_size >= 2, max_len >= 1, num_prompts >= 1 and num_policies >= 1")
    sequences, prefixes, steps, present = _enumerate(vocab_size, max_len)
    rng = np.random.default_rng(seed)
    shape = (num_prompts, len(prefixes), vocab_size)
    ref_logits = ref_scale * rng.standard_normal(shape)
    s = np.ones(num_policies) if policy_scales is None else np.asarray(policy_scales, dtype=np.float64)
    if s.shape != (num_policies,):
        raise ValueError(f"policy_scales needs {num_policies} entries, got {s.shape}")
    offsets = rng.standard_normal((num_policies, *shape))
    if correlation is not None:
        corr = np.asarray(correlation, dtype=np.float64)
        if corr.shape != (num_policies, num_policies):
            raise ValueError(f"correlation must be {num_policies}x{num_policies}, got {corr.shape}")
        offsets = np.einsum("kl,l...->k...", np.linalg.cholesky(corr), offsets)
    policy_logits = ref_logits[None] + scale * s[:, None, None, None] * offsets
    return EnumerableWorld(
        sequences=sequences,
        prefixes=prefixes,
        ref_token_logp=_log_softmax(ref_logits),
        policy_token_logp=_log_softmax(policy_logits),
        steps=steps,
        present=present,
        scale=float(scale),
        seed=int(seed),
    )


def scale_for_kl(target_kl: float, *, low: float = 0.01, high: float = 50.0, iters: int = 40, **world_kwargs) -> float:
    """The offset ``scale`` at which the mean KL(π_k‖π_ref) over prompts and policies is ``target_kl`` (bisection).

    ``world_kwargs`` go to :func:`make_world` (same seed, so only the scale
    varies). Raises ValueError if the target is out of reach at ``high``.
    """

    def mean_kl(scale):
        return float(make_world(scale=scale, **world_kwargs).kl().mean())

    if mean_kl(high) < target_kl:
        raise ValueError(
            f"mean KL {mean_kl(high):.2f} at scale={high} is below the target {target_kl}; "
            "use a larger vocabulary, longer responses or a more peaked reference (ref_scale)"
        )
    for _ in range(iters):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if mean_kl(mid) < target_kl else (low, mid)
    return 0.5 * (low + high)
