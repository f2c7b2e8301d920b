#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, on loopback only: a head and N
# workers, each a separate `ray start` with its own resources. For the cluster
# tests (tests/infra/test_cluster.py) and for trying `ray job submit` by hand.
#
#   infra/local-cluster.sh start [N]    head + N workers (default 2)
#   infra/local-cluster.sh status       nodes, resources, and the env to submit jobs
#   infra/local-cluster.sh env          print the `export` lines the jobs CLI needs
#   infra/local-cluster.sh pids         the processes `stop` would end
#   infra/local-cluster.sh stop         stop the processes this script started, and their Ray children
#
# Then, from the repo root:
#
#   eval "$(infra/local-cluster.sh env)"
#   ray job submit --working-dir . --runtime-env-json "$MPO_LOCAL_RUNTIME_ENV" \
#       -- python workflows/reweight.py workflows/configs/tiny.yaml --output /tmp/mpo-out
#
# How it works (Ray 2.60 on one Linux host; found by experiment, see docs/design.md §6):
# * Everything binds to 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and
#   --node-ip-address 127.0.0.1 on every node, the dashboard on 127.0.0.1.
#   With that variable at 0, plain `ray start --address` refuses to start a
#   worker node; at 1 it rewrites 127.0.0.1 to the host's external address.
#   Workers are therefore started by `ray start` with only the CLI's
#   multi-node check switched off (RAY_START_WORKER below).
# * The directory is the script's own: `start` creates it with a marker file,
#   .mpo-local-cluster, and only ever clears a directory that is absent, empty
#   or carries that marker. Any other directory (non-empty and unmarked, a
#   symlink, another user's) is refused before anything runs or is touched;
#   `stop`, `status`, `env` and `pids` refuse it too. `stop` removes no files.
# * Token auth stays on: `start` writes a fresh random token to
#   $MPO_CLUSTER_DIR/auth_token (mode 600); every node and every CLI call runs
#   with RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<that file> (`env` prints the
#   exports). Nothing is written to ~/.ray, and no other cluster is touched.
# * Ports: the GCS, dashboard and Ray-client ports are picked free at start, so
#   several clusters (and other Ray users of the machine) coexist; per-node
#   agent ports are left to Ray (0 = any free port): the fixed default 52365
#   would collide between nodes on one host.
# * Each node has a --temp-dir of its own ($MPO_CLUSTER_DIR/head, .../w1, ...),
#   as separate machines would: nodes sharing one temp dir share the job's
#   unpacked working_dir, and one node's cleanup then deletes it under another
#   node's running processes. Keep $MPO_CLUSTER_DIR short: Unix socket paths
#   are limited to ~107 characters.
# * `stop` ends exactly the processes this script started, and their Ray
#   children, by pid: never by name or command line (`ray stop` would end every
#   Ray on the machine; a command-line match ends a user's `tail -f` of a log in
#   here). Each node's `ray start` runs in a new session of its own; right after
#   it returns, every process of that session (gcs_server, raylet, dashboard,
#   agents, ...) is recorded in $DIR/state as PROC=<pid>,<starttime>,<session>,
#   the starttime (/proc/<pid>/stat) guarding against a reused pid. `stop`
#   signals the recorded processes still alive (same starttime), the members of
#   their sessions (only while a recorded member lives: the session is still the
#   one this script made), their descendants by parent pid (workers, actors, job
#   drivers, which Ray starts in sessions of their own), and the orphans among
#   those, known by MPO_LOCAL_CLUSTER=<dir>, which only this script sets and Ray
#   passes down; TERM, then KILL after 10 s, each pid checked against its
#   starttime just before it is signalled. Never this script or its callers.
#
# Settings (environment): MPO_CLUSTER_DIR (default /tmp/mpo-ray-cluster-$UID),
# MPO_HEAD_CPUS (0: the head only coordinates, as on KubeRay), MPO_WORKER_CPUS (1),
# MPO_OBJECT_STORE_BYTES (per node, default 200 MB), MPO_START_TIMEOUT (120 s).
# Run it with the project's environment active (`ray` and `python` on PATH):
# job entrypoints run with the `python` the nodes were started with.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${MPO_CLUSTER_DIR:-/tmp/mpo-ray-cluster-$(id -u)}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac  # processes are matched by this path: make it absolute
MARKER=.mpo-local-cluster
HEAD_CPUS="${MPO_HEAD_CPUS:-0}"
WORKER_CPUS="${MPO_WORKER_CPUS:-1}"
OBJECT_STORE="${MPO_OBJECT_STORE_BYTES:-200000000}"
START_TIMEOUT="${MPO_START_TIMEOUT:-120}"
PY="${MPO_PYTHON:-python}"

