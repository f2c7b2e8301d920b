"""Catalogue (issue 21, round 3): the process edges. Signals, errors raised inside workers, count flags, a quiet
terminal. The slow tests run the real CLI on the tiny config in a subprocess, with its own local Ray."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml
from tiny import ROOT, TINY_CONFIG

from mpo_ray import cli
from mpo_ray.core.errors import UserError
from mpo_ray.runtime import session

PROMPTS = os.path.join(ROOT, "workflows", "data", "tiny_prompts.jsonl")


@pytest.fixture(autouse=True)
def cli_leaves_no_trace(monkeypatch):
    """`cli.main` run in-process sets process-wide state (session verbosity, env defaults): undone after each test."""
    monkeypatch.setattr(session, "_state", dict(session._state))
    for var in ("RAY_AUTH_MODE", "TRANSFORMERS_VERBOSITY"):
        if var not in os.environ:
            monkeypatch.setenv(var, "")  # recorded as absent, so that a value main() sets is removed afterwards
            monkeypatch.delenv(var)


def tiny_config(tmp_path) -> str:
    """tiny.yaml with absolute inputs and fixed generation weights (no reweight run needed first)."""
    cfg = yaml.safe_load(open(TINY_CONFIG))
    cfg["reweight"]["prompts"] = PROMPTS
    cfg["generate"].update(prompts=PROMPTS, weights=[0.4, 0.3, 0.3])
    cfg["generate"].pop("weights_uri")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def start_cli(*args: str) -> subprocess.Popen:
    """`mpo-ray ARGS` with SIGINT at its default action: a shell starts background jobs ignoring it, and the CLI
    (rightly) keeps an ignored signal ignored."""
    return subprocess.Popen(
        [sys.executable, "-m", "mpo_ray.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_descendant(proc: subprocess.Popen, name: str, timeout: float = 240.0) -> list:
    """The process tree under ``proc`` once a process whose command line starts with ``name`` is in it."""
    psutil = pytest.importorskip("psutil")
    parent, deadline = psutil.Process(proc.pid), time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        tree = parent.children(recursive=True)
        names = []
        for p in tree:
            try:
                names.append(" ".join(p.cmdline()))
            except psutil.Error:
                pass
        if any(n.startswith(name) for n in names):
            return tree
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no {name} under the CLI within {timeout:.0f}s")


# --------------------------------------------------------------------------------------------------------------------
# 1. SIGINT / SIGTERM: one line, Ray shut down, nothing left, 128 + N
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, signum, worker",
    [
        ("reweight", signal.SIGINT, "ray::PolicyActor"),  # Ctrl-C while actors sample: used to print a traceback
        (
            "generate",
            signal.SIGTERM,
            "ray::MapWorker",
        ),  # a scheduler's stop inside Ray Data: used to abort, C++ stack dump
    ],
    ids=["SIGINT-reweight", "SIGTERM-generate"],
)
def test_a_signal_stops_a_run_in_one_line_and_leaves_no_ray_process(tmp_path, command, signum, worker):
    psutil = pytest.importorskip("psutil")
    out = str(tmp_path / "out")
    proc = start_cli(command, tiny_config(tmp_path), "--output", out, "--quiet")
    tree = wait_for_descendant(proc, worker)  # Ray is up and the work has started
    time.sleep(0.5)
    tree = psutil.Process(proc.pid).children(recursive=True)  # everything this run started, just before the signal
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)

    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert err == f"mpo-ray {command}: interrupted by {name}; nothing half-written, rerun the same command to resume\n"
    deadline = time.monotonic() + 30
    while [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"Ray processes of the stopped run are still alive: {left}"
    # the line's claim: what is in the output reads back whole, and no temporary file was left
    for folder, _, files in os.walk(out):
        assert not [f for f in files if f.startswith("_tmp-")], folder
        for f in files:
            if f.endswith(".parquet"):
                pq.read_table(os.path.join(folder, f))


# --------------------------------------------------------------------------------------------------------------------
# 3. Count flags: argparse's usage error, exit 2, before anything runs
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "c.yaml", "--max-prompts", "0"], "argument --max-prompts: must be at least 1, got 0"),
        (
            ["sweep", "c.yaml", "--max-prompts", "-3"],
            "argument --max-prompts: must be at least 1, got -3",
        ),  # was: all but 3
        (["demo", "--eval-prompts", "0"], "argument --eval-prompts: must be between 1 and 200, got 0"),
        (["demo", "--eval-prompts", "201"], "argument --eval-prompts: must be between 1 and 200, got 201"),
        (["demo", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["bench", "solver", "--prompts", "-5"], "argument --prompts: must be at least 1, got -5"),
        (["bench", "solver", "--tol", "0"], "argument --tol: must be a finite number > 0, got 0"),
        (["bench", "estimator", "--samples", "4", "0"], "argument --samples: must be at least 1, got 0"),
        (["bench", "estimator", "--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
        (["bench", "decode", "--k", "1,0"], "argument --k: must be at least 1, got 0"),
        (["bench", "decode", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
        (["bench", "generate", "--replicas", "2,-1"], "argument --replicas: must be at least 1, got -1"),
        (["bench", "generate", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    ],
)
def test_count_flags_refuse_zero_and_negative_with_a_usage_error(monkeypatch, capsys, argv, message):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the command ran")

    for command in ("_cmd_sweep", "_cmd_demo"):
        monkeypatch.setattr(cli, command, must_not_run)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and err.endswith(f": error: {message}\n") and "Traceback" not in err
    assert cli.build_parser().parse_args(["sweep", "c.yaml", "--max-prompts", "7"]).max_prompts == 7


# --------------------------------------------------------------------------------------------------------------------
# 4. Quiet by default: mpo-ray's own lines only, unless --verbose
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_generate_prints_only_mpo_rays_own_lines(tmp_path):
    # before: the token-auth notice, ~40 Ray Data INFO lines, core_worker.cc's max_restarts line, the workers'
    # FutureWarnings and load bars, and a "no available CPUs, will hang" warning
    proc = start_cli("generate", tiny_config(tmp_path), "--output", str(tmp_path / "out"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("generate: ") for line in lines), err
    assert lines[-1].startswith("generate: 96 rows (0 errors)")
    for argv in (["--verbose", "generate", "c.yaml"], ["generate", "c.yaml", "--verbose"]):  # global, either place
        assert cli.build_parser().parse_args(argv).verbose is True
    assert cli.build_parser().parse_args(["generate", "c.yaml"]).verbose is False


# --------------------------------------------------------------------------------------------------------------------
# 2. A UserError raised inside an actor or a Ray Data task: the same one line as on the driver (local Ray, in-process)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_user_errors_raised_inside_workers_reach_the_cli_as_one_line(local_ray, tmp_path, monkeypatch, capsys):
    import ray
    import ray.data

    from mpo_ray.config import ResourcesConfig
    from mpo_ray.runtime.actors import ModelGroup, gather_arrays
    from mpo_ray.runtime.data import generate_parquet
    from mpo_ray.runtime.resources import Placement

    mistake = "reward 'brevity' returned a non-finite value (nan) for row 0; it must return finite numbers."

    @ray.remote
    class Scorer:  # defined here, so Ray ships it by value
        def __init__(self, payload, num_cpus):
            if payload == "bad":
                raise UserError("policy 'concise': adapter /nowhere does not exist on this node.")

        def score(self, rows):
            if rows == ["user"]:
                raise UserError(mistake)
            raise RuntimeError("index 3 is out of bounds")  # a bug

        def info(self):
            return {}

    plan = Placement(replicas=1, num_gpus=0, num_cpus=0.25, threads=1)
    resources = ResourcesConfig(max_restarts=0, max_task_retries=0)
    group = ModelGroup("scorer", Scorer, "good", plan, resources)
    with pytest.raises(UserError) as exc:  # an actor method's: was RayTaskError(UserError), a 9-line message
        gather_arrays(group.submit("score", ["user"]))
    assert str(exc.value) == mistake and not isinstance(exc.value, ray.exceptions.RayError)
    with pytest.raises(ray.exceptions.RayTaskError, match="out of bounds"):  # a bug keeps Ray's traceback
        gather_arrays(group.submit("score", ["bug"]))
    with pytest.raises(UserError) as exc:  # a constructor's: was ActorDiedError with the traceback as text
        ModelGroup("broken", Scorer, "bad", plan, resources).info(timeout=120)
    assert str(exc.value) == "policy 'concise': adapter /nowhere does not exist on this node."

    class Worker:  # a Ray Data stage, like models.generator.GenerationWorker
        def __init__(self, fail_in):
            if fail_in == "init":
                raise UserError("generate.weights must sum to 1, got 2.")
            self.fail_in = fail_in

        def __call__(self, batch):
            raise UserError("prompt row 3 is not text.")

    ds = ray.data.from_items([{"prompt_id": str(i)} for i in range(4)])
    data_plan = Placement(replicas=1, num_gpus=0, num_cpus=0.25, threads=1)
    for fail_in, expected in (
        ("call", "prompt row 3 is not text."),
        ("init", "generate.weights must sum to 1, got 2."),
    ):
        with pytest.raises(UserError) as exc:  # were RayTaskError(UserCodeException) and ActorDiedError
            generate_parquet(
                ds,
                Worker,
                {"fail_in": fail_in},
                data_plan,
                batch_size=4,
                rows_per_file=4,
                staging=str(tmp_path / f"staging-{fail_in}"),
            )
        assert str(exc.value) == expected

    # and at the CLI: one line, exit 2 (main's own handling, now that the error arrives as itself)
    monkeypatch.setattr(cli, "_cmd_reweight", lambda args: gather_arrays(group.submit("score", ["user"])))
    capsys.readouterr()
    assert cli.main(["reweight", "c.yaml"]) == 2
    assert capsys.readouterr().err == f"mpo-ray reweight: error: {mistake}\n"
    group.kill()
