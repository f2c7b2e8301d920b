"""The score pipeline: prompts → samples → every model's score → atomic Parquet batches → streaming steps.

    for each batch (rows already stored or cached are read, not recomputed):
        sample m responses per prompt (from π_ref; or from π_ref and every policy: the mixture proposal; and, for
            the geometric proposal, from the served mixture at the λ solved on the batches before)
        every policy, the reference and each reward source score them, in parallel (one worker group each)
        write the batch's rows as one atomic Parquet file
        one streaming-BSMD step per prompt (the paper's way), when asked
    → the score table (docs/design.md §4), timings and where the actors ran

`reweight` and `nightly` both check their inputs with `prepare_scoring` and run
it inside one `ModelGroups`; they differ only in where batches live (a run's
scores/ directory, or the store's score cache) and what they do with the table.
Seeds derive from (seed, prompt id, sample index), never from order, so a
resumed run reproduces the rows it lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from mpo_ray import __version__
from mpo_ray.config import Config, SamplingConfig, ScoringSection
from mpo_ray.core.estimator import log_mixture, proposal_counts, score_arrays
from mpo_ray.core.seeds import derive_seed
from mpo_ray.core.solver import solve_weights
from mpo_ray.core.streaming import StreamingBSMD
from mpo_ray.io import storage
from mpo_ray.io.corpus import read_prompts
from mpo_ray.io.provenance import digest, model_identity
from mpo_ray.io.schemas import score_table_schema
from mpo_ray.models.policies import local_files
from mpo_ray.models.preflight import check_models, check_prompt_lengths
from mpo_ray.runtime.actors import MIXTURE_SAMPLER, gather_arrays, gather_samples
from mpo_ray.runtime.groups import ModelGroups

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Timings:
    sampling: float = 0.0
    scoring: float = 0.0
    solver: float = 0.0
    io: float = 0.0
    startup: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in dataclasses.asdict(self).items()}

    @contextlib.contextmanager
    def stage(self, name: str):
        """Add the time the block takes to stage ``name`` (sampling, scoring, solver, io)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)


@dataclasses.dataclass
class Batch:
    """Prompts whose rows live in one file. ``rows`` given: already scored (cached), nothing to compute."""

    uri: str
    ids: list[str]
    prompts: list[str]
    stored: bool = False  # the file exists: reuse it if it reads back intact (a resumed run)
    rows: pa.Table | None = None


@dataclasses.dataclass
class ScoreRun:
    table: pa.Table
    timings: Timings
    placement: dict  # group name → where each replica ran (empty when every row was stored)


@dataclasses.dataclass(frozen=True)
class ScoringInputs:
    """A scoring run's checked prompts, and the fingerprint of everything else its rows depend on."""

    prompts_uri: str
    ids: list[str]
    prompts: list[str]
    fingerprint: str


def prepare_scoring(config: Config, section: ScoringSection, prompts_uri: str | None = None) -> ScoringInputs:
    """What `reweight` and `nightly` check before any actor starts: read the prompts (from ``prompts_uri``, default
    the section's), load every tokenizer and check models, adapters, reward functions and prompt lengths, and
    fingerprint the rows. UserError on anything wrong."""
    uri = prompts_uri or section.prompts
    ids, prompts = read_prompts(
        uri, prompt_column=section.prompt_column, id_column=section.id_column, limit=section.max_prompts
    )
    check_prompt_lengths(check_models(config), ids, prompts, section.sampling.max_new_tokens, uri)
    return ScoringInputs(uri, ids, prompts, score_fingerprint(config, section.sampling, section.seed))


def model_identities(config: Config) -> list[dict]:
    """The reference's and each policy's identity, their files' contents included (a retrained policy is a new one)."""
    return [model_identity(s, local_files) for s in (config.reference, *config.policies)]


def score_fingerprint(config: Config, sampling: SamplingConfig, seed: int) -> str:
    """Everything a score row depends on besides its prompt: models (by content), sampling, seed, reward sources."""
    return digest(
        {
            "sampling": sampling.fingerprint(),
            "seed": seed,
            "models": model_identities(config),
            "rewards": [r.model_dump() for r in config.rewards],
        },
        12,
    )


def plan_batches(
    directory: str,
    ids: list[str],
    prompts: list[str],
    size: int,
    fingerprint: str,
    *,
    prefix: str = "part",
    stored: set[str] = frozenset(),
) -> list[Batch]:
    """Batches of ``size`` prompts; a file name carries its prompt ids' and settings' digest, so it is reused
    only for them."""
    batches = []
    for start in range(0, len(ids), size):
        part = ids[start : start + size]
        texts = prompts[start : start + size]  # ids and texts: an edited prompt is a new batch, never a stale one
        name = f"{prefix}-{len(batches):05d}-{digest([part, texts, fingerprint], 12)}.parquet"
        uri = storage.join(directory, name)
        batches.append(Batch(uri, part, texts, stored=uri in stored))
    return batches


