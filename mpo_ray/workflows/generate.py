"""Bulk generation: a prompt corpus → Ray Data → the mixed policy → Parquet (docs/design.md §3).

    read the corpus (`io.tables`: Parquet / JSONL / JSON array / CSV / a saved `datasets` dir; any fsspec URL)
    → give each row an id and a seed derived from it; drop the ids the output already holds (with the same text)
    → map_batches through GenerationWorker replicas (all K policies inside one actor)
    → write_parquet into <output>/__mpo_ray__/staging/<attempt>/ → promote complete files into <output>/

<output>/*.parquet holds one row per prompt (GENERATION_SCHEMA); <output>/__mpo_ray__/ holds
owner.json (this output is generate's), manifest.json (the settings and their fingerprint: models by
content, λ, decoding), summary.json (with the replicas' `Placement`) and staging/.

Staging, promotion and resume (which files count, which are rewritten or removed) are `io.staging`'s. Seeds
derive from (seed, prompt id) and a MixedPolicy row depends on its own seed only, so the output does not
depend on how the corpus is split into blocks, batches or replicas.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import time
import uuid

import pyarrow as pa

from mpo_ray import __version__
from mpo_ray.config import Config
from mpo_ray.core.errors import UserError
from mpo_ray.core.seeds import derive_seed, row_id
from mpo_ray.core.serving import serving
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsRecord
from mpo_ray.io.corpus import check_unique_ids, corpus_format
from mpo_ray.io.ownership import META_DIR, check_ours, mark_ours
from mpo_ray.io.provenance import digest
from mpo_ray.io.staging import drop_stale, file_stats, promote, staging_dir, written_rows
from mpo_ray.models.generator import GenerationWorker, refill_plan
from mpo_ray.models.preflight import check_models
from mpo_ray.runtime import data
from mpo_ray.runtime.resources import Placement, replica_placement
from mpo_ray.runtime.session import ray_session
from mpo_ray.workflows.pipeline import model_identities

log = logging.getLogger(__name__)

_PREPARED = pa.schema(
    [("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()), ("error", pa.string())]
)


# --- Before Ray starts: weights, models, corpus location, output -----------


def resolve_weights(config: Config) -> tuple[list[float], str]:
    """(λ in policy order, weights_version) from `generate.weights_uri` (an artifact, run directory, store or pinned
    version) or the config's explicit `generate.weights`."""
    g, names = config.section("generate"), config.policy_names
    if g.weights_uri is not None:
        artifact = WeightsRecord.read(g.weights_uri)
        return artifact.weights_for(names, config.source), artifact.version
    if g.weights is None:
        raise UserError(
            f"{config.source}: no mixing weights; set `generate.weights_uri` (the weights.json of "
            "`mpo-ray reweight`), `generate.weights`, or pass --weights URI."
        )
    weights = [float(g.weights[n]) for n in names] if isinstance(g.weights, dict) else [float(w) for w in g.weights]
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise UserError(
            f"{config.source}: `generate.weights` must be finite, non-negative and not all zero, got {weights}."
        )
    return weights, f"explicit:{digest(dict(zip(names, weights)), 8)}"


def check_output(config: Config, weights: list[float], version: str) -> tuple[str, dict]:
    """(fingerprint, settings) of the rows: everything a row depends on besides its prompt, the models' file
    contents included (an adapter retrained in place is a new model); UserError when the output holds rows
    made with other settings."""
    g, output = config.generate, config.generate.output
    keys = ("prompt_column", "id_column", "max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed")
    settings = {
        "policies": [p.model_dump() for p in config.policies],
        "weights": weights,
        "models": [m["content"] for m in model_identities(config)[1:]],
        "weights_version": version,
        **{k: getattr(g, k) for k in keys},
        "num_candidates": g.candidates,
    }
    ours = check_ours(output, "generate")
    storage.check_writable(output)
    fingerprint = digest(settings)
    manifest = storage.join(output, META_DIR, "manifest.json")
    if ours and storage.exists(manifest):
        previous = storage.read_json(manifest)
        if previous.get("fingerprint") != fingerprint:
            changed = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
            raise UserError(
                f"output {output!r} holds generations made with other settings (changed: {changed}); "
                "pass another --output, or delete it to start over."
            )
    return fingerprint, settings


# --- The row stage before the models -----------------------------------------


def prepare_rows(batch: dict, *, prompt_column: str, id_column: str, seed: int, done: frozenset) -> pa.Table:
    """Rows → (prompt_id, prompt, seed, error), dropping ids already written. A prompt that is not a
    non-empty string becomes an error row (its text as str), not a failed job."""
    prompts = list(batch[prompt_column])
    ids = list(batch[id_column]) if id_column in batch else [None] * len(prompts)
    out = {name: [] for name in _PREPARED.names}
    for value, raw_id in zip(prompts, ids):
        good = isinstance(value, str) and value.strip()
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        pid = row_id(raw_id, text)
        if pid in done:
            continue
        out["prompt_id"].append(pid)
        out["prompt"].append(text)
        out["seed"].append(derive_seed(seed, pid))
        out["error"].append(
            None if good else f"prompt must be a non-empty string, got {type(value).__name__} {value!r:.80}"
        )
    return pa.table(out, schema=_PREPARED)


