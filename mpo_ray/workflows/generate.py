"""Bulk generation: a prompt corpus → Ray Data → the mixed policy → Parquet (DESIGN.md §3 step 2).

    read the corpus (Parquet / JSONL / CSV / a saved `datasets` dir; any fsspec URL)
    → give each row an id and a seed derived from it; drop the ids the output already holds
    → map_batches through GenerationWorker replicas (all K policies inside one actor)
    → write_parquet into <output>/__mpo_ray__/staging/<attempt>/ → promote complete files into <output>/

<output>/*.parquet holds one row per prompt (GENERATION_SCHEMA); <output>/__mpo_ray__/ holds
manifest.json (the settings), summary.json and staging/. pyarrow, pandas and `datasets` all
skip a directory named `__…` (`datasets` does not skip a single leading `_`).

Why staging: Ray Data writes files in place, so a reader or a resumed run could meet a
half-written one. A Parquet file whose footer reads is complete: staged files are promoted
by rename once they read; truncated ones are deleted. A rerun promotes what a stopped run
left, reads the ids already written and generates only the rest; promotion drops ids
already present, so retried work never yields a second row. Seeds derive from (seed,
prompt id) and a MixedPolicy row depends on its own seed only, so the output does not
depend on how the corpus is split into blocks, batches or replicas.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mpo_ray import __version__
from mpo_ray.io import storage
from mpo_ray.config import Config
from mpo_ray.core.seeds import derive_seed, prompt_id
from mpo_ray.io.corpus import corpus_format
from mpo_ray.io.schemas import GENERATION_SCHEMA, check_weights_artifact
from mpo_ray.io.store import resolve_weights_file

META_DIR = "__mpo_ray__"
_PREPARED = pa.schema([("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()), ("error", pa.string())])


# --- Before Ray starts: weights, models, corpus location, output -----------


def resolve_weights(config: Config, weights_uri: str | None = None) -> tuple[list[float], str]:
    """(λ in policy order, weights_version) from a weights artifact or the config's explicit weights."""
    g, names = config.section("generate"), config.policy_names
    uri = weights_uri or g.weights_uri
    if uri is not None:
        uri = resolve_weights_file(uri)  # a weights store means its `latest`; a version directory its weights.json
        try:
            artifact = check_weights_artifact(storage.read_json(uri), uri)
        except FileNotFoundError:
            raise ValueError(f"weights artifact {uri!r} does not exist; run `mpo-ray reweight` first, or pass --weights URI.") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"weights artifact {uri!r} cannot be read ({type(exc).__name__}: {exc}).") from None
        if sorted(artifact["policies"]) != sorted(names):
            raise ValueError(f"weights artifact {uri!r} is for policies {artifact['policies']}, but {config.source} "
                             f"has {names}; use the artifact of this config's reweighting run.")
        by_name = dict(zip(artifact["policies"], artifact["weights"]))
        return [float(by_name[n]) for n in names], str(artifact["version"])
    if g.weights is None:
        raise ValueError(f"{config.source}: no mixing weights; set `generate.weights_uri` (the weights.json of "
                         "`mpo-ray reweight`), `generate.weights`, or pass --weights URI.")
    weights = [float(g.weights[n]) for n in names] if isinstance(g.weights, dict) else [float(w) for w in g.weights]
    if not all(math.isfinite(w) for w in weights) or not any(weights):
        raise ValueError(f"{config.source}: `generate.weights` must be finite and not all zero, got {weights}.")
    digest = hashlib.sha256(json.dumps(dict(zip(names, weights))).encode()).hexdigest()[:8]
    return weights, f"explicit:{digest}"


def check_vocabularies(config: Config, weights: list[float]) -> None:
    """Mixed policies must share one vocabulary: compare tokenizers here, not fail in every replica."""
    from mpo_ray.models.policies import tokenizer_vocabulary

    vocabs = {spec.name: tokenizer_vocabulary(spec, config.source)
              for spec, w in zip(config.policies, weights) if w != 0}
    if len({json.dumps(v, sort_keys=True) for v in vocabs.values()}) > 1:
        raise ValueError(f"{config.source}: policies {list(vocabs)} do not share one vocabulary; token-level mixing "
                         "needs policies fine-tuned from one base model.")


