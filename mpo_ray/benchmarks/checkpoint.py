"""`python -m mpo_ray.benchmarks.checkpoint`: could Ray Data's CheckpointConfig replace generate's staging?

Issue 21. One synthetic corpus (string ids), one cheap deterministic stand-in for
GenerationWorker (each row derives from (seed, prompt id) alone; it sleeps a little per
batch so a kill lands mid-run), the pipeline `generate` builds (`data.read_corpus` →
`data.map_rows(prepare)` → `data.generate_parquet`: an ActorPoolStrategy map_batches then
write_parquet, with the replica plan `replica_placement` makes on 2 CPUs), run three ways:

    plain       written straight into the output, nothing to resume with (the timing baseline)
    checkpoint  the same, with DataContext.checkpoint_config = CheckpointConfig(id_column="prompt_id", ...)
    staging     today's protocol: generate's own written_rows / promote (`io.staging`) around a write into staging

Cases: an uninterrupted run (twice, modes interleaved); a rerun over a complete output; one
output file deleted, then rerun; one output file's values changed (its footer kept), then
rerun; the run in a child process with its own Ray cluster, SIGKILLed once N files exist
(every process at once, or the driver alone: Ray's fate sharing takes the raylet and GCS with
it, but workers sit in process groups of their own and live on a moment), then rerun at once.
The first checkpointed kill is also resumed as generate would plan it (the replica on 1 of
the 2 CPUs), in a child, declared hung when no file appears for --probe-stall seconds; the
other resumed checkpointed runs give the replica 0 CPUs (--resume-replica-cpus), since the
CheckpointFilter actor that a resume adds takes a CPU of its own. While a child runs, its
output is read every 20 ms as a reader would (incomplete files, uncommitted ones);
`checkpoint_kills` runs, kills and reaps the children.

Every output is read as a reader would (the *.parquet files directly in it) and compared with
the first plain run, keyed by id: duplicate, missing, extra and differing ids. Timings are
the driver's wall time for one pipeline with Ray up (a shared machine moves them; the load
average is printed), and, apart from Ray, the milliseconds each protocol adds per output
file. Figures, not asserts. Run: `.venv/bin/python -m mpo_ray.benchmarks.checkpoint`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from mpo_ray.benchmarks.checkpoint_kills import (
    MARKER,
    Watch,
    checkpoint_dir,
    committed,
    output_files,
    ray_init,
    reap,
    run_child,
)
from mpo_ray.io import staging
from mpo_ray.io.ownership import META_DIR

SEED = 7


class FakeGenerator:
    """Stands in for GenerationWorker: a row's output is a function of (seed, prompt id) only; sleeps per batch."""

    def __init__(self, sleep_s: float = 0.05, **_):
        self.sleep_s = sleep_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        from mpo_ray.io.schemas import GENERATION_SCHEMA

        time.sleep(self.sleep_s)
        cols = {name: [] for name in GENERATION_SCHEMA.names}
        for pid, prompt, seed in zip(*(batch.column(c).to_pylist() for c in ("prompt_id", "prompt", "seed"))):
            h = hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()
            cols["prompt_id"].append(pid)
            cols["prompt"].append(prompt)
            cols["response"].append(h * 4)
            cols["finish_reason"].append("stop" if int(h[0], 16) % 2 else "length")
            cols["num_tokens"].append(int(h[1:5], 16) % 64)
            cols["log_normalizer"].append(int(h[5:13], 16) / 2**32)
            cols["sample_logprob"].append(-int(h[13:21], 16) / 2**28)
            cols["log_partition"].append(None)
            cols["target_logprob"].append(None)
            cols["weights_version"].append("bench")
            cols["seed"].append(seed)
            cols["error"].append(None)
        return pa.table(cols, schema=GENERATION_SCHEMA)


def write_corpus(path: str, n: int) -> None:
    ids = [f"p{i:06d}-{hashlib.sha1(str(i).encode()).hexdigest()[:6]}" for i in range(n)]
    pq.write_table(pa.table({"prompt_id": ids, "prompt": [f"prompt number {i}" for i in range(n)]}), path)


