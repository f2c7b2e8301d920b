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
output is read every 20 ms as a reader would (incomplete files, uncommitted ones).

Every output is read as a reader would (the *.parquet files directly in it) and compared with
the first plain run, keyed by id: duplicate, missing, extra and differing ids. Timings are
the driver's wall time for one pipeline with Ray up (a shared machine moves them; the load
average is printed), and, apart from Ray, the milliseconds each protocol adds per output
file. Figures, not asserts. Run: `.venv/bin/python -m mpo_ray.benchmarks.checkpoint`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from mpo_ray.io import staging
from mpo_ray.io.ownership import META_DIR

SEED = 7
CKPT_DIR = "ckpt"  # the checkpoint directory, a sibling of the output (never inside it)


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
                checkpoint_path=out + "-" + CKPT_DIR,
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


# --- Ray sessions: one in this process, one per killed child; nothing left behind ---------------


MARKER = "MPO_BENCH_CKPT_SESSION"  # in the environment of a session's driver, hence of its raylet and every worker


def _ray_init(temp_dir: str) -> None:
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        object_store_memory=200 * 2**20,
        _temp_dir=temp_dir,
    )
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _pids_of(session: str) -> list[int]:
    """Processes whose environment carries ``MARKER=session``: the session's driver, Ray services and workers
    (workers retitle themselves `ray::…` and sit in process groups of their own, so neither the command line
    nor the driver's process group finds them)."""
    needle, pids = f"{MARKER}={session}\0".encode(), []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(d[6:]))
        except OSError:
            pass
    return [p for p in pids if p != os.getpid()]