def _arrow_path(uri: str):
    """(path, pyarrow filesystem or None) for Ray Data, from any fsspec URL."""
    from fsspec.implementations.local import LocalFileSystem
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return (path, None) if isinstance(fs, LocalFileSystem) else (path, PyFileSystem(FSSpecHandler(fs)))


def check_corpus_location(uri: str) -> str:
    """The corpus format; ValueError when the URL cannot be reached or the file is empty."""
    try:
        fmt = corpus_format(uri)
        fs, path = storage.filesystem(uri)
        empty = fmt != "datasets" and not fs.isdir(path) and fs.size(path) == 0
    except ValueError:
        raise
    except Exception as exc:  # credentials, network, permissions
        raise ValueError(f"prompt corpus {uri!r} cannot be reached ({type(exc).__name__}: {str(exc)[:200]}); "
                         "check the URL and credentials.") from None
    if empty:
        raise ValueError(f"prompt corpus {uri!r} is an empty file; it needs rows with a prompt column.")
    return fmt


def check_output(config: Config, output: str, weights: list[float], version: str) -> tuple[str, dict]:
    """(fingerprint, settings) of the rows; ValueError when ``output`` holds rows made with other settings."""
    g = config.generate
    keys = ("prompt_column", "id_column", "max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed", "num_candidates")
    settings = {"policies": [dataclasses.asdict(p) for p in config.policies], "weights": weights,
                "weights_version": version, **{k: getattr(g, k) for k in keys}}
    storage.check_writable(output)
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    manifest = storage.join(output, META_DIR, "manifest.json")
    if storage.exists(manifest):
        previous = storage.read_json(manifest)
        if previous.get("fingerprint") != fingerprint:
            changed = sorted(k for k in settings if previous.get("settings", {}).get(k) != settings[k])
            raise ValueError(f"output {output!r} holds generations made with other settings (changed: {changed}); "
                             "pass another --output, or delete it to start over.")
    elif storage.list_files(output):
        raise ValueError(f"output {output!r} already holds Parquet files not written by `mpo-ray generate`; choose another --output.")
    return fingerprint, settings


# --- The Ray Data stages ---------------------------------------------------


def read_corpus(uri: str, fmt: str, prompt_column: str):
    """The corpus as a Ray Dataset; ValueError when it does not parse, is empty or lacks the prompt column."""
    import ray.data

    if fmt == "datasets":
        import datasets

        ds = datasets.load_from_disk(uri)
        ds = ray.data.from_huggingface(ds[next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds)
    else:
        path, fs = _arrow_path(uri)
        read = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv}.get(fmt)
        ds = read(path, filesystem=fs) if read else ray.data.read_json(path, lines=True, filesystem=fs)
    try:
        schema = ds.schema()  # one small read for text formats, the footer for Parquet
    except (ray.exceptions.RayError, pa.ArrowException, OSError) as exc:
        cause = str(getattr(exc, "cause", exc)).strip().splitlines()[-1][:300]
        raise ValueError(f"prompt corpus {uri!r} could not be read: {cause}") from None
    if schema is None:
        raise ValueError(f"prompt corpus {uri!r} is empty; it needs rows with a `{prompt_column}` column.")
    if prompt_column not in schema.names:
        raise ValueError(f"prompt corpus {uri!r} has no column {prompt_column!r}; its columns are {schema.names}. "
                         "Set `generate.prompt_column` in the config.")
    return ds