# --- The workflow --------------------------------------------------------------


def generate(config: Config, *, progress: bool = True) -> dict:
    """Generate one response per corpus prompt into `generate.output`; returns the summary
    (also in __mpo_ray__/summary.json).

    Rerunning on the same output generates only the prompts it does not hold yet.
    """
    g = config.section("generate")
    output = g.output
    if not output:
        raise UserError(f"{config.source}: no output location; set `generate.output` or pass --output.")
    t_start = time.perf_counter()
    lam, version = resolve_weights(config)
    fmt = corpus_format(g.prompts)
    corpus = check_unique_ids(g.prompts, g.prompt_column, g.id_column)
    check_models(config, [p for p, w in zip(config.policies, lam) if w != 0], reference=False, rewards=False)
    fingerprint, settings = check_output(config, lam, version)
    rows = written_rows(output, fingerprint)
    recovered = promote(output, set(rows), fingerprint)  # complete files a stopped run left behind
    done = drop_stale(output, written_rows(output, fingerprint) if recovered else rows, corpus, fingerprint)
    skipped = len(done)

    attempt = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    plan, gen_s = None, 0.0
    try:
        with ray_session(log_to_driver=progress):
            data.configure(progress)
            todo = data.map_rows(
                data.read_corpus(g.prompts, fmt, g.prompt_column),
                prepare_rows,
                batch_size=g.batch_size,
                fn_kwargs={
                    "prompt_column": g.prompt_column,
                    "id_column": g.id_column,
                    "seed": g.seed,
                    "done": frozenset(done),
                },
            )
            pending = todo.count()  # one cheap pass: nothing to do means no replica starts
            if not pending and not done:
                raise UserError(
                    f"prompt corpus {g.prompts!r} is empty; it needs rows with a `{g.prompt_column}` column."
                )
            mark_ours(output, "generate")
            storage.write_json(
                storage.join(output, META_DIR, "manifest.json"),
                {
                    "fingerprint": fingerprint,
                    "settings": settings,
                    "serving": serving(g.candidates),
                    "library_version": __version__,
                },
            )
            log.info(
                "generate: %d prompts already in %s%s; %d to generate",
                len(done),
                output,
                f" ({len(recovered)} file(s) recovered)" if recovered else "",
                pending,
            )
            if pending:
                t0, plan = time.perf_counter(), replica_placement(g)
                _generate_rows(config, todo, lam, version, plan, staging_dir(output, attempt))
                gen_s = time.perf_counter() - t0
    finally:  # even after a failure: keep every complete file (`done` grows with what is promoted)
        promoted = promote(output, done, fingerprint)

    stats = file_stats(promoted)
    summary = {
        **stats,
        "skipped": skipped,
        "output_rows": len(done),
        "output": output,
        "weights_version": version,
        "serving": serving(g.candidates),
        "generation_s": round(gen_s, 3),  # replica start-up (model loading) included
        "tokens_per_s": round(stats["generated_tokens"] / gen_s, 2) if gen_s else 0.0,
        "rows_per_s": round(stats["rows"] / gen_s, 2) if gen_s else 0.0,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "placement": dataclasses.asdict(plan) if plan else None,  # replicas, GPUs, CPUs and threads each
        "attempt": attempt,
        "library_version": __version__,
    }
    storage.write_json(storage.join(output, META_DIR, "summary.json"), summary)
    log.info(
        "generate: %d rows (%d errors), %d tokens in %.1fs (%s tok/s, %s rows/s); wall %.1fs; %d rows in %s",
        stats["rows"],
        stats["errors"],
        stats["generated_tokens"],
        gen_s,
        summary["tokens_per_s"],
        summary["rows_per_s"],
        summary["wall_s"],
        summary["output_rows"],
        output,
    )
    return summary


def _generate_rows(config: Config, todo, lam: list[float], version: str, plan: Placement, staging: str) -> None:
    """The replicas: each hosts every policy and decodes its batches through the mixture into ``staging``."""
    g = config.section("generate")
    params = {**g.params(), "stop": list(g.stop), "num_candidates": g.candidates}
    batch_size, slots = refill_plan(g.batch_size, on_accelerator=plan.num_gpus > 0)
    worker = {
        "specs": list(config.policies),
        "weights": lam,
        "params": params,
        "weights_version": version,
        "threads": plan.threads,
        "slots": slots,
    }
    data.generate_parquet(
        todo, GenerationWorker, worker, plan, batch_size=batch_size, rows_per_file=g.rows_per_file, staging=staging
    )
