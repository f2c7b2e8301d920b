"""Bulk generation with Ray Data on local Ray, tiny models from workflows/configs/tiny.yaml."""

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from tiny import TINY_CONFIG

from mpo_ray.cli import main
from mpo_ray.config import load_config
from mpo_ray.core.seeds import derive_seed, prompt_id
from mpo_ray.io.ownership import META_DIR
from mpo_ray.io.schemas import GENERATION_SCHEMA
from mpo_ray.runtime.resources import Placement
from mpo_ray.workflows.generate import generate

WEIGHTS = [0.5, 0.3, 0.2]
TOPICS = ["mountains", "rivers", "a city", "birds", "bread", "the sea", "music", "winter"]


def corpus_rows(n: int, with_ids: bool = True) -> list[dict]:
    rows = [
        {"prompt": f"Question {i}: tell me {'something ' * (i % 5)}about {TOPICS[i % len(TOPICS)]}."} for i in range(n)
    ]
    return [{"prompt_id": f"p{i:05d}", **r} if with_ids else r for i, r in enumerate(rows)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tiny(prompts: str, **overrides):
    """tiny.yaml on ``prompts`` with explicit weights, unless the overrides name a weights artifact."""
    weights = {} if "generate.weights_uri" in overrides else {"generate.weights": WEIGHTS}
    return load_config(
        TINY_CONFIG,
        overrides={
            "generate.prompts": prompts,
            **weights,
            "generate.max_new_tokens": 8,
            "generate.batch_size": 8,
            "generate.rows_per_file": 16,
            **overrides,
        },
    )


@functools.cache
def mixed_policy():
    from mpo_ray.models.decoding import MixedPolicy
    from mpo_ray.models.policies import load_policies

    return MixedPolicy(load_policies(load_config(TINY_CONFIG).policies), WEIGHTS)


def direct(config, ids, prompts) -> dict:
    """What MixedPolicy.generate gives for these prompts in one in-process call, with the pipeline's per-row seeds."""
    g = config.generate
    gens = mixed_policy().generate(
        prompts,
        seed=[derive_seed(g.seed, i) for i in ids],
        **g.params(),
        stop=g.stop,
        num_candidates=g.num_candidates,
    )
    return {i: (x.text, x.num_tokens, x.finish_reason) for i, x in zip(ids, gens)}


def read_output(out) -> pa.Table:
    table = pq.read_table(out)
    assert table.schema.equals(GENERATION_SCHEMA), table.schema
    ids = table.column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids)), "a prompt appears more than once"
    return table


def by_id(table) -> dict:
    return {r["prompt_id"]: (r["response"], r["num_tokens"], r["finish_reason"]) for r in table.to_pylist()}


def check_readers(out, n):
    """pyarrow, pandas and `datasets` read the directory, skipping __mpo_ray__/ (summary, manifest, staging)."""
    import datasets
    import pandas as pd

    assert pq.read_table(out).num_rows == n
    assert len(pd.read_parquet(out)) == n
    assert datasets.load_dataset("parquet", data_dir=str(out), split="train").num_rows == n
    assert datasets.load_dataset(str(out), split="train").num_rows == n


# --------------------------------------------------------------------------- #
# End to end
# --------------------------------------------------------------------------- #


def test_fifty_prompts_once_each_and_same_texts_as_direct_decoding(local_ray, tmp_path):
    rows = corpus_rows(50, with_ids=False)
    duplicated = rows + [rows[3]]  # the same text twice: one id, so one row in the output
    config = tiny(write_jsonl(tmp_path / "corpus.jsonl", duplicated), **{"generate.num_candidates": 2})
    out = tmp_path / "out"
    summary = generate(config.with_overrides({"generate.output": str(out)}), progress=False)
    table = read_output(out)
    prompts = [r["prompt"] for r in rows]
    ids = [prompt_id(p) for p in prompts]  # a corpus without ids gets sha256(text)[:16]
    assert sorted(table.column("prompt_id").to_pylist()) == sorted(ids)
    assert by_id(table) == direct(config, ids, prompts)  # one batch of 50 here, batches of 8 on the replica
    assert set(table.column("weights_version").to_pylist()) == {summary["weights_version"]}
    assert summary["weights_version"].startswith("explicit:")
    assert table.column("error").null_count == 50
    check_readers(out, 50)
    on_disk = json.loads((out / META_DIR / "summary.json").read_text())
    assert on_disk["rows"] == summary["rows"] == 50 and summary["errors"] == 0
    assert summary["generated_tokens"] == sum(table.column("num_tokens").to_pylist()) > 0
    assert summary["tokens_per_s"] > 0 and summary["wall_s"] > 0
    assert Placement(**on_disk["placement"]).replicas >= 1  # the replicas' plan, recorded as the type's own fields
    assert not (out / META_DIR / "staging").exists()

    # Rerun after losing a file: only its prompts are generated again, with the same texts.
    first = by_id(table)
    files = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
    lost = pq.read_table(out / files[0]).num_rows
    os.remove(out / files[0])
    again = generate(config.with_overrides({"generate.output": str(out)}), progress=False)
    assert again["rows"] == lost and again["skipped"] == 50 - lost
    assert by_id(read_output(out)) == first