def prepare_rows(batch: dict, *, prompt_column: str, id_column: str, seed: int, done: frozenset) -> pa.Table:
    """Rows → (prompt_id, prompt, seed, error), dropping ids already written. A prompt that is not a
    non-empty string becomes an error row (its text as str), not a failed job."""
    prompts = list(batch[prompt_column])
    ids = list(batch[id_column]) if id_column in batch else [None] * len(prompts)
    out = {name: [] for name in _PREPARED.names}
    for value, raw_id in zip(prompts, ids):
        good = isinstance(value, str) and value.strip()
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        missing = raw_id is None or (isinstance(raw_id, float) and math.isnan(raw_id)) or not str(raw_id)
        pid = prompt_id(text) if missing else str(raw_id)
        if pid in done:
            continue
        out["prompt_id"].append(pid)
        out["prompt"].append(text)
        out["seed"].append(derive_seed(seed, pid))
        out["error"].append(None if good else f"prompt must be a non-empty string, got {type(value).__name__} {value!r:.80}")
    return pa.table(out, schema=_PREPARED)


class GenerationWorker:
    """One replica: a MixedPolicy with all K policies in this process (per-token traffic stays local).

    A batch is one generate call. Rows too long for the context are found first and written
    with their error; should the call still raise ValueError, the batch is redone row by row,
    so a bad prompt costs its own row only. Per-row seeds make both paths give the same texts.
    """

    def __init__(self, specs: list, weights: list[float], params: dict, weights_version: str, threads: int):
        import torch

        from mpo_ray.models.decoding import MixedPolicy
        from mpo_ray.models.policies import load_policies

        torch.set_num_threads(threads)
        n = torch.cuda.device_count()
        if n > 1:  # several GPUs for this replica: one model (a base with its adapters) per GPU, round-robin
            models = list(dict.fromkeys((s.model, s.revision) for s in specs))
            specs = [s if s.device else dataclasses.replace(s, device=f"cuda:{models.index((s.model, s.revision)) % n}")
                     for s in specs]
        self.mixed = MixedPolicy(load_policies(specs), weights)
        self.active = [p for p, w in zip(self.mixed.policies, weights) if w != 0]
        self.params, self.version = params, weights_version

    def _length_errors(self, prompts: list[str]) -> list[str | None]:
        errors = [None] * len(prompts)
        extra = self.params["max_new_tokens"]
        for p in self.active:
            limit = p.context_length
            for i, ids in enumerate(p.encode_prompts(prompts)):
                if errors[i] is None and limit is not None and len(ids) + extra > limit:
                    errors[i] = (f"prompt is {len(ids)} tokens once formatted for policy {p.name!r}; with max_new_tokens="
                                 f"{extra} that is over the model's context of {limit} tokens")
        return errors

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, prompts = batch["prompt_id"].to_pylist(), batch["prompt"].to_pylist()
        seeds, errors = batch["seed"].to_pylist(), batch["error"].to_pylist()
        ok = [i for i, e in enumerate(errors) if e is None]
        for i, e in zip(ok, self._length_errors([prompts[i] for i in ok])):
            errors[i] = e
        ok = [i for i in ok if errors[i] is None]
        gens = {}
        if ok:
            try:
                gens = dict(zip(ok, self.mixed.generate([prompts[i] for i in ok], seed=[seeds[i] for i in ok], **self.params)))
            except ValueError:
                for i in ok:
                    try:
                        [gens[i]] = self.mixed.generate([prompts[i]], seed=[seeds[i]], **self.params)
                    except ValueError as exc:
                        errors[i] = str(exc)
        g = [gens.get(i) for i in range(len(ids))]
        return pa.table({
            "prompt_id": ids, "prompt": prompts, "response": [x.text if x else "" for x in g],
            "finish_reason": [x.finish_reason if x else None for x in g],
            "num_tokens": [x.num_tokens if x else 0 for x in g],
            "log_normalizer": [x.log_normalizer if x else None for x in g],
            "weights_version": [self.version] * len(ids), "seed": seeds, "error": errors,
        }, schema=GENERATION_SCHEMA)