def _kill(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reap(session: str, wait_s: float = 10.0) -> int:
    """Wait for the session's processes to exit; SIGKILL (by pid) those still there after ``wait_s``."""
    deadline, killed = time.monotonic() + wait_s, 0
    while pids := _pids_of(session):
        if time.monotonic() > deadline:
            _kill(pids)
            killed += len(pids)
            deadline = time.monotonic() + wait_s
        time.sleep(0.1)
    return killed


def _workers_of(session: str) -> list[int]:
    """The session's processes less its node agents (DashboardAgent, RuntimeEnvAgent: they write no data)."""
    pids = []
    for p in _pids_of(session):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"Agent" not in f.read().split(b"\0")[0]:
                    pids.append(p)
        except OSError:
            pass
    return pids


class _Watch:
    """How long a killed session's surviving workers live on (polled in a thread while the rerun runs)."""

    def __init__(self, session: str):
        import threading

        self.session, self.t0 = session, time.perf_counter()
        self.survivors, self.lived_s = len(_workers_of(session)), 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while _workers_of(self.session) and time.perf_counter() - self.t0 < 30:
            time.sleep(0.05)
        self.lived_s = time.perf_counter() - self.t0

    def join(self) -> _Watch:
        self.thread.join()
        _reap(self.session, wait_s=3)  # the agents, if they stayed
        return self


def _child(spec: str) -> None:
    global _RAY_DATA_LOG_LEVEL
    s = json.loads(spec)
    import ray

    _RAY_DATA_LOG_LEVEL = logging.WARNING

    _ray_init(s.pop("temp_dir"))

    def resources():  # what a stalled run is waiting for
        while True:
            time.sleep(2)
            print(
                "RESOURCES " + json.dumps({k: v for k, v in ray.available_resources().items() if k == "CPU"}),
                flush=True,
            )

    import threading

    threading.Thread(target=resources, daemon=True).start()
    try:
        print("START", flush=True)
        print("RESULT " + json.dumps(pipeline(s.pop("mode"), s.pop("corpus"), s.pop("out"), **s)), flush=True)
    finally:
        ray.shutdown()


def _committed(out: str) -> set[str]:
    """Base names (no extension) of the committed checkpoint files of ``out``'s checkpoint, if any."""
    return {
        os.path.basename(f)[: -len(".parquet")]
        for f in glob.glob(os.path.join(out + "-" + CKPT_DIR, "*.parquet"))
        if not f.endswith(".pending.parquet")
    }


def run_child(
    mode: str,
    corpus: str,
    out: str,
    args,
    temp_root: str,
    *,
    after_files: int | None = None,
    kill: str = "all",
    timeout: float,
    replica_cpus: float,
    stall: float | None = None,
) -> dict:
    """The pipeline in a child process with its own Ray cluster, killed once ``after_files`` Parquet files exist
    under ``out`` (staging included) or after ``timeout`` seconds. ``kill``: "all" SIGKILLs every process of the
    session at once (a lost machine); "driver" SIGKILLs the driver alone (its raylet and GCS follow it, Ray's
    fate sharing; workers outlive it a moment) and returns at once, with a `_Watch` on the survivors.
    With ``stall``, it counts as stalled (and every process is SIGKILLed) once Ray is up and no new file has
    appeared for ``stall`` seconds. Meanwhile it reads ``out`` as a reader would: files seen before they were
    complete or (checkpoint) committed."""
    temp_dir = tempfile.mkdtemp(prefix="k", dir=temp_root)
    spec = {
        "mode": mode,
        "corpus": corpus,
        "out": out,
        "keep_checkpoint": True,
        "batch": args.batch_size,
        "rows_per_file": args.rows_per_file,
        "sleep_s": args.sleep,
        "replica_cpus": replica_cpus,
        "temp_dir": temp_dir,
    }
    log_path = os.path.join(temp_root, f"child-{os.path.basename(out)}-{os.path.basename(temp_dir)}.log")
    t0 = time.perf_counter()
    seen_partial, seen_uncommitted, ok = set(), set(), set()
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "mpo_ray.benchmarks.checkpoint", "--child", json.dumps(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, MARKER: temp_dir},
        )
        seen, status, started, last = 0, "timed out", None, 0
        try:
            while True:
                now = len(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
                if now != seen or started is None:
                    seen, last = now, time.perf_counter()
                    if started is None and stall is not None:
                        with open(log_path) as f:
                            started = time.perf_counter() if "START" in f.read() else None
                if after_files is not None and seen >= after_files:
                    status = "killed"
                    break
                if started is not None and time.perf_counter() - max(started, last) > stall:
                    status = f"stalled (no new file for {stall:.0f}s)"
                    break
                if child.poll() is not None:
                    status = "finished" if child.returncode == 0 else f"failed rc={child.returncode}"
                    break
                if time.perf_counter() - t0 > timeout:
                    break
                committed = _committed(out) if mode == "checkpoint" else set()
                for f in set(glob.glob(os.path.join(out, "*.parquet"))) - ok:  # the reader's view
                    try:
                        pq.read_metadata(f)
                    except (pa.ArrowException, OSError):
                        seen_partial.add(f)
                        continue
                    if mode == "checkpoint" and os.path.basename(f).rsplit("-", 1)[0] not in committed:
                        seen_uncommitted.add(f)
                        continue
                    ok.add(f)
                time.sleep(0.02)
        finally:
            if child.poll() is None:
                if kill == "driver" and status == "killed":
                    os.kill(child.pid, signal.SIGKILL)
                elif kill == "group" and status == "killed":
                    os.killpg(child.pid, signal.SIGKILL)
                else:
                    _kill(_pids_of(temp_dir))
            child.wait()
    elapsed = time.perf_counter() - t0
    watch = _Watch(temp_dir) if kill in ("driver", "group") and status == "killed" else None
    if watch is None:
        _reap(temp_dir, wait_s=3)
    with open(log_path) as f:
        lines = f.read().splitlines()
    result = next((json.loads(x[7:]) for x in lines if x.startswith("RESULT ")), {})
    files = sorted(glob.glob(os.path.join(out, "*.parquet")))
    uncommitted = [
        f for f in files if mode == "checkpoint" and os.path.basename(f).rsplit("-", 1)[0] not in _committed(out)
    ]
    return {
        "status": status,
        "at_files": seen,
        "elapsed": elapsed,
        "seconds": result.get("seconds"),
        "files": files,
        "uncommitted": len(uncommitted),
        "seen_partial": len(seen_partial),
        "seen_uncommitted": len(seen_uncommitted),
        "watch": watch,
        "log_tail": lines[-3:],
        "free_cpus": next(
            (json.loads(x[10:]).get("CPU", 0.0) for x in reversed(lines) if x.startswith("RESOURCES ")), None
        ),
    }


# --- Reading and checking an output ------------------------------------------------------------


def read_output(out: str) -> tuple[pa.Table, list[str]]:
    """(rows, unreadable files) of the *.parquet files directly in ``out``, as a reader would take them."""
    from mpo_ray.io.schemas import GENERATION_SCHEMA

    tables, bad = [], []
    for f in sorted(glob.glob(os.path.join(out, "*.parquet"))):
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
        "files": len(glob.glob(os.path.join(out, "*.parquet"))),
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
    f = sorted(glob.glob(os.path.join(out, "*.parquet")))[0]
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
    import statistics

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


def main(argv: list[str] | None = None) -> list[dict]:
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
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return []

    import ray

    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="mpo-bench-ckpt-")
    temp_root = tempfile.mkdtemp(prefix="ckb", dir="/tmp")  # short: Ray's socket paths live under it
    modes = [m for m in args.modes.split(",") if m]
    kills = [(int(k.split(":")[0]), (k.split(":") + ["all"])[1]) for k in args.kills.split(",") if k]
    corpus, warm = os.path.join(root, "corpus.parquet"), os.path.join(root, "warm.parquet")
    write_corpus(corpus, args.rows)
    write_corpus(warm, 2 * args.batch_size)
    print(
        f"{args.rows} rows, batch {args.batch_size}, {args.rows_per_file} rows/file "
        f"(~{-(-args.rows // args.rows_per_file)} files), {args.sleep}s/batch; 2 CPUs; load average "
        f"{os.getloadavg()[0]:.1f}; scratch {root}",
        flush=True,
    )
    results, timings = [], {m: [] for m in ["plain", *modes]}
    ref: dict = {}

    def run(mode, out, **kw):
        """The pipeline here; a resumed checkpointed run gets --resume-replica-cpus (its filter actor needs a CPU)."""
        cpus = args.resume_replica_cpus if mode == "checkpoint" and _committed(out) else 1.0
        return pipeline(
            mode,
            corpus,
            out,
            batch=args.batch_size,
            rows_per_file=args.rows_per_file,
            sleep_s=args.sleep,
            replica_cpus=cpus,
            **kw,
        )["seconds"]

    def record(mode, case, out, seconds, note="", **extra):
        r = {"mode": mode, "case": case, "seconds": seconds, "note": note, **extra, **check(out, ref)}
        results.append(r)
        print(
            f"  {mode:10} {case:34} {seconds:6.2f}s identical={r['identical']} dup={r['dup']} "
            f"missing={r['missing']} differ={r['differ']}  {note}",
            flush=True,
        )
        return r

    per_file = per_file_ms(root, -(-args.rows // args.rows_per_file), args.rows_per_file)
    main_temp = tempfile.mkdtemp(prefix="m", dir=temp_root)
    os.environ[MARKER] = main_temp  # this session's workers inherit it: `_reap` finds them at the end
    _ray_init(main_temp)
    try:
        pipeline(
            "plain",
            warm,
            os.path.join(root, "warm"),
            batch=args.batch_size,
            rows_per_file=args.rows_per_file,
            sleep_s=args.sleep,
        )  # workers started and imports done before anything is timed
        # Uninterrupted runs, modes interleaved (the load drifts); the first plain run is the reference.
        for rep in range(args.repeats):
            for mode in ["plain", *modes]:
                out = os.path.join(root, f"{mode}-full{rep}")
                s = run(mode, out, keep_checkpoint=rep == 0)
                timings[mode].append(s)
                if not ref:
                    table, _ = read_output(out)
                    ref.update({r["prompt_id"]: tuple(r.values()) for r in table.to_pylist()})
                    print(f"  reference: {len(ref)} distinct ids of {table.num_rows} rows from {out}", flush=True)
                note = (
                    ""
                    if mode != "checkpoint"
                    else (
                        "delete_checkpoint_on_success=False"
                        if rep == 0
                        else "delete_checkpoint_on_success=True (default)"
                    )
                )
                record(mode, f"uninterrupted #{rep + 1}", out, s, note, kind="run")

        for mode in modes:
            # A rerun over a complete output (for checkpoint: both delete_checkpoint_on_success settings).
            out = os.path.join(root, f"{mode}-full0")
            s = run(mode, out)
            record(mode, "no-op rerun", out, s, "its checkpoint kept" if mode == "checkpoint" else "", kind="noop")
            if mode == "checkpoint" and args.repeats > 1:
                out1 = os.path.join(root, f"{mode}-full1")
                s = run(mode, out1, keep_checkpoint=False)
                record(
                    mode,
                    "no-op rerun, default config",
                    out1,
                    s,
                    "the checkpoint was deleted when run #2 succeeded",
                    kind="noop-default",
                )
            # A lost file; a changed one: each on its own copy of the complete output (and of its checkpoint).
            for case in ("lost", "changed"):
                copy = os.path.join(root, f"{mode}-{case}")
                shutil.copytree(out, copy)
                if os.path.isdir(out + "-" + CKPT_DIR):
                    shutil.copytree(out + "-" + CKPT_DIR, copy + "-" + CKPT_DIR)
                files = sorted(glob.glob(os.path.join(copy, "*.parquet")))
                if case == "lost":
                    victim = files[len(files) // 2]
                    what = f"deleted …{os.path.basename(victim)[-18:]} ({pq.read_metadata(victim).num_rows} rows)"
                    os.remove(victim)
                else:
                    what = f"changed one value in …{tamper(copy)[-18:]}, its footer kept"
                s = run(mode, copy)
                record(mode, f"{case} file, rerun", copy, s, what, kind=case)

        for mode in modes:
            for j, (n, who) in enumerate(kills):
                out = os.path.join(root, f"{mode}-kill{n}-{who}")
                k = run_child(
                    mode,
                    corpus,
                    out,
                    args,
                    temp_root,
                    after_files=n,
                    kill=who,
                    timeout=args.child_timeout,
                    replica_cpus=1.0,
                )
                note = (
                    f"{dict(all='every process', group='the driver process group').get(who, 'the driver')} "
                    f"SIGKILLed at {k['at_files']} files "
                    f"({k['elapsed']:.0f}s)"
                    if k["status"] == "killed"
                    else f"child {k['status']} before {n} files"
                )
                note += (
                    f"; a reader then saw {len(k['files'])} files"
                    + (f" ({k['uncommitted']} not committed)" if mode == "checkpoint" else "")
                    + f"; while it ran, {k['seen_partial']} incomplete"
                    + (f" and {k['seen_uncommitted']} uncommitted" if mode == "checkpoint" else "")
                )
                files_before = set(glob.glob(os.path.join(out, "*.parquet")))
                old_runs = {os.path.basename(f).rsplit("_", 1)[0] for f in files_before}  # <dataset>_<write uuid>
                survivors = ""
                if mode == "checkpoint" and j == 0 and args.probe_stall > 0 and _committed(out):
                    # The same resume as generate would plan it: the replica holds 1 of the 2 CPUs.
                    if k["watch"]:
                        w, k["watch"] = k["watch"].join(), None
                        survivors = f"; {w.survivors} of its processes outlived the kill by {w.lived_s:.1f}s"
                    probe = run_child(
                        mode,
                        corpus,
                        out,
                        args,
                        temp_root,
                        timeout=args.child_timeout,
                        replica_cpus=1.0,
                        stall=args.probe_stall,
                    )
                    hung = probe["status"] != "finished"
                    what = (
                        f"finished, pipeline {probe['seconds']:.2f}s"
                        if not hung
                        else f"{probe['status']} after {probe['elapsed']:.0f}s in all, "
                        f"{len(probe['files']) - len(files_before)} new files; every process SIGKILLed"
                        + (
                            f"; CPUs free in its cluster at the end: {probe['free_cpus']:g} of 2 (replica 1, "
                            "CheckpointFilter actor 1; read and write tasks need 1 each)"
                            if probe["free_cpus"] is not None
                            else ""
                        )
                    )
                    record(
                        mode,
                        f"kill at {n}: resume, replica 1 of 2 CPU",
                        out,
                        probe["seconds"] or float("nan"),
                        f"{note}; resumed in a child with generate's replica plan: {what}",
                        kind="probe",
                        hung=hung,
                    )
                    note, files_before = "then resumed here", set(glob.glob(os.path.join(out, "*.parquet")))
                s = run(mode, out)  # at once: an automatic retry would not wait for the old workers
                if k["watch"]:
                    w = k["watch"].join()
                    survivors = f"; {w.survivors} of its processes outlived the kill by {w.lived_s:.1f}s"
                if mode == "checkpoint":
                    late = [
                        f
                        for f in set(glob.glob(os.path.join(out, "*.parquet"))) - files_before
                        if os.path.basename(f).rsplit("_", 1)[0] in old_runs
                    ]
                    survivors += f"; {len(late)} file(s) of the killed run appeared after the kill"
                gone = len(files_before - set(glob.glob(os.path.join(out, "*.parquet"))))
                record(
                    mode,
                    f"SIGKILL {who} at {n} files, rerun",
                    out,
                    s,
                    f"{note}; the rerun deleted {gone} of them{survivors}",
                    kind="kill",
                    unsafe_view=k["seen_partial"] + k["seen_uncommitted"] + k["uncommitted"],
                )
    finally:
        ray.shutdown()
        _reap(main_temp, wait_s=10)
        shutil.rmtree(temp_root, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{'mode':10} {'case':36} {'identical':>9} {'dup':>4} {'miss':>4} {'extra':>5} {'diff':>4} {'files':>5} "
        f"{'seconds':>7}"
    )
    for r in results:
        print(
            f"{r['mode']:10} {r['case']:36} {str(r['identical']):>9} {r['dup']:4d} {r['missing']:4d} {r['extra']:5d} "
            f"{r['differ']:4d} {r['files']:5d} {r['seconds']:7.2f}"
        )
    print("\nguarantees (held / broken, with the cases that broke them):")
    for mode in modes:
        rs = [r for r in results if r["mode"] == mode]

        def verdict(sel, bad):
            broken = [r["case"] for r in rs if sel(r) and bad(r)]
            return (
                "not run"
                if not any(sel(r) for r in rs)
                else "held"
                if not broken
                else "BROKEN (" + "; ".join(broken) + ")"
            )

        print(f"  {mode}:")
        print(
            "    byte-identical rows after SIGKILL + rerun: "
            + verdict(lambda r: r["kind"] == "kill", lambda r: not r["identical"])
        )
        print(
            "    lost file regenerated identically:         "
            + verdict(lambda r: r["kind"] == "lost", lambda r: not r["identical"])
        )
        print(
            "    changed file caught (content digest):      "
            + verdict(lambda r: r["kind"] == "changed", lambda r: not r["identical"])
        )
        print(
            "    no duplicate ids:                          "
            + verdict(lambda r: r["kind"] != "probe", lambda r: r["dup"] > 0)
        )
        print(
            "    output only ever complete, committed files: "
            + verdict(lambda r: r["kind"] == "kill", lambda r: r["unsafe_view"] > 0)
        )
        print(
            "    resumes on generate's replica plan:        "
            + verdict(  # staging: every rerun here uses it
                lambda r: r["kind"] == "probe" or (r["mode"] != "checkpoint" and r["kind"] == "kill"),
                lambda r: r.get("hung", False),
            )
        )
    import statistics

    best, mid = min(timings["plain"]), statistics.median(timings["plain"])
    print(
        "\nuninterrupted run, driver wall seconds with Ray up (each repeat -> best, x plain's best; median, "
        "x plain's median):"
    )
    for m, ts in timings.items():
        print(
            f"  {m:10} {' '.join(f'{x:6.2f}' for x in ts)} -> {min(ts):6.2f}s {min(ts) / best:.2f}x; "
            f"{statistics.median(ts):6.2f}s {statistics.median(ts) / mid:.2f}x"
        )
    print(
        f"per output file, apart from Ray (median of {-(-args.rows // args.rows_per_file)}): writing it "
        f"{per_file['data file']:.2f} ms; CheckpointConfig adds {per_file['checkpoint']:.2f} ms (pending id file + "
        f"rename); staging adds {per_file['staging']:.2f} ms (read back, digest, sealed rewrite)"
    )
    for r in results:
        if r["kind"] in ("noop", "noop-default"):
            print(
                f"no-op rerun over a complete output, {r['mode']}{' (default config)' if r['kind'] != 'noop' else ''}: "
                f"{r['seconds']:.2f}s, {r['dup']} duplicate ids after it"
            )
    print("\nnotes:")
    for r in results:
        if r["note"]:
            print(f"  {r['mode']} / {r['case']}: {r['note']}")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t_start:.0f}s")
    return results


if __name__ == "__main__":
    main()
