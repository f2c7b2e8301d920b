"""Batches of prompt rows → generation rows, with all K policies in one process (no Ray here).

A batch is one `MixedPolicy.generate` call. Rows that cannot be generated (not
text, empty, too long for a policy's context) become rows with an ``error``,
never a failed batch: should the call still raise ValueError, the batch is
redone row by row so a bad prompt costs its own row only. Per-row seeds make
both paths give the same texts. `generate`'s Ray Data stage and `sweep`'s
actor both wrap a `BatchGenerator`.

With ``slots``, at most that many prompts (times their candidates) decode at
once and a finished row's slot takes the next prompt of the batch (slot
refill), so a batch of several decode batches' worth of prompts keeps the
device busy until its last wave; the rows are the same whatever the slots.
"""

from __future__ import annotations

import pyarrow as pa

from mpo_ray.io.schemas import generation_table
from mpo_ray.models.scoring import context_errors

# Prompts per call in decode batches (slots) when slots refill: the queue that keeps every slot busy until the
# call's last wave, whose tail is then a quarter of the call, not all of it.
QUEUED_BATCHES = 4


def refill_plan(batch_size: int, on_accelerator: bool) -> tuple[int, int | None]:
    """(prompts per call, slots): refill on an accelerator, where a finished row's slot should take the next
    prompt; fixed batches on a CPU, where a decode step costs about as much for 4 rows as for 16 and refill
    measured 0.92–0.96× of fixed chunks (`bench decode --refill`, docs/design.md §5). Rows are the same either
    way."""
    return (batch_size * QUEUED_BATCHES, batch_size) if on_accelerator else (batch_size, None)


class BatchGenerator:
    """Loaded policies (a shared base once, adapters side by side), generating under any weights over them."""

    def __init__(self, specs: list, threads: int | None = None):
        import torch

        from mpo_ray.models.policies import load_policies

        if threads:
            torch.set_num_threads(threads)
        n = torch.cuda.device_count()
        if n > 1:  # several GPUs for this process: one model (a base with its adapters) per GPU, round-robin
            models = list(dict.fromkeys((s.model, s.revision) for s in specs))
            specs = [
                s if s.device else s.model_copy(update={"device": f"cuda:{models.index((s.model, s.revision)) % n}"})
                for s in specs
            ]
        self.policies = load_policies(specs)
        self.on_accelerator = self.policies[0].device.type != "cpu"
        self._mixed = {}

    def mixture(self, weights: list[float]):
        from mpo_ray.models.decoding import MixedPolicy

        key = tuple(float(w) for w in weights)
        if key not in self._mixed:
            self._mixed[key] = MixedPolicy(self.policies, list(key))
        return self._mixed[key]

    def rows(
        self,
        ids: list[str],
        prompts: list[str],
        seeds: list[int],
        weights: list[float],
        params: dict,
        version: str,
        errors: list[str | None] | None = None,
        *,
        score: tuple[str, ...] = (),
        slots: int | None = None,
    ) -> pa.Table:
        """One generation row per prompt (GENERATION_SCHEMA); ``errors`` marks rows already known to be bad.
        ``score`` names loaded models whose log π(y|x) of each response is added (``logp_<name>`` columns):
        with ``sample_logprob`` they measure MPO's own objective (`core.yardstick`). ``slots``: prompts
        decoding at once (None: all of them)."""
        unknown = sorted(set(score) - {p.name for p in self.policies})
        if unknown:  # before any decoding, not after it
            raise ValueError(f"cannot score with {unknown}: this generator holds {[p.name for p in self.policies]}")
        mixed = self.mixture(weights)
        errors = list(errors) if errors is not None else [None] * len(ids)
        ok = [i for i, e in enumerate(errors) if e is None]
        active = [p for p, w in zip(self.policies, weights) if w != 0]
        for i, e in zip(ok, context_errors(active, [prompts[i] for i in ok], params["max_new_tokens"], "new tokens")):
            errors[i] = e
        ok = [i for i in ok if errors[i] is None]
        gens = {}
        if ok:
            at_once = slots * params.get("num_candidates", 1) if slots else None  # candidates decode as rows
            try:
                gens = dict(
                    zip(
                        ok,
                        mixed.generate([prompts[i] for i in ok], seed=[seeds[i] for i in ok], slots=at_once, **params),
                    )
                )
            except ValueError:
                for i in ok:
                    try:
                        [gens[i]] = mixed.generate([prompts[i]], seed=[seeds[i]], **params)
                    except ValueError as exc:
                        errors[i] = str(exc)
        logprobs = self.score(score, prompts, gens, len(ids)) if score else None
        return generation_table(
            ids,
            prompts,
            [gens.get(i) for i in range(len(ids))],
            seeds,
            version,
            errors,
            resampled=params.get("num_candidates", 1) > 1,
            logprobs=logprobs,
        )

    def score(self, names, prompts: list[str], gens: dict, n: int) -> dict[str, list]:
        """model name → teacher-forced log π(y|x) of the generated token ids (None where a row has none)."""
        from mpo_ray.models.scoring import score_sequences

        by_name = {p.name: p for p in self.policies}
        done = sorted(gens)
        out = {}
        for policy in (by_name[m] for m in names):
            values = (
                score_sequences(policy, [prompts[i] for i in done], [gens[i].token_ids for i in done]) if done else []
            )
            column = [None] * n
            for i, v in zip(done, values):
                column[i] = float(v)
            out[policy.name] = column
        return out


class GenerationWorker:
    """A Ray Data stage (a callable class, one per replica): fixed weights, batches in, rows out; ``slots``
    prompts of a batch decode at once (None: the whole batch)."""

    def __init__(
        self,
        specs: list,
        weights: list[float],
        params: dict,
        weights_version: str,
        threads: int,
        slots: int | None = None,
    ):
        self.generator = BatchGenerator(specs, threads)
        self.weights, self.params, self.version, self.slots = weights, params, weights_version, slots

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.generator.rows(
            batch["prompt_id"].to_pylist(),
            batch["prompt"].to_pylist(),
            batch["seed"].to_pylist(),
            self.weights,
            self.params,
            self.version,
            batch["error"].to_pylist(),
            slots=self.slots,
        )
