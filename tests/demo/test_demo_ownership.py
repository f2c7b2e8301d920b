"""Whose files, for the demo and train-demo-policies: a rerun removes only what mpo-ray wrote, file by file, never
through a link; a user's files stay, named in one warning; train-demo-policies refuses a directory it did not make
before anything loads and replaces an adapter only file by file. No model runs here: the workflows are stood in for
by the files they write."""

import hashlib
import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.ownership import META_DIR, OWNER_FILE, check_ours, mark_ours

POLICIES = ["concise", "relevant", "enthusiastic"]


def _ours(path, table=None):
    """A Parquet file as mpo-ray writes it (digest and name in its footer)."""
    storage.write_parquet(str(path), table if table is not None else pa.table({"x": [1, 2]}))


def _theirs(path, table=None):
    """A user's Parquet file: no mpo-ray footer."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table if table is not None else pa.table({"x": [3]}), str(path))


def _write(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _earlier_demo(out):
    """Every file an earlier (default-size) demo and its workflows leave in ``out``."""
    mark_ours(str(out), "demo")
    for name in (
        "demo.json",
        "report.md",
        "evaluation.json",
        "solver.png",
        "objectives.png",
        "front.png",
        "prompts/reweight.jsonl",
        "prompts/eval.jsonl",
        "reweight/weights.json",
        "reweight/report.md",
        "generations/sweep/sweep.json",
        f"generations/mpo/{META_DIR}/manifest.json",
        f"generations/mpo/{META_DIR}/summary.json",
        f"generations/mpo/{META_DIR}/staging/20260101-ab/p.parquet",
        "soup/soup/adapter_config.json",
        "soup/soup/adapter_model.safetensors",
        "soup/soup/soup.json",
        f"reweight/{storage.TMP_PREFIX}{'0' * 32}",
    ):  # an atomic write a kill interrupted
        _write(out / name)
    mark_ours(str(out / "reweight"), "reweight")
    mark_ours(str(out / "generations" / "mpo"), "generate")
    mark_ours(str(out / "generations" / "sweep"), "sweep")
    _ours(out / "reweight" / "scores" / "part-00000-0123456789ab.parquet")
    _ours(out / "generations" / "mpo" / "abc_000000_000000.parquet")
    for label in ("reference", "MPO", "soup", "w=0.5,0.5,0"):
        _ours(out / "generations" / "sweep" / f"{label}.parquet")


# --- 1. the demo's rerun ---------------------------------------------------------------------------------------


def test_demo_rerun_removes_only_files_the_demo_wrote_file_by_file(tmp_path, caplog):
    from mpo_ray.demo.run import _prepare_output

    out = tmp_path / "demo"
    _earlier_demo(out)
    users = {
        "my-notes.txt": "keep",
        "mydata/table.csv": "1,2",
        "prompts/mine.jsonl": "{}",
        "reweight/scores/notes.md": "mine",
        "generations/sweep/analysis.md": "mine",
        "soup/my-soup/adapter_config.json": "{}",
    }
    for name, text in users.items():
        _write(out / name, text)
    _theirs(out / "reweight" / "scores" / "mine.parquet")
    ours = out / "generations" / "sweep" / "MPO.parquet"
    (out / "generations" / "sweep" / "MPO-copy.parquet").write_bytes(ours.read_bytes())  # ours, under another name
    with caplog.at_level(logging.WARNING, logger="mpo_ray"):
        _prepare_output(str(out))

    for name, text in users.items():
        assert (out / name).read_text() == text, name
    assert (out / "reweight" / "scores" / "mine.parquet").exists()
    assert (out / "generations" / "sweep" / "MPO-copy.parquet").exists()
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted(
        [
            *users,
            "reweight/scores/mine.parquet",
            "generations/sweep/MPO-copy.parquet",
            OWNER_FILE,
            f"reweight/{OWNER_FILE}",
            f"generations/sweep/{OWNER_FILE}",
        ]
    )
    # directories go only once empty: nothing of generations/mpo or soup/soup is left, soup/ keeps the user's soup
    assert not (out / "generations" / "mpo").exists() and not (out / "soup" / "soup").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # every file left alone, in one line
    named = (
        "generations/sweep/MPO-copy.parquet, generations/sweep/analysis.md, my-notes.txt, mydata/, "
        "prompts/mine.jsonl, reweight/scores/mine.parquet, reweight/scores/notes.md, soup/my-soup/."
    )
    assert named in warnings[0]  # a user's directory is named, not entered


def test_demo_rerun_leaves_each_workflow_its_directory(tmp_path):
    """A user's file keeps a workflow's directory: its marker stays with it, so the workflow still accepts it (and
    leaves that file alone); the generate manifest goes, so a rerun with another seed is not refused."""
    from mpo_ray.demo.run import WORKFLOW_DIRS, _prepare_output

    out = tmp_path / "demo"
    _earlier_demo(out)
    for sub in WORKFLOW_DIRS:
        _write(out / sub / "mine.txt", "keep")
    _prepare_output(str(out))
    for sub, (kind, subdirs) in WORKFLOW_DIRS.items():
        assert check_ours(str(out / sub), kind, subdirs=subdirs), sub
        assert (out / sub / "mine.txt").read_text() == "keep"
    assert not (out / "generations" / "mpo" / META_DIR / "manifest.json").exists()
    assert not list((out / "generations" / "mpo").glob("*.parquet"))
    _prepare_output(str(out))  # and again: nothing of ours left, the user's files still there
    assert all((out / sub / "mine.txt").exists() for sub in WORKFLOW_DIRS)


@pytest.mark.parametrize("link", ["generations", "reweight/scores", "report.md", "generations/sweep/MPO.parquet"])
def test_demo_rerun_refuses_a_symlinked_artifact_path_and_removes_nothing(tmp_path, link):
    from mpo_ray.demo.run import _prepare_output

    out = tmp_path / "demo"
    _earlier_demo(out)
    elsewhere = tmp_path / "users-own"
    (out / link).rename(elsewhere)  # what the link points to is a user's, however it got its files
    (out / link).symlink_to(elsewhere, target_is_directory=elsewhere.is_dir())
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match="in it is a symbolic link") as exc:
        _prepare_output(str(out))
    assert f"{link.rsplit('/', 1)[-1]}' in it" in str(exc.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # not one file removed, here or through the link


def test_demo_rerun_refuses_a_users_file_in_the_soup_it_makes_anew(tmp_path):
    from mpo_ray.demo.run import _prepare_output

    out = tmp_path / "demo"
    _earlier_demo(out)
    _write(out / "soup" / "soup" / "notes.md", "mine")
    with pytest.raises(UserError, match="'soup/soup' holds notes.md"):
        _prepare_output(str(out))
    assert (out / "soup" / "soup" / "adapter_config.json").exists() and (out / "demo.json").exists()


def test_demo_rerun_refuses_a_users_file_under_a_sweep_output_name(tmp_path):
    """The sweep would regenerate over a file at its name that does not read back as its own: refused first."""
    from mpo_ray.demo.run import _prepare_output

    out = tmp_path / "demo"
    _earlier_demo(out)
    _theirs(out / "generations" / "sweep" / "uniform.parquet")
    with pytest.raises(UserError, match="generations/sweep/uniform.parquet is not a file mpo-ray wrote"):
        _prepare_output(str(out), sweep_files=("reference.parquet", "uniform.parquet", "MPO.parquet"))
    assert (out / "generations" / "sweep" / "MPO.parquet").exists() and (out / "demo.json").exists()


def test_demo_rerun_refuses_a_workflow_directory_the_workflow_would_refuse(tmp_path):
    from mpo_ray.demo.run import _prepare_output

    out = tmp_path / "demo"
    mark_ours(str(out), "demo")
    _write(out / "demo.json", "{}")
    _write(out / "reweight" / "weights.json", "mine")  # no reweight marker: not the workflow's
    with pytest.raises(UserError, match="was not made by `mpo-ray reweight`"):
        _prepare_output(str(out))
    assert (out / "reweight" / "weights.json").read_text() == "mine" and (out / "demo.json").exists()


def _scores(ids, shift):
    n, m = len(ids), 3
    rng = np.random.default_rng(len(ids))
    cols = {
        "prompt_id": [i for i in ids for _ in range(m)],
        "sample_idx": list(range(m)) * n,
        "logp_ref": rng.normal(-10, 1, n * m),
        "logp_proposal": rng.normal(-10, 1, n * m),
    }
    for k, name in enumerate(POLICIES):
        cols[f"logp_{name}"] = cols["logp_ref"] + rng.normal(0, 1, n * m) + (shift if k == 0 else 0)
    return pa.table(cols)


def test_solver_paths_reads_only_score_files_reweight_wrote(tmp_path):
    from mpo_ray.demo.findings import solver_paths

    scores, config = tmp_path / "reweight" / "scores", SimpleNamespace(policy_names=POLICIES)
    _ours(scores / "part-00000-0123456789ab.parquet", _scores(["a", "b", "c"], 0.0))
    alone = solver_paths(config, str(tmp_path))[0].weights
    _theirs(scores / "mine.parquet", _scores(["d", "e", "f", "g"], -30.0))  # would pull λ towards `concise`
    (scores / "part-00001-copy.parquet").write_bytes((scores / "part-00000-0123456789ab.parquet").read_bytes())
    np.testing.assert_allclose(solver_paths(config, str(tmp_path))[0].weights, alone)


def test_generate_agreement_reads_only_generates_files(tmp_path):
    from mpo_ray.demo.findings import generate_agreement

    table = pa.table({"prompt_id": ["a", "b"], "response": ["yes", "no"]})
    _ours(tmp_path / "generations" / "sweep" / "MPO.parquet", table)
    _ours(tmp_path / "generations" / "mpo" / "part.parquet", table)
    _theirs(tmp_path / "generations" / "mpo" / "zz-mine.parquet", pa.table({"prompt_id": ["a"], "response": ["mine"]}))
    assert generate_agreement(str(tmp_path)) == 1.0


# --- 2. train-demo-policies --output DIR ---------------------------------------------------------------------


def test_train_demo_policies_refuses_a_foreign_output_in_under_a_second_before_anything_loads(tmp_path):
    theirs = tmp_path / "theirs"
    _write(theirs / "README.md", "my readme")
    _write(theirs / "concise" / "notes.md", "my notes")
    code = (
        "import sys, time; from mpo_ray.cli import main; t = time.perf_counter(); "
        f"rc = main(['train-demo-policies', '--output', {str(theirs)!r}]); "
        "print(rc, time.perf_counter() - t, [m for m in ('torch', 'transformers', 'ray') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    rc, seconds, loaded = done.stdout.split(" ", 2)
    assert rc == "2" and float(seconds) < 1.0 and loaded.strip() == "[]", done
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "was not made by `mpo-ray train-demo-policies`" in err[0] and str(theirs) in err[0]
    assert (theirs / "README.md").read_text() == "my readme" and (
        theirs / "concise" / "notes.md"
    ).read_text() == "my notes"
    assert sorted(p.name for p in theirs.iterdir()) == ["README.md", "concise"]  # no marker either


def _digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_train_demo_policies_output_check(tmp_path):
    from mpo_ray.demo.policies import ADAPTER_DIR, KIND, check_output

    shipped = _digests(ADAPTER_DIR)
    assert check_output(ADAPTER_DIR) is True  # the shipped directory is ours by shipping, and stays unmarked
    assert _digests(ADAPTER_DIR) == shipped and not (ADAPTER_DIR / META_DIR).exists()
    assert check_output(tmp_path / "new") is False and not (tmp_path / "new").exists()
    ours = tmp_path / "ours"
    mark_ours(str(ours), KIND)
    _write(ours / "concise" / "adapter_config.json", "{}")
    assert check_output(ours) is False
    other = tmp_path / "other"
    mark_ours(str(other), "sweep")
    with pytest.raises(UserError, match="holds the output of `mpo-ray sweep`"):
        check_output(other)
    (ours / "relevant").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UserError, match="'relevant' in it is a symbolic link"):
        check_output(ours)


def test_train_demo_policies_replaces_an_adapter_file_by_file(tmp_path, caplog):
    from mpo_ray.demo.policies import install_adapter

    final = tmp_path / "out" / "concise"
    _write(final / "adapter_config.json", "old config")
    _write(final / "adapter_model.bin", "old weights, an older format")
    _write(final / "notes.md", "my notes")
    _write(final / "runs" / "log.txt", "my log")
    _write(tmp_path / "mine.json", "a user's file")
    (final / "adapter_model.safetensors").symlink_to(tmp_path / "mine.json")  # replaced, never written through
    new = tmp_path / "out" / ".concise-tmp"
    _write(new / "adapter_config.json", "new config")
    _write(new / "adapter_model.safetensors", "new weights")
    with caplog.at_level(logging.WARNING, logger="mpo_ray"):
        left = install_adapter(new, final)
    assert (final / "adapter_config.json").read_text() == "new config"
    assert (final / "adapter_model.safetensors").read_text() == "new weights"
    assert not (final / "adapter_model.safetensors").is_symlink()
    assert (tmp_path / "mine.json").read_text() == "a user's file"
    assert not (final / "adapter_model.bin").exists() and not new.exists()
    assert (final / "notes.md").read_text() == "my notes" and (final / "runs" / "log.txt").read_text() == "my log"
    assert left == ["notes.md", "runs"]
    assert any("notes.md" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    linked = tmp_path / "out" / "relevant"
    linked.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _write(new / "adapter_config.json", "new config")
    with pytest.raises(UserError, match="is a symbolic link"):
        install_adapter(new, linked)
    assert not (tmp_path / "elsewhere").exists()


def test_train_demo_policies_marks_its_output_and_replaces_adapters_file_by_file(tmp_path, monkeypatch):
    """The whole command with its models stood in for: a new directory gets the marker; in its own directory a rerun
    replaces the adapters' files and its report, and a user's files beside them stay."""
    import transformers

    import mpo_ray.demo.dpo as dpo
    import mpo_ray.models.decoding as decoding
    import mpo_ray.models.policies as model_policies
    from mpo_ray.demo import policies
    from mpo_ray.demo.policies import KIND, OBJECTIVES, TrainDemoConfig, train_demo_policies

    class Model:
        def save_pretrained(self, path):  # what peft writes
            for name, text in (("adapter_config.json", "{}"), ("adapter_model.safetensors", "new"), ("README.md", "")):
                (path / name).write_text(text)

    class Policy:
        pad_token_id = 0

        def __init__(self, name):
            self.name = name

        def encode_prompts(self, prompts):
            return [[1] for _ in prompts]

    class Mixed:
        def __init__(self, members, weights):
            pass

        def generate(self, prompts, **kw):
            return [SimpleNamespace(text="Yes!") for _ in prompts]

    monkeypatch.setattr(
        policies,
        "_self_samples",
        lambda ref, prompts, *a: [
            [SimpleNamespace(text="Yes!", token_ids=[1]), SimpleNamespace(text=f"{p} well", token_ids=[1, 2])]
            for p in prompts
        ],
    )
    monkeypatch.setattr(model_policies, "load_policies", lambda specs: [Policy(s.name) for s in specs])
    monkeypatch.setattr(model_policies, "resolve_model", lambda *a, **k: "base")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(dpo, "train_dpo", lambda *a, **k: (Model(), [{"loss": 0.5, "margin": 1.0, "accuracy": 1.0}]))
    monkeypatch.setattr(decoding, "MixedPolicy", Mixed)
    config = TrainDemoConfig(train_prompts=4, eval_prompts=2)

    new = tmp_path / "new"
    train_demo_policies(new, config, quiet=True)
    assert storage.read_json(str(new / OWNER_FILE))["kind"] == KIND
    assert sorted(p.name for p in new.iterdir()) == sorted([META_DIR, "README.md", "training.json", *OBJECTIVES])

    _write(new / "concise" / "notes.md", "my notes")
    _write(new / "my-runs" / "log.txt", "my log")
    (new / "concise" / "adapter_model.safetensors").write_text("old")
    train_demo_policies(new, config, quiet=True)
    assert (new / "concise" / "adapter_model.safetensors").read_text() == "new"
    assert (
        json.loads((new / "concise" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == policies.BASE_MODEL_ID
    )
    assert (new / "concise" / "notes.md").read_text() == "my notes" and (
        new / "my-runs" / "log.txt"
    ).read_text() == "my log"
    assert not [p for p in new.iterdir() if p.name.startswith(".")]  # no temporary adapter directory left