def write_artifact(path, version="20260101T000000Z-abc") -> str:
    """A weights artifact naming the policies in another order than the config."""
    path.write_text(
        json.dumps(
            {
                "format": "mpo-ray/weights",
                "format_version": 1,
                "version": version,
                "policies": ["upbeat", "concise", "detailed"],
                "weights": [0.2, 0.5, 0.3],
                "beta": 0.1,
                "objective": "maxmin",
            }
        )
    )
    return str(path)


def test_bad_rows_are_written_with_their_error_and_the_artifact_version(local_ray, tmp_path):
    rows = corpus_rows(12)
    rows[2]["prompt"] = 42
    rows[5]["prompt"] = None
    rows[7]["prompt"] = "   "
    rows[9]["prompt"] = "word " * 400  # over the tiny models' 256-token context
    config = tiny(write_jsonl(tmp_path / "corpus.jsonl", rows), **{"generate.batch_size": 12})
    artifact = write_artifact(tmp_path / "weights.json")
    summary = generate(
        config.with_overrides({"generate.output": str(tmp_path / "out"), "generate.weights_uri": artifact}),
        progress=False,
    )
    table = read_output(tmp_path / "out")
    assert set(table.column("weights_version").to_pylist()) == {"20260101T000000Z-abc"}
    by_row = {r["prompt_id"]: r for r in table.to_pylist()}
    bad = {"p00002": "got int 42", "p00005": "got NoneType", "p00007": "non-empty string", "p00009": "context of 256"}
    for pid, message in bad.items():
        row = by_row[pid]
        assert message in row["error"] and row["response"] == "" and row["num_tokens"] == 0
        assert row["finish_reason"] is None and row["log_normalizer"] is None
    assert by_row["p00002"]["prompt"] == "42"
    good = [r for r in rows if r["prompt_id"] not in bad]
    got = {k: v for k, v in by_id(table).items() if k not in bad}
    assert got == direct(
        config, [r["prompt_id"] for r in good], [r["prompt"] for r in good]
    )  # same λ, reordered by name
    assert summary["errors"] == 4 and summary["rows"] == 12
    with pytest.raises(ValueError, match=r"other settings \(changed: \['max_new_tokens'\]\)"):
        generate(
            tiny(
                config.generate.prompts,
                **{
                    "generate.max_new_tokens": 9,
                    "generate.output": str(tmp_path / "out"),
                    "generate.weights_uri": artifact,
                },
            ),
            progress=False,
        )


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "fmt", ["parquet", "file-url", pytest.param("csv", marks=SLOW), pytest.param("datasets", marks=SLOW)]
)
def test_corpus_formats(local_ray, tmp_path, fmt):
    rows = corpus_rows(6)
    table = pa.Table.from_pylist(rows)
    if fmt == "parquet":
        uri = str(tmp_path / "corpus.parquet")
        pq.write_table(table, uri)
    elif fmt == "csv":
        uri = str(tmp_path / "corpus.csv")
        pacsv.write_csv(table, uri)
    elif fmt == "datasets":
        import datasets

        uri = str(tmp_path / "corpus_ds")
        datasets.Dataset(table).save_to_disk(uri)
    else:
        uri = "file://" + write_jsonl(tmp_path / "corpus.jsonl", rows)
    config = tiny(uri)
    generate(config.with_overrides({"generate.output": str(tmp_path / "out")}), progress=False)
    assert by_id(read_output(tmp_path / "out")) == direct(
        config, [r["prompt_id"] for r in rows], [r["prompt"] for r in rows]
    )


# --------------------------------------------------------------------------- #
# Input errors: clear, early, and nothing written
# --------------------------------------------------------------------------- #