# `ray start` for a worker node, on loopback. Ray 2.60 refuses to start a worker
# node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with it =1 it rewrites
# 127.0.0.1 (in --address and --node-ip-address) to the host's external IP. So
# the CLI's own check is told "clusters enabled" while the rest of Ray keeps
# seeing =0 and stays on 127.0.0.1. Nothing else about `ray start` changes.
RAY_START_WORKER='
import sys, types
import ray._private.ray_constants as real
import ray.scripts.scripts as cli
class Constants(types.ModuleType):
    def __getattr__(self, name):
        return getattr(real, name)
constants = Constants("ray_constants")
constants.ENABLE_RAY_CLUSTER = True
cli.ray_constants = constants
sys.argv[0] = "ray"
sys.exit(cli.main())
'

die() { echo "local-cluster: $*" >&2; exit 1; }

# $1 single-quoted for the shell: safe to eval whatever it holds.
q() { local sq="'"; printf "'%s'" "${1//$sq/$sq\\$sq$sq}"; }

# Sets DIR_KIND to what $DIR is: "absent", "empty", or "ours" (it carries the
# marker `start` writes). Anything else is someone else's: refused, untouched.
check_dir() {
    local fix="set MPO_CLUSTER_DIR to a new or empty directory"
    if [ -L "$DIR" ]; then
        die "refusing $DIR: it is a symbolic link; $fix"
    elif [ ! -e "$DIR" ]; then
        DIR_KIND=absent
    elif [ ! -d "$DIR" ]; then
        die "refusing $DIR: not a directory; $fix"
    elif [ ! -O "$DIR" ]; then
        die "refusing $DIR: it belongs to another user; $fix"
    elif [ -f "$DIR/$MARKER" ] && [ ! -L "$DIR/$MARKER" ]; then
        DIR_KIND=ours
    elif [ -z "$(find "$DIR" -mindepth 1 -maxdepth 1 -print -quit)" ]; then
        DIR_KIND=empty
    else
        die "refusing $DIR: not empty and not made by this script (no $MARKER in it); $fix"
    fi
}