def _batch_rows(b: Batch) -> pa.Table:
    """A stored batch's rows, trusted only if they read back as written and hold exactly its prompts and texts."""
    rows = storage.read_parquet(b.uri, verify=True)
    held = set(zip(rows.column("prompt_id").to_pylist(), rows.column("prompt").to_pylist()))
    if held != set(zip(b.ids, b.prompts)):
        raise storage.CorruptFile(f"{b.uri} holds the rows of other prompts than the batch of that name.")
    return rows


def run_pipeline(
    models: ModelGroups,
    section: ScoringSection,
    batches: list[Batch],
    *,
    metadata: dict,
    stream: StreamingBSMD | None = None,
    progress: bool = True,
) -> ScoreRun:
    """Score every batch not yet scored with ``models`` (started only if a batch needs them); returns the whole
    table (batches in order, cast to one schema).

    With the `geometric` proposal the batches are rounds: batch b samples the token-level mixture at the λ
    solved on batches < b (`proposal_weights`), so a resumed run, which reads those batches back, draws at the
    same λ. A stored batch drawn at another λ (an earlier batch's prompts changed since) is drawn again.
    """
    from tqdm.auto import tqdm

    config, sampling = models.config, section.sampling
    schema = score_table_schema(config.policy_names, [r.name for r in config.rewards])
    timings, tables = Timings(), []
    geometric = sampling.proposal == "geometric"
    with timings.stage("io"):
        for b in batches:  # stored rows are reused only if they read back exactly as written
            if b.rows is None and b.stored:
                try:
                    b.rows = _batch_rows(b)
                except storage.CorruptFile as exc:
                    log.warning("%s Scoring that batch again.", exc)
                    b.stored = False
    if any(b.rows is None for b in batches):
        models.start()
    bar = tqdm(batches, desc="score", unit="batch", disable=not progress or not batches)
    for b in bar:
        weights = None
        if geometric and tables:
            with timings.stage("solver"):
                weights = proposal_weights(pa.concat_tables(tables), config.policy_names)
        if geometric and b.stored and b.rows is not None and not _drawn_at(b.rows, weights):
            log.warning(
                "%s was drawn at another λ than the batches before it now solve to (%s); drawing it again.",
                b.uri,
                weights,
            )
            b.rows, b.stored = None, False
        table = b.rows
        if table is None:
            table = _score_batch(models.start(), b, sampling, section.seed, schema, timings, weights)
            meta = {**metadata, "version": __version__, "batch": b.uri.rsplit("/", 1)[-1]}
            if geometric:
                meta["geometric_weights"] = weights
            with timings.stage("io"):
                storage.write_parquet(b.uri, table.replace_schema_metadata({"mpo_ray": json.dumps(meta)}))
        tables.append(table.replace_schema_metadata(None).cast(schema))
        if stream is not None:
            with timings.stage("solver"):
                arrays = score_arrays(table, config.policy_names)
                stream.update(arrays.log_ratios, mask=arrays.mask, log_importance=arrays.log_importance)
            bar.set_postfix_str(f"λ={np.round(stream.average, 3).tolist()}")
    timings.startup = models.startup_s
    return ScoreRun(pa.concat_tables(tables) if tables else schema.empty_table(), timings, models.placement)


def proposal_weights(table: pa.Table, policy_names: list[str]) -> list[float]:
    """The λ the `geometric` proposal samples next: the full solve of the implicit estimate over ``table``
    (deterministic, so rows read back give the λ they were drawn with)."""
    arrays = score_arrays(table, policy_names)
    return solve_weights(arrays.log_ratios, mask=arrays.mask, log_importance=arrays.log_importance).weights.tolist()


def _drawn_at(rows: pa.Table, weights: list[float] | None) -> bool:
    """Whether a stored batch was drawn at ``weights`` (None: from no mixture at λ, as batch 0)."""
    meta = json.loads((rows.schema.metadata or {}).get(b"mpo_ray", b"{}"))
    drawn = meta.get("geometric_weights")
    if drawn is None or weights is None:
        return drawn is None and weights is None
    return len(drawn) == len(weights) and np.allclose(drawn, weights, rtol=0.0, atol=1e-6)