def test_bad_corpora_and_weights_fail_clearly_and_leave_nothing(local_ray, tmp_path):
    out = tmp_path / "out"
    missing = write_jsonl(tmp_path / "text.jsonl", [{"text": "hi", "id": 1}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_rows = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), no_rows)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": "no closing brace"\n')
    cases = [
        (tiny(missing), r"has no column 'prompt'; its columns are \['text', 'id'\]"),
        (tiny(str(empty)), "is an empty file"),
        (tiny(str(no_rows)), "is empty"),
        (tiny(str(broken)), "line 2 is not JSON"),
        (tiny(str(tmp_path / "nope.jsonl")), "does not exist"),
        (tiny("nosuchproto://bucket/corpus.jsonl"), "cannot open"),
        (tiny(missing, **{"generate.weights": None}), "no mixing weights"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(config.with_overrides({"generate.output": str(out)}), progress=False)
        assert not out.exists()
    artifact = tmp_path / "weights.json"
    artifact.write_text(
        json.dumps(
            {
                "format": "mpo-ray/weights",
                "format_version": 1,
                "version": "v1",
                "policies": ["a", "b"],
                "weights": [0.5, 0.5],
                "beta": 0.1,
                "objective": "maxmin",
            }
        )
    )
    with pytest.raises(ValueError, match=r"is for policies \['a', 'b'\]"):
        generate(
            tiny(missing).with_overrides({"generate.output": str(out), "generate.weights_uri": str(artifact)}),
            progress=False,
        )
    with pytest.raises(ValueError, match="not an mpo-ray weights artifact"):
        generate(
            tiny(missing).with_overrides({"generate.output": str(out), "generate.weights_uri": missing}), progress=False
        )
    assert not out.exists()


def test_cli_reports_input_errors_in_one_line(tmp_path, capsys):
    cfg = yaml.safe_load(open(TINY_CONFIG))
    cfg["generate"].update(prompts=str(tmp_path / "missing.jsonl"), weights_uri=None, weights=WEIGHTS)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["generate", str(path), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(path), "--weights", str(tmp_path / "w.json"), "--quiet"]) == 2
    assert "run `mpo-ray reweight` (or `mpo-ray nightly`) first" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# Faults (slow): 1,000 prompts, a killed replica, a killed driver
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_thousand_prompts(local_ray, tmp_path):
    rows = corpus_rows(1000)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus.parquet")
    config = tiny(str(tmp_path / "corpus.parquet"), **{"generate.batch_size": 32, "generate.rows_per_file": 200})
    summary = generate(config.with_overrides({"generate.output": str(tmp_path / "out")}), progress=False)
    table = read_output(tmp_path / "out")
    assert summary["rows"] == table.num_rows == 1000
    check_readers(tmp_path / "out", 1000)
    assert by_id(table) == direct(config, [r["prompt_id"] for r in rows], [r["prompt"] for r in rows])


def staged_files(out) -> list[str]:
    root = os.path.join(out, META_DIR, "staging")
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet")]


def wait_for(condition, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"no {what} after {timeout}s")


@pytest.mark.slow
def test_killing_a_generation_actor_mid_run(local_ray, tmp_path):
    from ray._raylet import ActorID

    rows = corpus_rows(160)
    config = tiny(write_jsonl(tmp_path / "corpus.jsonl", rows), **{"generate.rows_per_file": 8})
    out = str(tmp_path / "out")
    killed = []

    def killer():
        wait_for(lambda: staged_files(out), what="staged file")
        # The GCS actor table: ray.util.state.list_actors needs the dashboard, which this cluster runs without.
        for actor_id, a in ray._private.state.actors().items():
            if "GenerationWorker" in a["ActorClassName"] and a["State"] == "ALIVE":
                handle = ray._private.worker.global_worker.core_worker.get_actor_handle(ActorID.from_hex(actor_id))
                ray.kill(handle, no_restart=False)  # Ray restarts it and retries its batch in flight
                killed.append(actor_id)
                return

    thread = threading.Thread(target=killer)
    thread.start()
    generate(config.with_overrides({"generate.output": out}), progress=False)
    thread.join()
    assert killed, "no generation actor found to kill"
    assert ray._private.state.actors()[killed[0]]["NumRestarts"] >= 1
    assert by_id(read_output(out)) == direct(config, [r["prompt_id"] for r in rows], [r["prompt"] for r in rows])


@pytest.mark.slow
def test_stopped_run_resumes_without_duplicates(local_ray, tmp_path):
    rows = corpus_rows(240)
    cfg = yaml.safe_load(open(TINY_CONFIG))
    cfg["generate"].update(
        prompts=write_jsonl(tmp_path / "corpus.jsonl", rows),
        weights_uri=None,
        weights=WEIGHTS,
        max_new_tokens=8,
        batch_size=8,
        rows_per_file=8,
    )
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = str(tmp_path / "out")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpo_ray.cli", "generate", str(cfg_path), "--output", out, "--quiet"], env=env
    )
    try:
        wait_for(lambda: len(staged_files(out)) >= 2, what="two staged files")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not [f for f in os.listdir(out) if f.endswith(".parquet")], "files were promoted before the run ended"
    config = load_config(str(cfg_path))
    summary = generate(config.with_overrides({"generate.output": out}), progress=False)
    assert 0 < summary["skipped"] < 240 and summary["rows"] == 240 - summary["skipped"]
    assert by_id(read_output(out)) == direct(config, [r["prompt_id"] for r in rows], [r["prompt"] for r in rows])
