"""The killed runs of `mpo-ray bench checkpoint`: one pipeline in a child process with a Ray cluster of its own,
SIGKILLed once it has written N files (every process at once, its process group, or the driver alone), read as a
reader would while it runs, and reaped so that no process of it outlives the benchmark.

A session's processes are found by a marker in their environment, never by name (a name would find another Ray on
the same machine too), and killed and reaped by pid.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

CHILD = ("-m", "mpo_ray.benchmarks.checkpoint", "--child")  # the benchmark in child mode: one pipeline, then exit

# --- A Ray session's processes: found by the marker, killed and reaped by pid ------------------------------------

MARKER = "MPO_BENCH_CKPT_SESSION"  # in the environment of a session's driver, hence of its raylet and every worker


def ray_init(temp_dir: str) -> None:
    """A quiet local Ray session on 2 CPUs under ``temp_dir`` (a short path: its sockets live under it)."""
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


def reap(session: str, wait_s: float = 10.0) -> int:
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


class Watch:
    """How long a killed session's surviving workers live on (polled in a thread while the rerun runs)."""

    def __init__(self, session: str):
        self.session, self.t0 = session, time.perf_counter()
        self.survivors, self.lived_s = len(_workers_of(session)), 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while _workers_of(self.session) and time.perf_counter() - self.t0 < 30:
            time.sleep(0.05)
        self.lived_s = time.perf_counter() - self.t0

    def join(self) -> Watch:
        self.thread.join()
        reap(self.session, wait_s=3)  # the agents, if they stayed
        return self


# --- The output as a reader sees it ------------------------------------------------------------------------------


def output_files(out: str) -> list[str]:
    """The *.parquet files directly in ``out``, sorted: the output as a reader takes it."""
    return sorted(glob.glob(os.path.join(out, "*.parquet")))


def checkpoint_dir(out: str) -> str:
    """Where CheckpointConfig keeps ``out``'s id files: a sibling (inside, a reader would take them for output)."""
    return out + "-ckpt"


def committed(out: str) -> set[str]:
    """Base names (no extension) of the committed checkpoint files of ``out``'s checkpoint, if any."""
    return {
        os.path.basename(f)[: -len(".parquet")]
        for f in glob.glob(os.path.join(checkpoint_dir(out), "*.parquet"))
        if not f.endswith(".pending.parquet")
    }


# --- One killed run ------------------------------------------------------------------------------------------------


def run_child(
    mode: str,
    spec: dict,
    out: str,
    temp_root: str,
    *,
    after_files: int | None = None,
    kill: str = "all",
    timeout: float,
    stall: float | None = None,
) -> dict:
    """One `pipeline` run into ``out`` (``spec``: its corpus and settings) in a child process with its own Ray
    cluster, killed once ``after_files`` Parquet files exist under ``out`` (staging included) or after ``timeout``
    seconds. ``kill``: "all" SIGKILLs every process of the session at once (a lost machine); "driver" SIGKILLs the
    driver alone (its raylet and GCS follow it, Ray's fate sharing; workers outlive it a moment) and returns at once,
    with a `Watch` on the survivors. With ``stall``, it counts as stalled (and every process is SIGKILLed) once Ray
    is up and no new file has appeared for ``stall`` seconds. Meanwhile a `Reader` reads ``out``."""
    temp_dir = tempfile.mkdtemp(prefix="k", dir=temp_root)
    spec = {"mode": mode, "out": out, **spec, "temp_dir": temp_dir}
    log_path = os.path.join(temp_root, f"child-{os.path.basename(out)}-{os.path.basename(temp_dir)}.log")
    t0, reader, status = time.perf_counter(), Reader(out, mode), "timed out"
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            [sys.executable, *CHILD, json.dumps(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, MARKER: temp_dir},
        )
        try:
            status, seen = _wait(child, log_path, reader, after_files=after_files, deadline=t0 + timeout, stall=stall)
        finally:
            _stop(child, kill if status == "killed" else "all", temp_dir)
    elapsed = time.perf_counter() - t0
    watch = Watch(temp_dir) if kill in ("driver", "group") and status == "killed" else None
    if watch is None:
        reap(temp_dir, wait_s=3)
    with open(log_path) as f:
        lines = f.read().splitlines()
    result = next((json.loads(x[7:]) for x in lines if x.startswith("RESULT ")), {})
    files = output_files(out)
    done = committed(out)
    uncommitted = [f for f in files if os.path.basename(f).rsplit("-", 1)[0] not in done]
    return {
        "status": status,
        "at_files": seen,
        "elapsed": elapsed,
        "seconds": result.get("seconds"),
        "files": files,
        "uncommitted": len(uncommitted) if mode == "checkpoint" else 0,
        "seen_partial": len(reader.partial),
        "seen_uncommitted": len(reader.uncommitted),
        "watch": watch,
        "log_tail": lines[-3:],
        "free_cpus": next(
            (json.loads(x[10:]).get("CPU", 0.0) for x in reversed(lines) if x.startswith("RESOURCES ")), None
        ),
    }


class Reader:
    """A reader of the output while a child writes it: the files it met before they were complete (no readable
    footer) or, under a checkpoint, before Ray Data committed them (a reader cannot tell those from finished ones)."""

    def __init__(self, out: str, mode: str):
        self.out, self.checkpointed = out, mode == "checkpoint"
        self.partial, self.uncommitted, self.ok = set(), set(), set()

    def look(self) -> None:
        done = committed(self.out) if self.checkpointed else set()
        for f in set(output_files(self.out)) - self.ok:
            try:
                pq.read_metadata(f)
            except (pa.ArrowException, OSError):
                self.partial.add(f)
                continue
            if self.checkpointed and os.path.basename(f).rsplit("-", 1)[0] not in done:
                self.uncommitted.add(f)
                continue
            self.ok.add(f)


def _wait(
    child: subprocess.Popen,
    log_path: str,
    reader: Reader,
    *,
    after_files: int | None,
    deadline: float,
    stall: float | None,
) -> tuple[str, int]:
    """(status, Parquet files under the output) once ``after_files`` exist ("killed": the caller kills), the child
    stalls or exits, or at ``deadline``; the reader looks every 20 ms meanwhile. A stall counts from Ray being up
    (the child prints START), so a slow cluster start is not taken for a hung resume."""
    out, seen, started, last = reader.out, 0, None, 0
    while True:
        now = len(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
        if now != seen or started is None:
            seen, last = now, time.perf_counter()
            if started is None and stall is not None:
                with open(log_path) as f:
                    started = time.perf_counter() if "START" in f.read() else None
        if after_files is not None and seen >= after_files:
            return "killed", seen
        if started is not None and time.perf_counter() - max(started, last) > stall:
            return f"stalled (no new file for {stall:.0f}s)", seen
        if child.poll() is not None:
            return ("finished" if child.returncode == 0 else f"failed rc={child.returncode}"), seen
        if time.perf_counter() > deadline:
            return "timed out", seen
        reader.look()
        time.sleep(0.02)


def _stop(child: subprocess.Popen, kill: str, temp_dir: str) -> None:
    """SIGKILL the child's driver alone ("driver"), its process group ("group") or its whole session ("all")."""
    if child.poll() is None:
        if kill == "driver":
            os.kill(child.pid, signal.SIGKILL)
        elif kill == "group":
            os.killpg(child.pid, signal.SIGKILL)
        else:
            _kill(_pids_of(temp_dir))
    child.wait()