def plan_replicas(g) -> dict:
    """Replicas and their resources. GPUs: `gpus_per_replica` each (default 1; K puts each policy on
    its own GPU), one replica per group. CPU only: the CPUs less one (kept for Ray Data's read and
    write tasks), shared by the replicas. Torch threads = CPUs reserved: more oversubscribe the
    cores (on a busy 2-core machine the tiny models ran 7x slower at 2 threads than at 1)."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 1.0)
    num_gpus = g.gpus_per_replica if g.gpus_per_replica is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > gpus:
        raise ValueError(f"generate.gpus_per_replica={num_gpus:g} but the cluster has {gpus:g} GPUs; lower it or add GPU nodes.")
    concurrency = g.concurrency or (max(1, int(gpus // num_gpus)) if num_gpus else 1)
    if g.cpus_per_replica is not None:
        num_cpus = g.cpus_per_replica
    elif num_gpus:
        num_cpus = 1.0  # the GPU does the work; one core feeds it
    else:
        num_cpus = max(0.01, math.floor(100 * max(cpus - 1, cpus / 2) / concurrency) / 100)
    return {"concurrency": concurrency, "num_gpus": num_gpus, "num_cpus": num_cpus, "threads": max(1, int(num_cpus))}


# --- Files: what is written, promotion -------------------------------------


def _read(uris: list[str], columns: list[str]) -> pa.Table:
    def one(uri):
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns, schema=GENERATION_SCHEMA)

    return pa.concat_tables([one(u) for u in uris]) if uris else GENERATION_SCHEMA.empty_table().select(columns)


def written_ids(output: str) -> set[str]:
    return set(_read(storage.list_files(output), ["prompt_id"]).column("prompt_id").to_pylist())


def promote(output: str, done: set[str]) -> list[str]:
    """Move complete staged files into ``output`` (dropping ids in ``done``, which grows); delete the rest.
    Returns the promoted files' URLs."""
    fs, root = storage.filesystem(storage.join(output, META_DIR, "staging"))
    if not fs.exists(root):
        return []
    promoted = []
    for attempt in sorted(fs.ls(root, detail=False)):
        for path in sorted(fs.find(attempt)):
            name = path.rsplit("/", 1)[-1]
            try:
                with fs.open(path, "rb") as f:
                    table = pq.read_table(f)
            except (pa.ArrowException, OSError):  # no footer: the writer was stopped mid-file
                fs.rm(path)
                continue
            keep = []
            for i in table.column("prompt_id").to_pylist():  # ids not written yet, first occurrence only
                keep.append(i not in done)
                done.add(i)
            if any(keep) and not all(keep):  # rewrite without the duplicates, then promote that
                path, filtered = f"{attempt}/filtered-{name}", path
                with fs.open(path, "wb") as f:
                    pq.write_table(table.filter(pa.array(keep)), f)
                fs.rm(filtered)
            if any(keep):
                fs.mv(path, storage.filesystem(storage.join(output, name))[1])
                promoted.append(storage.join(output, name))
            else:
                fs.rm(path)
        fs.rm(attempt, recursive=True)
    if not fs.ls(root, detail=False):
        fs.rm(root, recursive=True)
    return promoted


def _file_stats(uris: list[str]) -> dict:
    t = _read(uris, ["num_tokens", "error"])
    tokens = int(pc.sum(t.column("num_tokens")).as_py() or 0)
    return {"rows": t.num_rows, "errors": t.num_rows - t.column("error").null_count, "generated_tokens": tokens}


# --- The workflow ----------------------------------------------------------


