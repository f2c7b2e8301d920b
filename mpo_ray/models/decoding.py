"""MixedPolicy: token-level decoding of the log-linear mixture Π_k π_k^λ_k.

At every step each policy k scores the next token given its own formatting of
the prompt and the shared response so far, and the scores are mixed in log
space (docs/design.md §1 "Decoding the mixture"):

    s_t(v) = Σ_k λ_k log π_k(v | x, y_<t),   log z_t = logsumexp_v s_t(v)

and the next token is drawn from softmax(s_t), with temperature / top-k / top-p
applied after mixing. Each sequence carries `logprob = Σ_t s_t(y_t) − log z_t`
(its probability under the untempered token-level mixture) and
`log_normalizer = Σ_t log z_t`. The sequence-level target is
π_λ(y) ∝ exp(Σ_t s_t(y_t)) = q(y) Π_t z_t, so drawing n candidates and
resampling one by exp(log_normalizer) (more generally by target / proposal)
serves a distribution p_n that approaches Π_k π_k^λ_k as n grows, equal to it
only as n → ∞ (`num_candidates`; `mpo-ray bench serving` measures the gap).

Weights on the simplex are the MPO case (then log z_t ≤ 0). Any real
exponents are accepted as an extension (e.g. λ_ref < 0 for DeRa-style
realignment; negative or super-unit weights make log z_t unbounded in sign).
Terms with weight exactly 0 are not run at all. Weights must be real and
|λ_k| ≤ MAX_ABS_WEIGHT = 1e4: the mix runs in float32 (eps ≈ 1.2e-7), where
λ·log π with log-probs of tens of nats keeps ~0.01-nat resolution at 1e4 and
loses it beyond, and a weight like 1e308 is not even a float32 (it becomes
inf and the normaliser −inf / NaN). Rows are never returned with a
non-finite logprob, log_normalizer or proposal log-prob: decoding and
`sequence_logprob` raise a ValueError naming the prompt (e.g. a negative
weight on a policy that gives some token log-prob −inf, or NaN logits).

Policies that share one loaded module (system-prompted variants or LoRA
adapters of one base) run as ONE forward over G×B rows with one KV cache;
separate models run one forward each, one KV cache each. Rows that finish
(EOS or a stop string) are dropped from every cache, so the rest go on faster.
Each (prompt, candidate) row samples from its own seeded stream of uniforms,
so a row's output depends on its seed only, not on the rest of the batch.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from functools import cache

import numpy as np
import torch

from mpo_ray.config import PolicySpec
from mpo_ray.models.kv_group import KVGroup
from mpo_ray.models.policies import Policy, check_same_vocabulary, load_policies
from mpo_ray.models.scoring import (
    check_context,
    check_prompts,
    check_responses,
    length_sorted_batches,
    response_logprobs,
    right_aligned_targets,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    logprob: float  # Σ_t s_t(y_t) − log z_t: log-prob under the untempered token-level mixture
    log_normalizer: float  # Σ_t log z_t (≤ 0 for weights on the simplex)
    num_tokens: int
    proposal_logprob: float = 0.0  # log-prob under the distribution actually sampled (tempered / top-k / top-p)
    # num_candidates = n > 1 only: log of the mean importance weight π̃_λ/q over the prompt's n candidates, an
    # unbiased estimate of the partition function Z(x) = Σ_y Π_k π_k(y|x)^λ_k (its log is biased low, by Jensen).
    # With it log π_λ(y|x) ≈ logprob + log_normalizer − log_partition: what a KL estimate of a resampled set needs.
    log_partition: float | None = None


@cache
def _log_chunks(why: str) -> None:
    log.info("slot refill off: %s; rows decode in chunks of the slot count", why)


SYNC_EVERY = 8  # steps between the host's looks at the device (early stop, stop strings, finiteness, compaction)


MAX_ABS_WEIGHT = 1e4  # largest |λ_k| accepted (module docstring: float32 resolution of the mixed scores)
_SCORES = ("logprob", "log_normalizer", "proposal_logprob")


class MixedPolicy:
    """The log-linear mixture of `policies` (Policy objects or PolicySpecs) with exponents `weights`."""

    def __init__(self, policies, weights, *, compile: bool = False):
        """``compile``: run the decode step through torch.compile (CUDA graphs on a GPU) where the cache is
        static; a model that cannot compile decodes eagerly, the reason logged."""
        policies = list(policies)
        if not policies:
            raise ValueError("policies is empty; pass at least one Policy (or PolicySpec)")
        if all(isinstance(p, (PolicySpec, dict)) for p in policies):
            policies = load_policies(policies)
        for i, p in enumerate(policies):
            if not isinstance(p, Policy):
                raise ValueError(f"policies[{i}] is a {type(p).__name__}; pass Policy objects from load_policies")
        names = [p.name for p in policies]
        try:
            raw = np.asarray(weights)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"weights must be a list of numbers, one per policy {names}, got {weights!r}") from None
        if np.iscomplexobj(raw) or (raw.dtype == object and any(isinstance(x, complex) for x in raw.flat)):
            raise ValueError(
                f"weights must be real numbers, got complex {raw.tolist()} for policies {names}; pass the real "
                "exponents (np.real(weights) if the imaginary part is zero by construction)"
            )
        try:
            weights = raw.astype(np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"weights must be a list of numbers, one per policy {names}, got {weights!r}") from None
        if len(weights) != len(policies):
            raise ValueError(
                f"weights has {len(weights)} entries but there are {len(policies)} policies {names}; "
                "pass one weight per policy, in the same order"
            )
        if not np.all(np.isfinite(weights)):
            raise ValueError(f"weights must be finite numbers, got {weights.tolist()} for policies {names}")
        if not np.any(weights):
            raise ValueError(f"weights are all zero for policies {names}; at least one must be non-zero")
        too_big = np.flatnonzero(np.abs(weights) > MAX_ABS_WEIGHT)
        if too_big.size:
            k = int(too_big[0])
            raise ValueError(
                f"weights[{k}] = {weights[k]:.3g} (policy {names[k]!r}) is beyond |w| <= {MAX_ABS_WEIGHT:.0e}: the "
                "mixed float32 scores w·log π would lose all resolution or overflow (non-finite normaliser); "
                "use exponents of a sensible size (on the simplex for MPO)"
            )
        check_same_vocabulary(policies)
        self.policies, self.weights, self.compile = policies, weights, bool(compile)
        by_module: dict[int, list[int]] = {}
        for k in np.flatnonzero(weights):
            by_module.setdefault(id(policies[k].model), []).append(int(k))
        self._members = [[policies[k] for k in ks] for ks in by_module.values()]
        self._member_weights = [[float(weights[k]) for k in ks] for ks in by_module.values()]
        self.device = self._members[0][0].device
        self.tokenizer = policies[0].tokenizer
        self.eos_token_ids = sorted(set().union(*(p.eos_token_ids for p in policies)))

    def __repr__(self):
        terms = " * ".join(f"{p.name}^{w:.3g}" for p, w in zip(self.policies, self.weights))
        return f"MixedPolicy({terms})"

    def _encode(self, prompts: list[str], extras, what: str) -> list[list[list[int]]]:
        """Per group, per member policy, each prompt's token ids, length-checked."""
        encoded = []
        for members in self._members:
            ids = [p.encode_prompts(prompts) for p in members]
            for p, pid in zip(members, ids):
                check_context(p, pid, extras, what)
            encoded.append(ids)
        return encoded

    def _groups(self) -> list[KVGroup]:
        return [KVGroup(ps, ws, self.compile) for ps, ws in zip(self._members, self._member_weights)]

    def _mix(self, groups: list[KVGroup], group_logits: list[torch.Tensor]) -> torch.Tensor:
        terms = [g.mixed_term(logits, self.device) for g, logits in zip(groups, group_logits)]
        width = min(t.shape[-1] for t in terms)  # models may pad their output layer differently
        return sum(t[:, :width] for t in terms)

    @torch.no_grad()
    def generate(
        self,
        prompts,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed=None,
        stop=None,
        num_candidates: int = 1,
        ignore_eos: bool = False,
        slots: int | None = None,
    ) -> list[Generation]:
        """Sample one response per prompt from the mixture; temperature=0 is greedy.

        ``seed`` is an int, one int per prompt (rows then do not depend on the
        rest of the batch), or None. With num_candidates=n > 1, n responses are
        drawn per prompt (`sample_candidates`) and one is kept with probability
        ∝ target/proposal (= exp(log_normalizer) at temperature 1 without
        top-k/top-p): a sample of p_n, nearer the sequence-level mixture as n grows. `stop` strings end
        a row (the text is cut before them); `ignore_eos` decodes
        max_new_tokens for every row (for benchmarks). ``slots`` caps the rows
        decoding at once (candidates count as rows): a finished row's slot takes
        the next one (slot refill); rows are the same whatever the slots.
        """
        prompts = check_prompts(prompts)
        seeds = _prompt_seeds(seed, len(prompts))
        groups = self.sample_candidates(
            prompts,
            num_candidates,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seeds,
            stop=stop,
            ignore_eos=ignore_eos,
            slots=slots,
        )
        if num_candidates == 1:
            return [g[0] for g in groups]
        log_w = torch.tensor(
            [[c.logprob + c.log_normalizer - c.proposal_logprob for c in g] for g in groups], dtype=torch.float64
        )
        u = torch.tensor([np.random.default_rng([s]).random() for s in seeds], dtype=torch.float64)
        pick = _inverse_cdf(torch.softmax(log_w, -1), u).tolist()
        log_z = (torch.logsumexp(log_w, -1) - np.log(num_candidates)).tolist()
        return [dataclasses.replace(g[i], log_partition=z) for g, i, z in zip(groups, pick, log_z)]

    @torch.no_grad()
    def sample_candidates(
        self,
        prompts,
        num_candidates: int,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed=None,
        stop=None,
        ignore_eos: bool = False,
        slots: int | None = None,
    ) -> list[list[Generation]]:
        """``num_candidates`` token-level samples per prompt, all decoded as one batch (best-of-n, resampling)."""
        prompts = check_prompts(prompts)
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        _check_sampling(max_new_tokens, temperature, top_k, top_p, stop, num_candidates)
        if slots is not None and (not isinstance(slots, int) or isinstance(slots, bool) or slots < 1):
            raise ValueError(f"slots must be None or an integer >= 1, got {slots!r}")
        encoded = self._encode(prompts, [max_new_tokens] * len(prompts), "new tokens (max_new_tokens)")
        seeds = _prompt_seeds(seed, len(prompts))
        # One random stream per (prompt, candidate): a row's tokens depend on its own seed only,
        # never on which other prompts share the batch (what per-prompt seeds in bulk jobs rely on).
        uniforms = torch.from_numpy(
            np.stack(
                [np.random.default_rng([s, c + 1]).random(max_new_tokens) for s in seeds for c in range(num_candidates)]
            )
        ).to(self.device)
        rows = np.repeat(np.arange(len(prompts)), num_candidates)
        tokens, lengths, stopped, (logprob, log_norm, proposal) = self._decode(
            encoded, rows, max_new_tokens, temperature, top_k, top_p, uniforms, stop, ignore_eos, slots
        )
        out = []
        for r in range(len(rows)):
            ids = tokens[r, : lengths[r]].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cut = [text.find(s) for s in stop if s in text]
            out.append(
                Generation(
                    text=text[: min(cut)] if cut else text,
                    token_ids=ids,
                    finish_reason="stop" if stopped[r] else "length",
                    logprob=float(logprob[r]),
                    log_normalizer=float(log_norm[r]),
                    num_tokens=len(ids),
                    proposal_logprob=float(proposal[r]),
                )
            )
        return [out[i : i + num_candidates] for i in range(0, len(out), num_candidates)]

    def _decode(
        self, encoded, rows, max_new, temperature, top_k, top_p, uniforms, stop, ignore_eos, slots=None, first=0
    ):
        """The token loop; returns tokens, lengths, stopped, (logprob, log z, log q), one column per row
        (``first``: the call's number of the first row, for messages).

        At most ``slots`` rows decode at once (all by default); with fewer, a finished row's slot takes the
        next row (slot refill), so short answers do not leave the batch half empty. Where a group cannot
        refill (`KVGroup.refill_blocker`), the rows decode in consecutive chunks of ``slots`` instead, the
        reason logged once: the same rows, as every row has its own stream. Everything per token
        stays on the device: the tokens, each row's per-token scores and which rows are done (a row's
        writes after it is done go to a scratch column n). Every SYNC_EVERY steps the host looks: it ends
        rows at stop strings (exactly at the token that completed one), refuses non-finite scores naming
        the prompt and the token, refills free slots, drops done rows from the caches once they are a
        quarter of them and nothing is left to refill, and stops when every row is done."""
        n, dev = len(rows), self.device
        blocked = [why for g in self._groups() if (why := g.refill_blocker())] if (slots or n) < n else []
        if blocked:
            _log_chunks(blocked[0])
            settings = (max_new, temperature, top_k, top_p)
            parts = [
                self._decode(
                    encoded, rows[i : i + slots], *settings, uniforms[i : i + slots], stop, ignore_eos, None, first + i
                )
                for i in range(0, n, slots)
            ]
            tokens, length, stopped, scores = zip(*parts)
            return torch.cat(tokens), torch.cat(length), torch.cat(stopped), torch.cat(scores, 1)
        pad = self.policies[0].pad_token_id
        tokens = torch.full((n + 1, max_new), pad, dtype=torch.long, device=dev)
        steps = torch.zeros((max_new, 3, n + 1), dtype=torch.float64, device=dev)
        length = torch.full((n + 1,), max_new, dtype=torch.long, device=dev)  # tokens of a row that stopped
        stopped = torch.zeros(n + 1, dtype=torch.bool, device=dev)
        drawn = torch.zeros(n + 1, dtype=torch.long, device=dev)  # tokens each row has drawn
        eos = torch.tensor(self.eos_token_ids, device=dev)
        uniforms = torch.cat([uniforms.to(dev), uniforms.new_zeros((1, max_new)).to(dev)])
        width = [max(len(p[r]) for p in ids for r in rows) for ids in encoded]  # a group's longest prompt
        held = torch.arange(min(slots or n, n), device=dev)  # the row each slot holds
        nxt, looked, step_no = len(held), np.zeros(n, dtype=np.int64), 0
        groups = self._groups()
        with ExitStack() as stack:  # adapter activations last for the whole decode
            refilling = nxt < n
            room = (max_new + SYNC_EVERY + max(width)) if refilling else 0  # what refill and rebasing need
            logits = [g.prefill(ids, rows[:nxt], max_new, stack, w, room) for g, ids, w in zip(groups, encoded, width)]
            while True:
                s = self._mix(groups, logits)
                log_z = torch.logsumexp(s, dim=-1)
                t = drawn[held]
                live = ~(stopped[held] | (t >= max_new))
                target, t = torch.where(live, held, n), t.clamp(max=max_new - 1)  # done rows write to column n
                tok, log_q = _choose(s, temperature, top_k, top_p, uniforms[target, t])
                steps[t, :, target] = (
                    torch.stack([s.gather(-1, tok[:, None]).squeeze(1) - log_z, log_z, log_q]).double().T
                )
                tokens[target, t] = tok
                drawn[target] += 1
                if not ignore_eos:
                    ended = live & torch.isin(tok, eos)
                    length[target] = torch.where(ended, t + 1, length[target])
                    stopped[target] = stopped[target] | ended
                step_no += 1
                if step_no % SYNC_EVERY and step_no != max_new:
                    logits = [g.step(tok) for g in groups]
                    continue
                reached = drawn[:n].cpu().numpy().copy()  # a copy: on the CPU .cpu() is the tensor itself
                self._look(tokens, steps, length, stopped, rows, looked, reached, stop, first)
                looked = reached
                done = (stopped[:n] | (drawn[:n] >= max_new)).cpu()
                if nxt == n and bool(done.all()):
                    break
                free = done[held.cpu()].nonzero().squeeze(1)
                if nxt == n and 4 * len(free) >= len(held):  # nothing left to refill: drop the done rows
                    keep = (~done[held.cpu()]).nonzero().squeeze(1).to(dev)
                    held, tok = held[keep], tok[keep]
                    for g in groups:
                        g.keep(keep)
                for g in groups if refilling else []:  # to the end: the rows refilled last still write
                    g.rebase(SYNC_EVERY + 1)
                logits = [g.step(tok) for g in groups]
                if nxt < n and len(free):
                    free = free[: n - nxt].to(dev)
                    new = np.arange(nxt, nxt + len(free))
                    for k, (g, ids) in enumerate(zip(groups, encoded)):
                        per_policy = len(held)
                        dest = torch.cat([free + j * per_policy for j in range(len(g.policies))])
                        logits[k][dest] = g.refill(free, ids, rows[new])
                    held[free] = torch.as_tensor(new, device=dev)
                    nxt += len(free)
        return tokens[:n].cpu(), length[:n].cpu(), stopped[:n].cpu(), steps[:, :, :n].sum(0).cpu()

    def _look(
        self, tokens, steps, length, stopped, rows, looked: np.ndarray, reached: np.ndarray, stop: list[str], first: int
    ) -> None:
        """The host's look at each row's tokens [looked, reached): stop strings end rows, non-finite scores
        are refused."""
        if stop:
            window = max(len(x.encode()) for x in stop) + 1  # every token holds >= 1 byte
            host_tokens, host_length = tokens[:-1, : int(reached.max())].cpu(), length[:-1].cpu().numpy().copy()
            for t in range(int(looked.min()), int(reached.max())):
                candidates = np.flatnonzero((looked <= t) & (t < reached) & (host_length > t))  # rows that drew token t
                if not len(candidates):
                    continue
                tails = self.tokenizer.batch_decode(host_tokens[candidates, max(0, t + 1 - window) : t + 1])
                hit = candidates[[any(x in tail for x in stop) for tail in tails]]
                if len(hit):
                    host_length[hit] = t + 1
                    cut = torch.as_tensor(hit, device=tokens.device)
                    length[cut] = t + 1
                    stopped[cut] = True
                    tokens[cut, t + 1 :] = self.policies[0].pad_token_id
                    steps[t + 1 :, :, cut] = 0.0
        bad = ~torch.isfinite(steps[:, :, :-1]).all(1)  # [token, row]
        if bool(bad.any()):
            t = int(bad.any(1).nonzero()[0, 0])
            row_ids = first + np.arange(len(rows))
            self._check_finite_rows(steps[t, :, :-1].cpu(), _SCORES, row_ids, rows, f"at new token {t}")

    def _check_finite_rows(self, values: torch.Tensor, names, row_ids, prompt_ids, where: str) -> None:
        """values [len(names), R], one column per row (row_ids[j] of the call, of prompt prompt_ids[j]): raise
        naming the first non-finite row's prompt."""
        bad = (~torch.isfinite(values)).any(0).nonzero()
        if len(bad):
            j = int(bad[0, 0])
            prompt, row = int(prompt_ids[j]), int(row_ids[j])
            got = ", ".join(f"{n} {float(v)}" for n, v in zip(names, values[:, j]))
            raise ValueError(
                f"the mixture {self!r} gives prompt {prompt} (row {row}) a non-finite score {where} "
                f"({got}); refusing to return it. "
                "Typical causes: a negative weight on a policy that gives some token log-prob -inf, a token "
                "that a positively weighted policy forbids (log-prob -inf), or a model returning NaN logits."
            )

    @torch.no_grad()
    def sequence_logprob(self, prompts, response_token_ids, *, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Teacher-forced (logprob, log_normalizer) of given responses, as in Generation."""
        prompts = check_prompts(prompts)
        responses = check_responses(response_token_ids, len(prompts), len(self.tokenizer))
        encoded = self._encode(prompts, [len(r) for r in responses], "response tokens")
        logprob, log_norm = np.zeros(len(prompts)), np.zeros(len(prompts))
        for idx in length_sorted_batches([len(r) for r in responses], batch_size):
            batch = [responses[i] for i in idx]
            if not any(batch):
                continue
            terms = []
            for g, ids in zip(self._groups(), encoded):
                lp = response_logprobs(g.policies, [[p[i] for i in idx] for p in ids], batch).to(self.device)
                terms.append(torch.einsum("g,gbrv->brv", g.weights.to(self.device), lp))
            width = min(t.shape[-1] for t in terms)
            s = sum(t[..., :width] for t in terms)
            log_z = torch.logsumexp(s, dim=-1)
            targets, valid = right_aligned_targets(batch, self.device)
            token_lp = s.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
            lp_sum = torch.where(valid, token_lp, 0.0).sum(-1).double().cpu()
            ln_sum = torch.where(valid, log_z, 0.0).sum(-1).double().cpu()
            self._check_finite_rows(
                torch.stack([lp_sum, ln_sum]), _SCORES[:2], idx, idx, "teacher-forcing its response"
            )
            logprob[idx], log_norm[idx] = lp_sum.numpy(), ln_sum.numpy()
        return logprob, log_norm


def _check_sampling(max_new_tokens, temperature, top_k, top_p, stop, num_candidates) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    if not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates must be an integer >= 1, got {num_candidates!r}")
    if num_candidates > 1 and temperature == 0:
        raise ValueError("num_candidates > 1 needs sampling: greedy candidates are identical; set temperature > 0")


def _prompt_seeds(seed, n: int) -> list[int]:
    """None → fresh entropy; an int → one seed per prompt derived from it; a list → one per prompt, as given."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        return [int(x) for x in np.random.SeedSequence(int(seed)).generate_state(n, dtype=np.uint64) >> np.uint64(1)]
    seeds = list(seed)
    if len(seeds) != n or not all(
        isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0 for x in seeds
    ):
        raise ValueError(f"seed must be an int or a list of {n} non-negative ints (one per prompt), got {seed!r:.80}.")
    return [int(x) for x in seeds]


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Row-wise categorical draw from probs [R, V] with given uniforms u [R] (exact inverse-CDF sampling)."""
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None], right=True).squeeze(
        1
    )  # never a 0-prob token
    return idx.clamp_(max=probs.shape[-1] - 1)


def _choose(s: torch.Tensor, temperature, top_k, top_p, u) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row from mixed scores s [R, V] and one uniform per row, and its log-prob under the sampler."""
    if temperature == 0:
        return s.argmax(-1), torch.zeros(len(s), device=s.device)
    z = s / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, -1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        z = z.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    log_q = torch.log_softmax(z, dim=-1)
    tok = _inverse_cdf(log_q.exp(), u)
    return tok, log_q.gather(-1, tok[:, None]).squeeze(1)