# The environment every node and every CLI call of this cluster runs with.
cluster_env() {
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    export RAY_USAGE_STATS_ENABLED=0
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
    unset RAY_AUTH_TOKEN RAY_ADDRESS RAY_API_SERVER_ADDRESS
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# The processes of this cluster, by pid and starttime (see the header). One
# helper, `procs CMD ...`:
#   launch LOG TIMEOUT -- CMD...  run CMD in a new session (MPO_LOCAL_CLUSTER=$DIR
#                                 in its environment), wait; record its session's
#                                 processes in $DIR/state (also on failure)
#   find                          pid:starttime of every live process of this cluster
#   signal SIG PID:START...       signal those still alive with that starttime
#   alive PID:START...            those still alive with that starttime (zombies are gone)
PROCS_PY='
import os, signal, subprocess, sys

cluster_dir, state_file = sys.argv[1], os.path.join(sys.argv[1], "state")
marker = b"MPO_LOCAL_CLUSTER=" + cluster_dir.encode()

def stat(pid):
    """(state, ppid, session, starttime) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # fields 3.. of proc(5); the name may hold spaces
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])

def table():
    return {pid: s for pid, s in ((int(p), stat(p)) for p in os.listdir("/proc") if p.isdigit()) if s}

def tokens(args):
    for t in args:
        pid, start = t.split(":")
        yield int(pid), int(start)

def live(pid, start):
    s = stat(pid)
    return s is not None and s[3] == start and s[0] != b"Z"

def descendants(procs, roots):
    children = {}
    for pid, s in procs.items():
        children.setdefault(s[1], []).append(pid)
    found, stack = set(roots), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found

def recorded():
    try:
        with open(state_file) as f:
            lines = [line.strip() for line in f]
    except OSError:
        return set()
    return {tuple(map(int, line[5:].split(","))) for line in lines if line.startswith("PROC=")}

def record(entries):
    known = recorded()
    with open(state_file, "a") as f:
        for pid, start, sid in sorted(set(entries) - known):
            f.write(f"PROC={pid},{start},{sid}\n")

def launch(log, timeout, command):
    with open(log, "wb") as out:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, env={**os.environ, "MPO_LOCAL_CLUSTER": cluster_dir})
    s = stat(child.pid)
    if s:
        record([(child.pid, s[3], child.pid)])  # at once: a stopped start still leaves its session known
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        code = 124
    procs = table()
    members = descendants(procs, [pid for pid, s in procs.items() if s[2] == child.pid])
    record([(pid, procs[pid][3], procs[pid][2]) for pid in members if pid in procs])
    return code

def find():
    procs = table()
    mine, p = {os.getpid()}, os.getppid()
    while p > 1 and p in procs and p not in mine:  # this helper, this script and its callers
        mine.add(p)
        p = procs[p][1]
    alive = {(pid, sid) for pid, start, sid in recorded() if pid in procs and procs[pid][3] == start}
    sessions = {sid for pid, sid in alive if procs[pid][2] == sid}  # still the sessions this script made
    roots = {pid for pid, _ in alive} | {pid for pid, s in procs.items() if s[2] in sessions}
    for pid in procs:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    roots.add(pid)
        except OSError:  # gone, or not ours to read
            pass
    for pid in sorted(descendants(procs, roots) - mine):
        if pid in procs and procs[pid][0] != b"Z":
            print(f"{pid}:{procs[pid][3]}")

command = sys.argv[2]
if command == "launch":
    sep = sys.argv.index("--")
    sys.exit(launch(sys.argv[3], float(sys.argv[4]), sys.argv[sep + 1:]))
elif command == "find":
    find()
elif command == "signal":
    sig = getattr(signal, "SIG" + sys.argv[3])
    for pid, start in tokens(sys.argv[4:]):
        if live(pid, start):  # checked just before: a reused pid is never signalled
            try:
                os.kill(pid, sig)
            except OSError:
                pass
elif command == "alive":
    for pid, start in sorted(set(tokens(sys.argv[3:]))):
        if live(pid, start):
            print(f"{pid}:{start}")
'

procs() { "$PY" -c "$PROCS_PY" "$DIR" "$@"; }

# pid:starttime of every live process of this cluster (see PROCS_PY's find).
cluster_procs() { procs find; }

# The ports `start` recorded in $DIR/state, read as data (never sourced).
read_state() {
    check_dir
    if [ "$DIR_KIND" != ours ] || [ ! -f "$DIR/state" ]; then
        die "no cluster state in $DIR (not started?)"
    fi
    local key value
    while IFS='=' read -r key value; do
        case "$key" in
            GCS_PORT|DASHBOARD_PORT|CLIENT_PORT|WORKERS) ;;
            PROC) [[ "$value" =~ ^[0-9]+,[0-9]+,[0-9]+$ ]] || die "bad PROC in $DIR/state"; continue ;;
            *) die "unexpected line in $DIR/state" ;;
        esac
        [[ "$value" =~ ^[0-9]+$ ]] || die "bad $key in $DIR/state"
        printf -v "$key" '%s' "$value"
    done < "$DIR/state"
    if [ -z "${GCS_PORT:-}" ] || [ -z "${DASHBOARD_PORT:-}" ]; then
        die "incomplete cluster state in $DIR"
    fi
}

# Every value single-quoted (q): the output is meant for `eval`, and $DIR is the user's.
print_env() {
    read_state
    local runtime_env
    runtime_env=$(runtime_env_json)
    echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    echo "export RAY_USAGE_STATS_ENABLED=0"
    echo "export RAY_AUTH_MODE=token"
    echo "export RAY_AUTH_TOKEN_PATH=$(q "$DIR/auth_token")"
    echo "export RAY_API_SERVER_ADDRESS=$(q "http://127.0.0.1:$DASHBOARD_PORT")"
    echo "export RAY_ADDRESS=$(q "127.0.0.1:$GCS_PORT")"
    echo "export MPO_LOCAL_RUNTIME_ENV=$(q "$runtime_env")"
}

# The runtime_env for jobs on this cluster: cluster/runtime_env.yaml (the one
# real clusters use) plus the settings of a machine without hub access.
runtime_env_json() {
    "$PY" - "$REPO/cluster/runtime_env.yaml" <<'PYEOF'
import json, sys, yaml
with open(sys.argv[1]) as f:
    env = yaml.safe_load(f)
env.setdefault("env_vars", {}).update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
print(json.dumps(env, separators=(",", ":")))
PYEOF
}

wait_for_nodes() {
    local want="$1" deadline=$((SECONDS + START_TIMEOUT)) n=0
    while [ $SECONDS -lt $deadline ]; do
        n=$("$PY" - "$GCS_PORT" <<'PYEOF' 2>/dev/null || echo 0
import sys, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="ERROR", log_to_driver=False)
print(sum(1 for node in ray.nodes() if node["Alive"]))
PYEOF
)
        [ "$n" -ge "$want" ] && return 0
        sleep 2
    done
    die "only $n of $want nodes came up within ${START_TIMEOUT}s; logs: $DIR/*/session_latest/logs"
}

cmd_start() {
    local workers="${1:-2}"
    [[ "$workers" =~ ^[0-9]+$ ]] || die "start N: N must be a number of workers, got '$workers'"
    check_dir  # before anything runs: a directory that is not ours is never touched
    command -v ray >/dev/null || die "ray not on PATH; activate the project's environment first"
    if [ -n "$(cluster_procs)" ]; then
        die "a cluster is already running from $DIR; run '$0 stop' first"
    fi
    case "$DIR_KIND" in
        ours) rm -rf "$DIR" ;;  # a previous cluster's: made by this script
        empty) rmdir "$DIR" ;;
    esac
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    echo "Created by infra/local-cluster.sh (mpo-ray): its 'start' deletes this directory and everything in it." > "$DIR/$MARKER"
    cluster_env
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$DIR/auth_token")

    GCS_PORT=$(free_port); DASHBOARD_PORT=$(free_port); CLIENT_PORT=$(free_port)
    printf 'GCS_PORT=%s\nDASHBOARD_PORT=%s\nCLIENT_PORT=%s\nWORKERS=%s\n' \
        "$GCS_PORT" "$DASHBOARD_PORT" "$CLIENT_PORT" "$workers" > "$DIR/state"

    local common=(--node-ip-address 127.0.0.1 --object-store-memory "$OBJECT_STORE"
                  --dashboard-agent-listen-port 0 --disable-usage-stats)
    echo "local-cluster: head on 127.0.0.1:$GCS_PORT (dashboard http://127.0.0.1:$DASHBOARD_PORT)"
    procs launch "$DIR/head.log" "$START_TIMEOUT" -- ray start --head --port "$GCS_PORT" --num-cpus "$HEAD_CPUS" \
        --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
        --ray-client-server-port "$CLIENT_PORT" --temp-dir "$DIR/head" "${common[@]}" \
        || { cat "$DIR/head.log" >&2; cmd_stop >&2; die "head failed to start"; }
    for i in $(seq 1 "$workers"); do
        echo "local-cluster: worker $i (num-cpus $WORKER_CPUS, resource node_$i)"
        procs launch "$DIR/worker-$i.log" "$START_TIMEOUT" -- "$PY" -c "$RAY_START_WORKER" start --address "127.0.0.1:$GCS_PORT" \
            --num-cpus "$WORKER_CPUS" --resources "{\"node_$i\": 1}" --temp-dir "$DIR/w$i" "${common[@]}" \
            || { cat "$DIR/worker-$i.log" >&2; cmd_stop >&2; die "worker $i failed to start"; }
    done
    wait_for_nodes $((workers + 1))
    echo "local-cluster: up, $((workers + 1)) nodes. To submit jobs:"
    echo "  eval \"\$($(printf '%q' "$0") env)\""
}

cmd_status() {
    read_state
    cluster_env
    local pids
    pids=$(cluster_procs | wc -l)
    echo "local-cluster: $DIR, $pids processes, GCS 127.0.0.1:$GCS_PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT"
    [ "$pids" -gt 0 ] || { echo "local-cluster: not running"; return 3; }
    ray status --address "127.0.0.1:$GCS_PORT"
}

cmd_stop() {
    local found grace=10
    check_dir  # processes are found through $DIR/state: never act on a directory that is not ours
    # Everything is collected before anything is killed: once the daemons are
    # gone, their leftover children could no longer be traced to this cluster.
    found=$(cluster_procs)
    if [ -z "$found" ]; then
        echo "local-cluster: nothing running from $DIR"
        return 0
    fi
    echo "local-cluster: stopping $(echo "$found" | wc -w) processes"
    # shellcheck disable=SC2086
    procs signal TERM $found
    for _ in $(seq 1 $((grace * 2))); do
        sleep 0.5
        # shellcheck disable=SC2046,SC2086
        found=$(procs alive $found $(cluster_procs))
        [ -z "$found" ] && break
    done
    if [ -n "$found" ]; then
        # shellcheck disable=SC2086
        procs signal KILL $found
        sleep 1
        # shellcheck disable=SC2046,SC2086
        found=$(procs alive $found $(cluster_procs))
        [ -z "$found" ] || die "still running after SIGKILL: $(echo "$found" | cut -d: -f1 | tr '\n' ' ')"
    fi
    echo "local-cluster: stopped"
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    pids) check_dir; cluster_procs | cut -d: -f1 ;;
    *) echo "usage: $0 start [N] | stop | status | env | pids" >&2; exit 2 ;;
esac