def _ensure_ray(progress: bool) -> bool:
    """Join the cluster this job runs on (RAY_ADDRESS) or start a local one; True when we started it."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, configure_logging=False,
                 log_to_driver=progress)
        return True
    return False


def _write_generations(todo, config: Config, weights: list[float], version: str, staging: str) -> dict:
    """Rows → GenerationWorker replicas → Parquet files under ``staging``; returns the replica plan."""
    import ray.data

    g = config.generate
    plan = plan_replicas(g)
    params = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_k": g.top_k, "top_p": g.top_p,
              "stop": list(g.stop), "num_candidates": g.num_candidates}
    rows = todo.map_batches(
        GenerationWorker, batch_format="pyarrow", batch_size=g.batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan["concurrency"]), num_gpus=plan["num_gpus"], num_cpus=plan["num_cpus"],
        fn_constructor_kwargs={"specs": list(config.policies), "weights": weights, "params": params,
                               "weights_version": version, "threads": plan["threads"]},
    )
    path, fs = _arrow_path(staging)
    rows.write_parquet(path, filesystem=fs, schema=GENERATION_SCHEMA, min_rows_per_file=g.rows_per_file,
                       max_rows_per_file=g.rows_per_file)
    return plan


def generate(config: Config, *, output: str | None = None, weights: str | None = None, progress: bool = True) -> dict:
    """Generate one response per corpus prompt into ``output``; returns the summary (also in __mpo_ray__/summary.json).

    ``weights`` is a weights-artifact URI overriding the config's. Rerunning on
    the same output generates only the prompts it does not hold yet.
    """
    import ray.data

    g = config.section("generate")
    output = output or g.output
    if not output:
        raise ValueError(f"{config.source}: no output location; set `generate.output` or pass --output.")
    t_start, log = time.perf_counter(), (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    lam, version = resolve_weights(config, weights)
    fmt = check_corpus_location(g.prompts)
    check_vocabularies(config, lam)
    fingerprint, settings = check_output(config, output, lam, version)

    owns_ray = _ensure_ray(progress)
    attempt = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    plan, gen_s = None, 0.0
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)
        corpus = read_corpus(g.prompts, fmt, g.prompt_column)
        done = written_ids(output)
        recovered = promote(output, done)  # complete files a stopped run left behind
        todo = corpus.map_batches(
            prepare_rows, batch_format="numpy", batch_size=None,
            fn_kwargs={"prompt_column": g.prompt_column, "id_column": g.id_column, "seed": g.seed, "done": frozenset(done)},
        ).repartition(target_num_rows_per_block=g.batch_size)  # one batch per actor task: steady files, replicas share work
        pending = todo.count()  # one cheap pass: nothing to do means no replica starts
        if not pending and not done:
            raise ValueError(f"prompt corpus {g.prompts!r} is empty; it needs rows with a `{g.prompt_column}` column.")
        storage.write_json(storage.join(output, META_DIR, "manifest.json"),
                           {"fingerprint": fingerprint, "settings": settings, "library_version": __version__})
        log(f"generate: {len(done)} prompts already in {output}"
            f"{f' ({len(recovered)} file(s) recovered)' if recovered else ''}; {pending} to generate")
        if pending:
            t0 = time.perf_counter()
            plan = _write_generations(todo, config, lam, version, storage.join(output, META_DIR, "staging", attempt))
            gen_s = time.perf_counter() - t0
    finally:
        promoted = promote(output, written_ids(output))  # even after a failure: keep every complete file
        if owns_ray:
            ray.shutdown()

    stats = _file_stats(promoted)
    summary = {
        **stats, "skipped": len(done), "output_rows": len(written_ids(output)), "output": output,
        "weights_version": version, "generation_s": round(gen_s, 3),  # replica start-up (model loading) included
        "tokens_per_s": round(stats["generated_tokens"] / gen_s, 2) if gen_s else 0.0,
        "rows_per_s": round(stats["rows"] / gen_s, 2) if gen_s else 0.0,
        "wall_s": round(time.perf_counter() - t_start, 3), "replicas": plan, "attempt": attempt,
        "library_version": __version__,
    }
    storage.write_json(storage.join(output, META_DIR, "summary.json"), summary)
    log(f"generate: {stats['rows']} rows ({stats['errors']} errors), {stats['generated_tokens']} tokens in {gen_s:.1f}s "
        f"({summary['tokens_per_s']} tok/s, {summary['rows_per_s']} rows/s); wall {summary['wall_s']:.1f}s; "
        f"{summary['output_rows']} rows in {output}")
    return summary
