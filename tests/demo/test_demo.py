"""`mpo-ray demo` and the shipped demo policies: clear errors fast, the whole demo end to end (slow)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpo_ray.cli import main
from mpo_ray.demo.policies import ADAPTER_DIR, OBJECTIVES, adapter_paths, demo_prompts
from mpo_ray.demo.run import CANDIDATES
from mpo_ray.io.artifact import WeightsRecord
from mpo_ray.io.schemas import GENERATION_SCHEMA


def test_the_shipped_adapters_and_corpus_are_there():
    paths = adapter_paths()
    for path in paths.values():
        cfg = json.loads((path / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert (path / "adapter_model.safetensors").stat().st_size < 5_000_000  # small enough to ship
    training = json.loads((ADAPTER_DIR / "training.json").read_text())
    assert all(training["moved_as_intended"][o] for o in OBJECTIVES), training["held_out_means"]
    rows = demo_prompts()
    assert len(rows) == 450 and len({r["prompt"] for r in rows}) == 450
    assert {r["split"] for r in rows} == {"train", "reweight", "eval"}
    assert [len(demo_prompts(s)) for s in ("train", "reweight", "eval")] == [200, 50, 200]
    # the held-out prompts added for --eval-prompts up to 200 are about topics no training prompt mentions
    train = " ".join(r["prompt"].lower() for r in demo_prompts("train"))
    assert not any(t in train for t in ("lighthouses", "glaciers", "origami", "submarines"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--quick", "--nope"], "unrecognized arguments: --nope"),
        (["demo", "--quick=yes"], "ignored explicit argument"),
    ],
)
def test_bad_flags_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_eval_prompts_out_of_range_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, before anything loads
        main(["demo", "--quick", "--eval-prompts", "0", "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "--eval-prompts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_output_locations_fail_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    assert main(["demo", "--quick", "--output", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["demo", "--quick", "--output", str(a_file / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.md").write_text("keep me")
    assert main(["demo", "--quick", "--output", str(theirs)]) == 2
    assert "was not made by `mpo-ray demo`" in capsys.readouterr().err
    assert (theirs / "notes.md").read_text() == "keep me" and a_file.read_text() == "mine"
    empty = tmp_path / "no-adapters"
    empty.mkdir()
    assert main(["demo", "--quick", "--adapters", str(empty), "--output", str(tmp_path / "out")]) == 2
    assert "train-demo-policies" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_rerun_removes_only_what_a_demo_wrote(tmp_path):
    from mpo_ray.demo.run import _prepare_output
    from mpo_ray.io import storage
    from mpo_ray.io.ownership import mark_ours

    out = tmp_path / "demo"
    mark_ours(str(out), "demo")
    mark_ours(str(out / "generations" / "sweep"), "sweep")
    storage.write_parquet(str(out / "generations" / "sweep" / "old.parquet"), pa.table({"x": [1]}))  # a sweep's file
    (out / "demo.json").write_text("{}")
    (out / "my-notes.txt").write_text("keep me")  # a user's file in the demo's directory
    _prepare_output(str(out))
    assert sorted(os.listdir(out)) == ["__mpo_ray__", "my-notes.txt"]
    assert (out / "my-notes.txt").read_text() == "keep me"


def test_a_directory_holding_only_a_file_named_demo_json_is_not_taken_for_a_demo(tmp_path):
    from mpo_ray.demo.run import _prepare_output

    out = tmp_path / "theirs"
    (out / "sub").mkdir(parents=True)
    (out / "demo.json").write_text("{}")
    (out / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match="was not made by `mpo-ray demo`"):
        _prepare_output(str(out))
    assert (out / "sub" / "data.csv").read_text() == "1,2" and (out / "demo.json").exists()


def test_the_demo_sweeps_each_policy_the_uniform_mix_its_grid_and_mpo():
    from mpo_ray.demo.run import SIZES, sweep_points

    names, mpo = list(OBJECTIVES), [0.2, 0.3, 0.5]
    assert sweep_points(names, SIZES["quick"], mpo) == {
        **{n: [float(n == m) for m in names] for n in names},
        "uniform": [1 / 3] * 3,
        "MPO": mpo,
    }
    grid = list(sweep_points(names, SIZES["default"], None))  # the vertices and the centre keep their names
    assert grid == [*names, "uniform", "w=0.5,0.5,0", "w=0.5,0,0.5", "w=0,0.5,0.5", "MPO"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "mpo-demo"
    assert main(["demo", "--quick", "--output", str(out)]) == 0
    summary = json.loads((out / "demo.json").read_text())
    assert summary["status"] == "done"
    for key in ("implicit_min", "min_win_rate"):  # MPO − the best other set, on both yardsticks
        head = summary["headline"][key]
        lo, hi = head["ci95"]
        assert lo <= head["mpo_minus_best_other"] <= hi and head["within_noise"] == (lo <= 0 <= hi)
        assert head["best_other"] != "MPO" and head["prompts"] == summary["size"]["eval_prompts"]
    kinds = {c["name"]: c["kind"] for c in summary["comparison"]}
    assert kinds["MPO"] == "mpo" and kinds["uniform"] == "uniform" and all(kinds[n] == "single" for n in OBJECTIVES)
    assert kinds["soup"] == "soup" and kinds["reference"] == "reference"
    assert (out / "soup" / "soup" / "adapter_model.safetensors").exists()
    for c in summary["comparison"]:
        assert c["implicit_min_ci95"][0] <= c["implicit_min"] <= c["implicit_min_ci95"][1], c
        assert c["min_win_rate_ci95"][0] <= c["min_win_rate"] <= c["min_win_rate_ci95"][1], c
    by_kind = {c["kind"]: c for c in summary["comparison"]}
    # untempered π_ref scored by π_ref: the decoder's log-probs and teacher forcing agree, so its KL is 0
    assert abs(by_kind["reference"]["kl"]) < 1e-3 and by_kind["mpo"]["kl"] > 0
    assert summary["best_grid"]["name"] in kinds
    cand = {c["name"]: c["candidates"] for c in summary["comparison"]}
    assert cand["MPO"] == cand["uniform"] == CANDIDATES > 1 and cand["reference"] == cand["soup"] == 1
    assert by_kind["mpo"]["kl_estimate"] == "target" and by_kind["reference"]["kl_estimate"] == "exact"
    assert summary["serving"]["mixtures"]["num_candidates"] == CANDIDATES
    assert (
        summary["serving"]["mixtures"]["decoding_cost"] == CANDIDATES
        and summary["serving"]["single models"]["mode"] == "one model"
    )
    assert 0 < summary["power"]["power"] < 1 and set(summary["primary"]) == {"uniform", "soup"}
    for c in summary["primary"].values():
        assert c["ci95"][0] <= c["mpo_minus"] <= c["ci95"][1] and c["detectable_80"] > 0
        assert c["within_noise"] == (c["ci95"][0] <= 0 <= c["ci95"][1])
    cal = summary["calibration"]  # λ̂'s predicted E[ℓ_k] against MPO's own samples
    assert set(cal["measured"]) == set(OBJECTIVES) and cal["apart"] == (cal["gap_ci95"][0] > 0) and cal["gap"] >= 0

    artifact = WeightsRecord.read(str(out / "reweight"))
    assert artifact.policies == list(OBJECTIVES) and abs(sum(artifact.weights) - 1) < 1e-9
    scores = pq.read_table(out / "reweight" / "scores")
    assert {f"logp_{p}" for p in OBJECTIVES} <= set(scores.column_names)
    assert scores.num_rows == summary["size"]["reweight_prompts"] * summary["size"]["samples_per_prompt"]

    eval_ids = [json.loads(line)["prompt_id"] for line in (out / "prompts" / "eval.jsonl").read_text().splitlines()]
    assert not (out / "generations" / "mpo").exists() and summary["generate_matches_sweep"] is None  # --quick skips it
    mpo = pq.read_table(out / "generations" / "sweep" / "MPO.parquet")
    assert (
        mpo.column_names[: len(GENERATION_SCHEMA)] == GENERATION_SCHEMA.names
        and mpo["weights_version"][0].as_py() == "MPO"
    )
    assert {"logp_ref", *(f"logp_{n}" for n in OBJECTIVES)} <= set(mpo.column_names)
    # mixtures are resampled among CANDIDATES: no closed-form sampling log-prob, π_λ's estimated one instead
    assert mpo["sample_logprob"].null_count == mpo.num_rows and mpo["target_logprob"].null_count == 0
    assert (
        pq.read_table(out / "generations" / "sweep" / f"{next(iter(OBJECTIVES))}.parquet")["sample_logprob"].null_count
        == 0
    )
    for name in ["reference", *OBJECTIVES, "uniform", "soup", "MPO"]:
        t = pq.read_table(out / "generations" / "sweep" / f"{name}.parquet")
        assert sorted(t["prompt_id"].to_pylist()) == sorted(eval_ids)

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert {p["name"] for p in evaluation["points"]} == set(kinds)

    report = (out / "report.md").read_text()
    for needle in (
        "Mixing weights",
        "min win rate",
        "objectives.png",
        "solver.png",
        "front.png",
        "paired bootstrap",
        "90% intervals",
        "MPO's own objective J",
        "Best fixed-weight mixture",
        "Calibration:",
        "Pre-registered comparisons and their power",
        "MPO − `uniform` on J",
        "bias-corrected",
        f"resample one of {CANDIDATES}",
    ):
        assert needle in report
    for png in ("solver.png", "objectives.png", "front.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