def prepare(batch: dict, *, done: frozenset) -> pa.Table:
    """generate's prepare_rows, reduced: (prompt_id, prompt, seed, error) per corpus row, less the ids in ``done``."""
    keep = [(i, t) for i, t in zip(batch["prompt_id"], batch["prompt"]) if i not in done]
    return pa.table(
        {
            "prompt_id": [str(i) for i, _ in keep],
            "prompt": [str(t) for _, t in keep],
            "seed": [_seed(str(i)) for i, _ in keep],
            "error": [None] * len(keep),
        },
        schema=pa.schema(
            [("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()), ("error", pa.string())]
        ),
    )


def _seed(pid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{SEED}:{pid}".encode()).digest()[:8], "little") & (2**63 - 1)


# --- Today's staging protocol: generate's own functions (written_rows, promote), under one fingerprint -----------

FINGERPRINT = "bench-checkpoint"  # the settings' fingerprint generate would stamp; one run's files share it


def written_ids(out: str) -> set[str]:
    """Ids in the output's files that read back exactly as written (generate's `written_rows`)."""
    return set(staging.written_rows(out, FINGERPRINT))


def promote(out: str, done: set[str]) -> int:
    """generate's `promote`: staged files whose footer reads → the output, less ids in ``done``, sealed."""
    return len(staging.promote(out, done, FINGERPRINT))


_RAY_DATA_LOG_LEVEL = logging.ERROR  # a child logs warnings too (to its own log file)


def pipeline(
    mode: str,
    corpus: str,
    out: str,
    *,
    keep_checkpoint: bool = True,
    batch: int = 50,
    rows_per_file: int = 50,
    sleep_s: float = 0.05,
    replica_cpus: float = 1.0,
) -> dict:
    """One run of the pipeline into ``out`` (Ray already initialised); the driver's wall seconds.
    ``replica_cpus`` 1.0 is what replica_placement gives the one replica on a 2-CPU cluster."""
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    from mpo_ray.runtime import data
    from mpo_ray.runtime.resources import Placement

    plan = Placement(replicas=1, num_gpus=0.0, num_cpus=replica_cpus, threads=1)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(_RAY_DATA_LOG_LEVEL)

    def rows(done: frozenset = frozenset()):  # the corpus, less the ids in ``done``, prepared for the generator
        return data.map_rows(
            data.read_corpus(corpus, "parquet", "prompt"), prepare, batch_size=batch, fn_kwargs={"done": done}
        )

    def write(todo, into: str) -> None:  # the stand-in generator's rows, as Parquet files under ``into``
        data.generate_parquet(
            todo,
            FakeGenerator,
            {"sleep_s": sleep_s},
            plan,
            batch_size=batch,
            rows_per_file=rows_per_file,
            staging=into,
        )

    t0 = time.perf_counter()
    if mode == "staging":  # generate.generate's driver flow, minus models, manifest and summary
        done = written_ids(out)
        try:
            promote(out, done)
            todo = rows(frozenset(done))
            if todo.count():
                write(todo, os.path.join(out, META_DIR, "staging", uuid.uuid4().hex[:8]))
        finally:
            promote(out, done)
    else:
        ctx.checkpoint_config = (
            CheckpointConfig(
                id_column="prompt_id",
                checkpoint_path=checkpoint_dir(out),
                delete_checkpoint_on_success=not keep_checkpoint,
            )
            if mode == "checkpoint"
            else None
        )
        try:
            write(rows(), out)
        finally:
            ctx.checkpoint_config = None
    return {"seconds": time.perf_counter() - t0}


def _child(spec: str) -> None:
    """`run_child`'s child: the pipeline on a Ray session of its own under the spec's temp_dir. It prints START once
    Ray is up (a stall counts from there), the free CPUs every 2 s (what a stalled run waits for) and its RESULT."""
    global _RAY_DATA_LOG_LEVEL
    s = json.loads(spec)
    import ray

    _RAY_DATA_LOG_LEVEL = logging.WARNING

    ray_init(s.pop("temp_dir"))

    def resources():  # what a stalled run is waiting for
        while True:
            time.sleep(2)
            print(
                "RESOURCES " + json.dumps({k: v for k, v in ray.available_resources().items() if k == "CPU"}),
                flush=True,
            )

    threading.Thread(target=resources, daemon=True).start()
    try:
        print("START", flush=True)
        print("RESULT " + json.dumps(pipeline(s.pop("mode"), s.pop("corpus"), s.pop("out"), **s)), flush=True)
    finally:
        ray.shutdown()


# --- Reading and checking an output ------------------------------------------------------------


def read_output(out: str) -> tuple[pa.Table, list[str]]:
    """(rows, unreadable files) of the *.parquet files directly in ``out``, as a reader would take them."""
    from mpo_ray.io.schemas import GENERATION_SCHEMA

    tables, bad = [], []
    for f in output_files(out):
        try:
            tables.append(pq.read_table(f).replace_schema_metadata(None).cast(GENERATION_SCHEMA))
        except (pa.ArrowException, OSError):
            bad.append(f)
    return (pa.concat_tables(tables) if tables else GENERATION_SCHEMA.empty_table()), bad


def check(out: str, reference: dict) -> dict:
    """The output against the reference rows (id → row values): duplicate, missing, extra and differing ids."""
    table, bad = read_output(out)
    rows = table.to_pylist()
    ids = [r["prompt_id"] for r in rows]
    got = {}
    differ = set()
    for r in rows:
        values = tuple(r.values())
        if r["prompt_id"] in reference and values != reference[r["prompt_id"]]:
            differ.add(r["prompt_id"])
        got.setdefault(r["prompt_id"], values)
    res = {
        "rows": len(rows),
        "files": len(output_files(out)),
        "unreadable": len(bad),
        "dup": len(ids) - len(got),
        "missing": len(reference.keys() - got.keys()),
        "extra": len(got.keys() - reference.keys()),
        "differ": len(differ),
    }
    res["identical"] = not any(res[k] for k in ("unreadable", "dup", "missing", "extra", "differ"))
    return res


def tamper(out: str) -> str:
    """Change one value of the first output file, keeping its footer metadata (digest included)."""
    f = output_files(out)[0]
    t = pq.read_table(f)
    resp = t.column("response").to_pylist()
    resp[0] = "tampered " + resp[0]
    i = t.schema.get_field_index("response")
    pq.write_table(t.set_column(i, t.schema.field(i), pa.array(resp, pa.string())), f)
    return os.path.basename(f)


def per_file_ms(root: str, files: int, rows_per_file: int) -> dict:
    """Milliseconds per output file, apart from Ray and its scheduling noise: writing the data file itself; what
    CheckpointConfig adds to each write task (Ray's own CheckpointWriter: the pending id file, then its rename);
    what staging adds (promote: read the staged file back, digest its values, rewrite it sealed and atomically)."""
    from ray.data.checkpoint import CheckpointConfig
    from ray.data.checkpoint.checkpoint_writer import CheckpointWriter

    d = os.path.join(root, "per-file")
    os.makedirs(os.path.join(d, "staged"))
    ids = [f"p{i:06d}" for i in range(rows_per_file)]
    batch = prepare({"prompt_id": ids, "prompt": [f"prompt {i}" for i in ids]}, done=frozenset())
    table = FakeGenerator(sleep_s=0)(batch)
    writer = CheckpointWriter.create(CheckpointConfig(id_column="prompt_id", checkpoint_path=os.path.join(d, "ckpt")))
    times = {"data file": [], "checkpoint": [], "staging": []}
    for i in range(files):
        staged = os.path.join(d, "staged", f"f{i:06d}.parquet")
        t0 = time.perf_counter()
        pq.write_table(table, staged)
        t1 = time.perf_counter()
        writer.commit_checkpoint(writer.write_pending_checkpoint(table.column("prompt_id"), f"f{i:06d}"))
        t2 = time.perf_counter()
        staging.write_rows(os.path.join(d, f"f{i:06d}.parquet"), pq.read_table(staged), FINGERPRINT)
        os.remove(staged)
        t3 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(1000 * dt)
    shutil.rmtree(d, ignore_errors=True)
    return {k: statistics.median(v) for k, v in times.items()}


# --- The benchmark ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """The benchmark's flags; ``--child`` (hidden) is how `run_child` starts one pipeline in a child process."""
    p = argparse.ArgumentParser(prog="python -m mpo_ray.benchmarks.checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="corpus size")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--rows-per-file", type=int, default=50)
    p.add_argument("--sleep", type=float, default=0.05, help="seconds the stand-in generator sleeps per batch")
    p.add_argument(
        "--kills",
        default="3:all,20:driver",
        help="kill runs, FILES:WHO each: SIGKILL once FILES files exist; WHO is `all` (every process of the run "
        "at once: a lost machine), `group` (the driver's process group: driver, raylet, GCS) or `driver` "
        "(the driver alone; Ray's fate sharing takes raylet and GCS with it). Workers run in process groups "
        "of their own and outlive `group` and `driver` kills a moment; the rerun starts at once, as an "
        "automatic retry would. The first checkpointed kill is also resumed with generate's replica plan",
    )
    p.add_argument("--modes", default="checkpoint,staging")
    p.add_argument("--repeats", type=int, default=2, help="timed uninterrupted runs per mode")
    p.add_argument(
        "--resume-replica-cpus",
        type=float,
        default=0.0,
        help="CPUs of the replica when a checkpointed run resumes (its CheckpointFilter actor takes 1 CPU; "
        "generate's plan, 1 of 2, is tried once in a child, --probe-stall); every other run uses 1",
    )
    p.add_argument(
        "--probe-stall",
        type=float,
        default=15.0,
        help="the resumed checkpointed run with generate's replica plan counts as hung when, Ray up, no new "
        "file appears for this many seconds (0: skip that probe)",
    )
    p.add_argument("--child-timeout", type=float, default=120.0)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (its path is printed)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Every case, then the table, the guarantees each mode held and the timings; the per-case results."""
    args = _parser().parse_args(argv)
    if args.child:  # run_child's own process: one pipeline on a Ray cluster of its own
        _child(args.child)
        return []
    bench = _Bench(args)
    bench.run()
    bench.summary()
    return bench.results


class _Bench:
    """One benchmark run's shared state: the arguments, the scratch directories, the corpus, the reference rows (the
    first plain run's, id → values) every output is checked against, each case's result and the timed runs' seconds.
    The phases run in order on one Ray session here; a kill run adds a cluster of its own per child."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.t_start = args, time.perf_counter()
        self.root = tempfile.mkdtemp(prefix="mpo-bench-ckpt-")
        self.temp_root = tempfile.mkdtemp(prefix="ckb", dir="/tmp")  # short: Ray's socket paths live under it
        self.modes = [m for m in args.modes.split(",") if m]
        self.kills = [(int(k.split(":")[0]), (k.split(":") + ["all"])[1]) for k in args.kills.split(",") if k]
        self.corpus = os.path.join(self.root, "corpus.parquet")
        self.files = -(-args.rows // args.rows_per_file)  # output files of a complete run
        self.sizes = {"batch": args.batch_size, "rows_per_file": args.rows_per_file, "sleep_s": args.sleep}
        self.results: list[dict] = []
        self.timings: dict[str, list[float]] = {m: [] for m in ["plain", *self.modes]}
        self.ref: dict = {}
        self.per_file: dict[str, float] = {}  # milliseconds per output file, apart from Ray

    def run(self) -> None:
        """Every case, in order; Ray shut down and the scratch removed (unless --keep) even when one fails."""
        import ray

        a, warm = self.args, os.path.join(self.root, "warm.parquet")
        write_corpus(self.corpus, a.rows)
        write_corpus(warm, 2 * a.batch_size)
        print(
            f"{a.rows} rows, batch {a.batch_size}, {a.rows_per_file} rows/file (~{self.files} files), "
            f"{a.sleep}s/batch; 2 CPUs; load average {os.getloadavg()[0]:.1f}; scratch {self.root}",
            flush=True,
        )
        self.per_file = per_file_ms(self.root, self.files, a.rows_per_file)
        main_temp = tempfile.mkdtemp(prefix="m", dir=self.temp_root)
        os.environ[MARKER] = main_temp  # this session's workers inherit it: `reap` finds them at the end
        ray_init(main_temp)
        try:
            # Workers started and imports done before anything is timed.
            pipeline("plain", warm, os.path.join(self.root, "warm"), **self.sizes)
            self.uninterrupted()
            for mode in self.modes:
                self.reruns(mode)
            for mode in self.modes:
                for j, (n, who) in enumerate(self.kills):
                    self.kill_and_rerun(mode, n, who, probe=j == 0)
        finally:
            ray.shutdown()
            reap(main_temp, wait_s=10)
            shutil.rmtree(self.temp_root, ignore_errors=True)
            if not a.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def pipeline(self, mode: str, out: str, **kw) -> float:
        """The pipeline here, its seconds; a resumed checkpointed run gets --resume-replica-cpus (its filter actor
        needs a CPU)."""
        cpus = self.args.resume_replica_cpus if mode == "checkpoint" and committed(out) else 1.0
        return pipeline(mode, self.corpus, out, replica_cpus=cpus, **self.sizes, **kw)["seconds"]

    def child(self, mode: str, out: str, **kw) -> dict:
        """`run_child` on this run's corpus and settings, the replica on 1 of the child cluster's 2 CPUs."""
        spec = {"corpus": self.corpus, "keep_checkpoint": True, **self.sizes, "replica_cpus": 1.0}
        return run_child(mode, spec, out, self.temp_root, timeout=self.args.child_timeout, **kw)

    def record(self, mode: str, case: str, out: str, seconds: float, note: str = "", **extra) -> None:
        """``out`` checked against the reference: kept for the summary and printed at once (a long run shows life)."""
        r = {"mode": mode, "case": case, "seconds": seconds, "note": note, **extra, **check(out, self.ref)}
        self.results.append(r)
        print(
            f"  {mode:10} {case:34} {seconds:6.2f}s identical={r['identical']} dup={r['dup']} "
            f"missing={r['missing']} differ={r['differ']}  {note}",
            flush=True,
        )

    def uninterrupted(self) -> None:
        """Each mode ``--repeats`` times, modes interleaved (the load drifts); the first plain run is the reference.
        The first checkpointed run keeps its checkpoint, so that the reruns have one to resume from."""
        for rep in range(self.args.repeats):
            for mode in ["plain", *self.modes]:
                out = os.path.join(self.root, f"{mode}-full{rep}")
                s = self.pipeline(mode, out, keep_checkpoint=rep == 0)
                self.timings[mode].append(s)
                if not self.ref:
                    table, _ = read_output(out)
                    self.ref.update({r["prompt_id"]: tuple(r.values()) for r in table.to_pylist()})
                    print(f"  reference: {len(self.ref)} distinct ids of {table.num_rows} rows from {out}", flush=True)
                note = ""
                if mode == "checkpoint":
                    note = f"delete_checkpoint_on_success={'False' if rep == 0 else 'True (default)'}"
                self.record(mode, f"uninterrupted #{rep + 1}", out, s, note, kind="run")

    def reruns(self, mode: str) -> None:
        """Reruns over a complete output (for checkpoint: both delete_checkpoint_on_success settings), then over a
        lost file and over a changed one, each on its own copy of the complete output (and of its checkpoint): a
        resume must make the output whole and true again, whatever its own records say."""
        out = os.path.join(self.root, f"{mode}-full0")
        s = self.pipeline(mode, out)
        self.record(mode, "no-op rerun", out, s, "its checkpoint kept" if mode == "checkpoint" else "", kind="noop")
        if mode == "checkpoint" and self.args.repeats > 1:
            out1 = os.path.join(self.root, f"{mode}-full1")
            s = self.pipeline(mode, out1, keep_checkpoint=False)
            note = "the checkpoint was deleted when run #2 succeeded"
            self.record(mode, "no-op rerun, default config", out1, s, note, kind="noop-default")
        for case in ("lost", "changed"):
            copy = os.path.join(self.root, f"{mode}-{case}")
            what = _damaged_copy(out, copy, case)
            s = self.pipeline(mode, copy)
            self.record(mode, f"{case} file, rerun", copy, s, what, kind=case)

    def kill_and_rerun(self, mode: str, n: int, who: str, *, probe: bool) -> None:
        """The pipeline in a child SIGKILLed once ``n`` files exist, then rerun here at once (an automatic retry would
        not wait for the old workers): what the rerun left, what it deleted, which files of the killed run appeared
        late. With ``probe``, a checkpointed kill is first resumed in a child with generate's replica plan."""
        out = os.path.join(self.root, f"{mode}-kill{n}-{who}")
        k = self.child(mode, out, after_files=n, kill=who)
        note, watch, survivors = _kill_note(mode, n, who, k), k["watch"], ""
        files_before = set(output_files(out))
        old_writes = {_write_of(f) for f in files_before}
        if probe and mode == "checkpoint" and self.args.probe_stall > 0 and committed(out):
            survivors, watch = _outlived(watch), None  # the survivors gone before the probe's cluster starts
            self.resume_as_generate(out, n, note, len(files_before))
            note, files_before = "then resumed here", set(output_files(out))
        s = self.pipeline(mode, out)
        survivors += _outlived(watch)
        if mode == "checkpoint":
            late = [f for f in set(output_files(out)) - files_before if _write_of(f) in old_writes]
            survivors += f"; {len(late)} file(s) of the killed run appeared after the kill"
        gone = len(files_before - set(output_files(out)))
        self.record(
            mode,
            f"SIGKILL {who} at {n} files, rerun",
            out,
            s,
            f"{note}; the rerun deleted {gone} of them{survivors}",
            kind="kill",
            unsafe_view=k["seen_partial"] + k["seen_uncommitted"] + k["uncommitted"],
        )

    def resume_as_generate(self, out: str, n: int, note: str, files_before: int) -> None:
        """The killed checkpointed run resumed as generate would plan it (the replica holds 1 of the 2 CPUs) in a
        child, declared hung once no file appears for --probe-stall seconds: its CheckpointFilter actor takes the
        CPU the read and write tasks need."""
        p = self.child("checkpoint", out, stall=self.args.probe_stall)
        hung = p["status"] != "finished"
        if not hung:
            what = f"finished, pipeline {p['seconds']:.2f}s"
        else:
            what = (
                f"{p['status']} after {p['elapsed']:.0f}s in all, {len(p['files']) - files_before} new files; "
                "every process SIGKILLed"
            )
            if p["free_cpus"] is not None:
                what += (
                    f"; CPUs free in its cluster at the end: {p['free_cpus']:g} of 2 (replica 1, "
                    "CheckpointFilter actor 1; read and write tasks need 1 each)"
                )
        self.record(
            "checkpoint",
            f"kill at {n}: resume, replica 1 of 2 CPU",
            out,
            p["seconds"] or float("nan"),
            f"{note}; resumed in a child with generate's replica plan: {what}",
            kind="probe",
            hung=hung,
        )

    def summary(self) -> None:
        """The results table, each mode's guarantees, then the figures: timings, per-file costs, no-op reruns."""
        _print_table(self.results)
        _print_guarantees(self.results, self.modes)
        best, mid = min(self.timings["plain"]), statistics.median(self.timings["plain"])
        print(
            "\nuninterrupted run, driver wall seconds with Ray up (each repeat -> best, x plain's best; median, "
            "x plain's median):"
        )
        for m, ts in self.timings.items():
            print(
                f"  {m:10} {' '.join(f'{x:6.2f}' for x in ts)} -> {min(ts):6.2f}s {min(ts) / best:.2f}x; "
                f"{statistics.median(ts):6.2f}s {statistics.median(ts) / mid:.2f}x"
            )
        ms = self.per_file
        print(
            f"per output file, apart from Ray (median of {self.files}): writing it {ms['data file']:.2f} ms; "
            f"CheckpointConfig adds {ms['checkpoint']:.2f} ms (pending id file + rename); staging adds "
            f"{ms['staging']:.2f} ms (read back, digest, sealed rewrite)"
        )
        for r in self.results:
            if r["kind"] in ("noop", "noop-default"):
                print(
                    f"no-op rerun over a complete output, {r['mode']}"
                    f"{' (default config)' if r['kind'] != 'noop' else ''}: "
                    f"{r['seconds']:.2f}s, {r['dup']} duplicate ids after it"
                )
        print("\nnotes:")
        for r in self.results:
            if r["note"]:
                print(f"  {r['mode']} / {r['case']}: {r['note']}")
        print(f"\nload average after: {os.getloadavg()[0]:.1f}; total {time.perf_counter() - self.t_start:.0f}s")


def _damaged_copy(out: str, copy: str, case: str) -> str:
    """A copy of the complete ``out`` (and of its checkpoint) with one file deleted ("lost") or one value changed,
    its footer kept ("changed"); what was done, for the notes."""
    shutil.copytree(out, copy)
    if os.path.isdir(checkpoint_dir(out)):
        shutil.copytree(checkpoint_dir(out), checkpoint_dir(copy))
    if case == "changed":
        return f"changed one value in …{tamper(copy)[-18:]}, its footer kept"
    files = output_files(copy)
    victim = files[len(files) // 2]
    what = f"deleted …{os.path.basename(victim)[-18:]} ({pq.read_metadata(victim).num_rows} rows)"
    os.remove(victim)
    return what


def _write_of(path: str) -> str:
    """The write a Ray Data output file came from: its name is <dataset>_<write uuid>_<block>."""
    return os.path.basename(path).rsplit("_", 1)[0]


def _kill_note(mode: str, n: int, who: str, k: dict) -> str:
    """What was killed and when, and what a reader saw of the output then and while the child ran."""
    if k["status"] == "killed":
        whom = {"all": "every process", "group": "the driver process group"}.get(who, "the driver")
        note = f"{whom} SIGKILLed at {k['at_files']} files ({k['elapsed']:.0f}s)"
    else:
        note = f"child {k['status']} before {n} files"
    ckpt = mode == "checkpoint"
    return (
        note
        + f"; a reader then saw {len(k['files'])} files"
        + (f" ({k['uncommitted']} not committed)" if ckpt else "")
        + f"; while it ran, {k['seen_partial']} incomplete"
        + (f" and {k['seen_uncommitted']} uncommitted" if ckpt else "")
    )


def _outlived(watch: Watch | None) -> str:
    """How many of a killed session's processes outlived the kill, and by how long (after they are all gone)."""
    if watch is None:
        return ""
    w = watch.join()
    return f"; {w.survivors} of its processes outlived the kill by {w.lived_s:.1f}s"


def _print_table(results: list[dict]) -> None:
    print(
        f"\n{'mode':10} {'case':36} {'identical':>9} {'dup':>4} {'miss':>4} {'extra':>5} {'diff':>4} {'files':>5} "
        f"{'seconds':>7}"
    )
    for r in results:
        print(
            f"{r['mode']:10} {r['case']:36} {str(r['identical']):>9} {r['dup']:4d} {r['missing']:4d} {r['extra']:5d} "
            f"{r['differ']:4d} {r['files']:5d} {r['seconds']:7.2f}"
        )


GUARANTEES = (  # (what a resume must keep, the cases that test it, how a case breaks it)
    ("byte-identical rows after SIGKILL + rerun: ", lambda r: r["kind"] == "kill", lambda r: not r["identical"]),
    ("lost file regenerated identically:         ", lambda r: r["kind"] == "lost", lambda r: not r["identical"]),
    ("changed file caught (content digest):      ", lambda r: r["kind"] == "changed", lambda r: not r["identical"]),
    ("no duplicate ids:                          ", lambda r: r["kind"] != "probe", lambda r: r["dup"] > 0),
    ("output only ever complete, committed files: ", lambda r: r["kind"] == "kill", lambda r: r["unsafe_view"] > 0),
    (
        "resumes on generate's replica plan:        ",  # staging: every rerun here uses it
        lambda r: r["kind"] == "probe" or (r["mode"] != "checkpoint" and r["kind"] == "kill"),
        lambda r: r.get("hung", False),
    ),
)


def _print_guarantees(results: list[dict], modes: list[str]) -> None:
    """Per mode, each guarantee held, BROKEN (naming the cases that broke it) or not run."""
    print("\nguarantees (held / broken, with the cases that broke them):")
    for mode in modes:
        print(f"  {mode}:")
        rs = [r for r in results if r["mode"] == mode]
        for label, tests, breaks in GUARANTEES:
            broken = [r["case"] for r in rs if tests(r) and breaks(r)]
            verdict = "BROKEN (" + "; ".join(broken) + ")" if broken else "held"
            print(f"    {label}{verdict if any(tests(r) for r in rs) else 'not run'}")


if __name__ == "__main__":
    main()
