"""Issue 21 catalogue: infra/local-cluster.sh stops only what it started.

`stop` used to end every process whose command line named the cluster's directory, with its whole session: a
user's `tail -f` of a log in there lost its shell. Now `start` records each process it started (pid, starttime,
session) in its state file and `stop` signals those, their sessions and their descendants, nothing else.

The fast test stands in for a cluster with a few `sleep`s recorded the way `start` records its nodes; the slow
one starts a real head node.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from tiny import ROOT

SCRIPT = os.path.join(ROOT, "infra", "local-cluster.sh")
MARKER = ".mpo-local-cluster"

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or not shutil.which("setsid"), reason="Linux only (/proc)")


def _starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


def _children(pid: int) -> list[int]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2 :].split()[1]) == pid:
            out.append(int(p))
    return out


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _env(cluster_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPO_LOCAL_CLUSTER"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MPO_CLUSTER_DIR"] = cluster_dir
    env["MPO_PYTHON"] = sys.executable
    return env


def _user_tail(log: str, env: dict) -> tuple[subprocess.Popen, int]:
    """A user's terminal: a shell of its own session running `tail -f` on a log in the cluster's directory."""
    shell = subprocess.Popen(
        ["bash", "-c", 'tail -f "$0"; :', log],
        env={k: v for k, v in env.items() if k != "MPO_CLUSTER_DIR"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert _wait_for(lambda: bool(_children(shell.pid)))
    (tail,) = _children(shell.pid)
    return shell, tail


def _end(shell: subprocess.Popen) -> None:
    try:
        os.killpg(shell.pid, signal.SIGKILL)  # the session this test made (its shell leads its group)
    except ProcessLookupError:
        pass
    shell.wait(timeout=10)


def test_stop_ends_only_the_recorded_processes_and_their_children(tmp_path):
    """A user's `tail -f` of a log in the cluster's directory, and its shell, outlive `stop`; so does a process
    that took a recorded pid (another starttime); the recorded node, its session and its children do not."""
    cluster_dir = str(tmp_path / "ray")  # a path with /ray/ in it: the old command-line match took the tail for Ray
    os.mkdir(cluster_dir)
    with open(os.path.join(cluster_dir, MARKER), "w") as f:
        f.write("test\n")
    log = os.path.join(cluster_dir, "head.log")
    with open(log, "w") as f:
        f.write("raylet started\n")
    env = _env(cluster_dir)
    # a node as `start` leaves one: a session of its own with daemons in it, one of which started a child
    # in a session of its own (as Ray starts job drivers)
    node = subprocess.Popen(
        ["bash", "-c", "setsid sleep 300 & sleep 300 & wait"],
        start_new_session=True,
        env={**env, "MPO_LOCAL_CLUSTER": cluster_dir},
    )
    assert _wait_for(lambda: len(_children(node.pid)) == 2)
    shell, tail = _user_tail(log, env)
    members = [node.pid, *_children(node.pid)]
    driver = next(p for p in members[1:] if os.getsid(p) != node.pid)
    recorded = [(p, _starttime(p), node.pid) for p in members if p != driver]
    recorded.append((tail, _starttime(tail) + 1, os.getsid(tail)))  # a recorded pid since reused by the user's tail
    with open(os.path.join(cluster_dir, "state"), "w") as f:
        f.write("GCS_PORT=1\nDASHBOARD_PORT=2\nCLIENT_PORT=3\nWORKERS=0\n")
        f.writelines(f"PROC={p},{t},{s}\n" for p, t, s in recorded)
    try:
        listed = subprocess.run(["bash", SCRIPT, "pids"], env=env, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert sorted(map(int, listed.stdout.split())) == sorted(members)
        stop = subprocess.run(["bash", SCRIPT, "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        node.wait(timeout=10)
        assert _wait_for(lambda: not any(_alive(p) for p in members)), "a recorded process or its child survived"
        assert _alive(tail) and shell.poll() is None, f"stop ended a user's tail or its shell:\n{stop.stdout}"
    finally:
        _end(shell)
        for p in members:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stop_of_a_real_cluster_leaves_a_users_tail_of_its_log_alone():
    parent = tempfile.mkdtemp(prefix="mpo-lc-", dir="/tmp")  # short: Unix socket paths are limited
    cluster_dir = os.path.join(parent, "ray")
    env = _env(cluster_dir)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    shell = None
    try:
        start = subprocess.run(["bash", SCRIPT, "start", "0"], env=env, capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stdout + start.stderr
        with open(os.path.join(cluster_dir, "state")) as f:
            assert sum(line.startswith("PROC=") for line in f) >= 3  # gcs, raylet, dashboard, ... recorded at start
        pids = [
            int(p)
            for p in subprocess.run(
                ["bash", SCRIPT, "pids"], env=env, capture_output=True, text=True, timeout=60
            ).stdout.split()
        ]
        assert pids
        shell, tail = _user_tail(os.path.join(cluster_dir, "head.log"), env)
        stop = subprocess.run(["bash", SCRIPT, "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert _alive(tail) and shell.poll() is None, "stop ended a user's tail of the cluster's log, or its shell"
        assert not [p for p in pids if _alive(p) and p != tail], "cluster processes survived stop"
    finally:
        if shell is not None:
            _end(shell)
        subprocess.run(["bash", SCRIPT, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(parent, ignore_errors=True)