def _score_batch(
    models: ModelGroups,
    batch: Batch,
    sampling: SamplingConfig,
    seed: int,
    schema: pa.Schema,
    timings: Timings,
    weights: list[float] | None = None,
) -> pa.Table:
    """Sample, then score with every model and reward source; rows prompt-major, samples in order."""
    config = models.config
    rows, parts = _sample(models, batch, sampling, seed, timings, weights)
    with timings.stage("scoring"):  # everything in flight at once: rewards, the mixture, then each model's log-probs
        reward_refs = {n: g.submit("score", rows["prompt"], rows["response"]) for n, g in models.rewards.items()}
        mixture_ref = (
            None
            if weights is None
            else models.models[MIXTURE_SAMPLER].submit(
                "score", rows["prompt"], rows["response_token_ids"], weights=weights
            )
        )  # π̃_λ of every row: balance heuristic
        logp = models.log_probs(rows["prompt"], rows["response_token_ids"])
        if mixture_ref is not None:
            logp[MIXTURE_SAMPLER] = gather_arrays(mixture_ref)
        reward = {n: gather_arrays(r) for n, r in reward_refs.items()}

    if sampling.proposal in ("mixture", "geometric"):
        logq = log_mixture(np.stack([logp[n] for n, _ in parts], axis=1), [c for _, c in parts])
    elif sampling.temperature == 1.0 and not sampling.top_k and not sampling.top_p:
        logq = logp[config.reference.name]  # the proposal is π_ref itself: importance weights are exactly 1
    else:
        logq = np.asarray(rows["sampler_logq"], dtype=np.float64)
    columns = {
        "prompt_id": rows["prompt_id"],
        "sample_idx": rows["sample_idx"],
        "prompt": rows["prompt"],
        "response": rows["response"],
        "response_token_ids": rows["response_token_ids"],
        "sampler": rows["sampler"],
        "logp_ref": logp[config.reference.name],
        "logp_proposal": logq,
        **{f"logp_{n}": logp[n] for n in config.policy_names},
        **{f"reward_{n}": reward[n] for n in reward},
    }
    position = {pid: i for i, pid in enumerate(batch.ids)}
    order = np.lexsort((np.asarray(rows["sample_idx"]), np.array([position[p] for p in rows["prompt_id"]])))
    return pa.table(columns, schema=schema).take(pa.array(order))


def _sample(
    models: ModelGroups,
    batch: Batch,
    sampling: SamplingConfig,
    seed: int,
    timings: Timings,
    weights: list[float] | None = None,
):
    """m responses per prompt, split over the samplers: π_ref; and each policy (mixture proposal); and, given
    ``weights``, the token-level mixture at them (geometric proposal). Returns the rows and (sampler, count) pairs."""
    config, m = models.config, sampling.samples_per_prompt
    if sampling.proposal == "reference":
        parts = [(config.reference.name, m)]
    else:
        counts = proposal_counts(m, len(config.policies), sampling.geometric_share if weights is not None else None)
        parts = [(n, c) for n, c in zip([config.reference.name, *config.policy_names, MIXTURE_SAMPLER], counts) if c]
    rows, refs, offset = defaultdict(list), [], 0
    for name, n in parts:
        r_ids = [pid for pid in batch.ids for _ in range(n)]
        r_idx = [offset + j for _ in batch.ids for j in range(n)]
        r_prompts = [p for p in batch.prompts for _ in range(n)]
        seeds = [derive_seed(seed, pid, j) for pid, j in zip(r_ids, r_idx)]
        at = {"weights": weights} if name == MIXTURE_SAMPLER else {}
        refs.append(
            (
                name,
                r_ids,
                r_idx,
                r_prompts,
                models.models[name].submit("sample", r_prompts, seeds, params=sampling.params(), **at),
            )
        )
        offset += n
    with timings.stage("sampling"):
        for name, r_ids, r_idx, r_prompts, part_refs in refs:
            out = gather_samples(part_refs)
            rows["prompt_id"] += r_ids
            rows["sample_idx"] += r_idx
            rows["prompt"] += r_prompts
            rows["sampler"] += [name] * len(r_ids)
            rows["response_token_ids"] += out["token_ids"]
            rows["response"] += out["text"]
            rows["sampler_logq"] += list(out["logp_proposal"])
    return rows, parts


def reward_columns_by_objective(config: Config) -> list[str]:
    """reward_<name> columns ordered like the policies (only when every policy has one)."""
    by_objective = {r.objective: r.name for r in config.rewards if r.objective}
    if all(p in by_objective for p in config.policy_names):
        return [f"reward_{by_objective[p]}" for p in config.policy_names]
    return []
