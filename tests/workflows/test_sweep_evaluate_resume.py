"""Issue 21 catalogue: sweep points keyed by what produced them; evaluate reads only generations it can trust
and writes only over its own results.

The sweep tests run `run_sweep` for real on the tiny config with the generator actor and the Ray session faked
(`FakeWorker`): what is checked is which points a rerun generates, reuses or refuses, not decoding itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import TINY_CONFIG, generation_rows

from mpo_ray.config import load_config
from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.ownership import mark_ours
from mpo_ray.workflows import sweep, sweep_files
from mpo_ray.workflows.evaluate import read_generations

POINTS = {"a": [1.0, 0.0, 0.0], "b": [0.0, 0.5, 0.5]}


class FakeWorker:
    """Stands in for the generator actor: records which points it was asked for; rows name their settings."""

    def __init__(self, calls):
        self.calls = calls

    def generate(self, label, weights, ids, prompts, seeds, params, batch_size, score=()):
        self.calls.append(label)
        n = len(ids)
        return pa.table(
            {
                "prompt_id": ids,
                "prompt": prompts,
                "response": [f"{label} t={params['temperature']}"] * n,
                "error": pa.nulls(n, pa.string()),
            }
        )

    def kill(self):
        pass


@pytest.fixture
def fake_ray(monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "ray_session", lambda **kw: contextlib.nullcontext())
    monkeypatch.setattr(sweep, "start_generator", lambda config, specs: FakeWorker(calls))
    return calls


def _sweep(out, calls, config=None, points=POINTS, max_prompts=2, **kw):
    calls.clear()
    summary = sweep.run_sweep(
        config or load_config(TINY_CONFIG),
        output=str(out),
        points=dict(points),
        max_prompts=max_prompts,
        progress=False,
        **kw,
    )
    return sorted(calls), summary


def _fingerprint(uri):
    return pq.ParquetFile(uri).schema_arrow.metadata[storage.FINGERPRINT_KEY].decode()


# --- 1. sweep: a point is reused only when what produced it is unchanged --------------------------------


def test_sweep_rerun_regenerates_points_whose_settings_changed(tmp_path, fake_ray, caplog):
    out = tmp_path / "sweep"
    assert _sweep(out, fake_ray)[0] == ["a", "b", "reference"]
    assert _sweep(out, fake_ray)[0] == []  # nothing changed: every point reused

    caplog.set_level(logging.INFO, logger="mpo_ray")
    config = load_config(TINY_CONFIG).with_overrides({"generate.temperature": 0.5})
    generated, summary = _sweep(out, fake_ray, config)
    assert generated == ["a", "b", "reference"], "other decoding settings must not reuse old generations"
    assert "made with other decoding" in caplog.text
    assert summary["generation"]["temperature"] == 0.5
    assert pq.read_table(out / "a.parquet")["response"].to_pylist() == ["a t=0.5"] * 2  # the rows sweep.json states
    written = json.loads((out / "sweep.json").read_text())
    assert {p["name"]: p["fingerprint"] for p in written["points"]} == {
        label: _fingerprint(out / f"{label}.parquet") for label in ("reference", "a", "b")
    }

    for change in ({"generate.seed": 7}, {"generate.num_candidates": 2}):
        assert _sweep(out, fake_ray, config.with_overrides(change))[0] == ["a", "b", "reference"], change
    _sweep(out, fake_ray, config)
    caplog.clear()
    assert _sweep(out, fake_ray, config, max_prompts=3)[0] == ["a", "b", "reference"]  # another --max-prompts
    assert "made with other prompts" in caplog.text
    assert _sweep(out, fake_ray, config, points={**POINTS, "a": [0.0, 1.0, 0.0]}, max_prompts=3)[0] == ["a"]  # λ

    corpus = tmp_path / "prompts.jsonl"  # same ids, one text edited
    rows = [json.loads(line) for line in open(load_config(TINY_CONFIG).generate.prompts).read().splitlines()[:3]]
    rows[2]["prompt"] += " Please."
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    edited = config.with_overrides({"generate.prompts": str(corpus)})
    assert _sweep(out, fake_ray, edited, points={**POINTS, "a": [0.0, 1.0, 0.0]}, max_prompts=3)[0] == [
        "a",
        "b",
        "reference",
    ]


def test_sweep_point_fingerprint_names_each_part_that_produced_the_rows(tmp_path):
    """Models by content: an adapter retrained in place (same names and sizes) is another model; a zero weight
    (an added soup) changes no other point."""
    from mpo_ray.config import PolicySpec
    from mpo_ray.models.policies import resolve_model

    config = load_config(TINY_CONFIG)
    adapter = tmp_path / "lora-1"
    shutil.copytree(resolve_model("tiny:lora-1"), adapter)
    specs = [config.reference, config.policies[0].model_copy(update={"adapter": str(adapter)}), *config.policies[1:]]
    vectors = {"a": [0.0, 1.0, 0.0, 0.0], "b": [0.0, 0.0, 0.5, 0.5]}
    ids, prompts = ["p0", "p1"], ["x", "y"]
    decoding = dict.fromkeys(["a", "b", "soup"], {"temperature": 1.0, "seed": 0, "num_candidates": 1})
    before = sweep_files.point_fingerprints(specs, 3, vectors, ids, prompts, decoding)

    weights = adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained in place: same size
    weights.write_bytes(bytes(data))
    after = sweep_files.point_fingerprints(specs, 3, vectors, ids, prompts, decoding)
    assert {k for k in before["a"] if before["a"][k] != after["a"][k]} == {"models", "scorers"}
    assert {k for k in before["b"] if before["b"][k] != after["b"][k]} == {"scorers"}  # scored by the retrained one
    assert (
        sweep_files.point_fingerprints(specs, 3, vectors, ids, ["x", "y!"], decoding)["b"]["prompts"]
        != after["b"]["prompts"]
    )

    soup = PolicySpec(name="soup", model=config.reference.model, adapter=str(adapter))
    with_soup = sweep_files.point_fingerprints(
        [*specs, soup], 3, {"b": vectors["b"] + [0.0], "soup": [0.0] * 4 + [1.0]}, ids, prompts, decoding
    )
    assert with_soup["b"] == after["b"]
    assert with_soup["soup"]["weights"] != with_soup["b"]["weights"]


def test_sweep_points_are_mixtures_soups_and_models_served_alone(tmp_path, monkeypatch):
    """A point is π_ref (always there), a mixture of the K policies, a `Soup` made under soups/, or a PolicySpec
    served as it is; each model served alone takes a slot after the K policies, and the directory is marked once."""
    hosted, marks = [], []

    class Worker(FakeWorker):
        def generate(self, label, weights, *args, **kw):
            hosted.append((label, weights))
            return super().generate(label, weights, *args, **kw)

    monkeypatch.setattr(sweep, "ray_session", lambda **kw: contextlib.nullcontext())
    monkeypatch.setattr(
        sweep, "start_generator", lambda config, specs: hosted.append([s.name for s in specs]) or Worker([])
    )
    monkeypatch.setattr(sweep, "mark_ours", lambda *a, **kw: marks.append(a) or mark_ours(*a, **kw))
    config, out = load_config(TINY_CONFIG), tmp_path / "sweep"
    alone = config.policies[1].model_copy(update={"name": "alone"})
    points = {"a": [0.5, 0.5, 0.0], "soup": sweep.Soup([0.5, 0.25, 0.25]), "alone": alone}
    summary = sweep.run_sweep(config, output=str(out), points=points, max_prompts=2, progress=False)

    policies = [p.name for p in config.policies]
    assert hosted[0] == [config.reference.name, *policies, "soup", "alone"]
    assert dict(hosted[1:]) == {
        "reference": [1.0, 0, 0, 0, 0, 0],
        "a": [0, 0.5, 0.5, 0, 0, 0],
        "soup": [0, 0, 0, 0, 1.0, 0],
        "alone": [0, 0, 0, 0, 0, 1.0],
    }
    assert [(p["name"], p["weights"]) for p in summary["points"]] == [
        ("reference", None),
        ("a", [0.5, 0.5, 0.0]),
        ("soup", None),
        ("alone", None),
    ]
    assert json.loads((out / "soups" / "soup" / "soup.json").read_text())["weights"] == [0.5, 0.25, 0.25]
    assert marks == [(str(out), "sweep")]
    with pytest.raises(UserError, match=r"sweep point 'soup' has weights \[1, -1, 0\]; it needs 3 finite"):
        sweep.run_sweep(config, output=str(out), points={"soup": sweep.Soup([1, -1, 0])}, progress=False)


def test_sweep_refuses_a_users_file_at_a_points_name(tmp_path, fake_ray):
    out = tmp_path / "sweep"
    _sweep(out, fake_ray)
    mine = out / "a.parquet"
    pq.write_table(pa.table({"prompt_id": ["mine"], "prompt": ["q"], "response": ["my answer"]}), mine)  # no digest
    before = mine.read_bytes()
    with pytest.raises(UserError, match=r"a\.parquet is not a file mpo-ray's sweep wrote") as err:
        _sweep(out, fake_ray, load_config(TINY_CONFIG).with_overrides({"generate.temperature": 0.5}))
    assert "\n" not in str(err.value) and mine.read_bytes() == before and fake_ray == []
    shutil.copy(out / "b.parquet", mine)  # a copy of ours under another name is not ours either
    with pytest.raises(UserError, match=r"a\.parquet is not a file"):
        _sweep(out, fake_ray)
    mine.unlink()
    mine.symlink_to(out / "b.parquet")
    with pytest.raises(UserError, match=r"a\.parquet is not a file"):
        _sweep(out, fake_ray)


def _png(uri, summary):
    storage.write_bytes(uri, b"\x89PNG\r\n\x1a\n" + json.dumps([p["name"] for p in summary["points"]]).encode())


def test_sweep_json_and_front_png_are_replaced_only_when_the_sweeps_own(tmp_path, fake_ray):
    out = tmp_path / "sweep"
    _sweep(out, fake_ray, figure=_png)
    first = (out / "front.png").read_bytes()
    assert json.loads((out / "sweep.json").read_text())["format"] == "mpo-ray/sweep"
    _sweep(out, fake_ray, figure=_png, points={"c": [0.0, 0.0, 1.0]})  # ours: replaced
    assert (out / "front.png").read_bytes() != first and b'"c"' in (out / "front.png").read_bytes()

    (out / "front.png").write_bytes(b"\x89PNG\r\n\x1a\nmy own figure")
    with pytest.raises(UserError, match=r"front\.png there is not a figure mpo-ray's sweep drew"):
        _sweep(out, fake_ray, figure=_png)
    assert (out / "front.png").read_bytes() == b"\x89PNG\r\n\x1a\nmy own figure" and fake_ray == []
    (out / "front.png").unlink()
    (out / "sweep.json").write_text('{"my": "notes"}\n')
    with pytest.raises(UserError, match=r"sweep\.json there is not a summary mpo-ray's sweep wrote"):
        _sweep(out, fake_ray, figure=_png)
    assert (out / "sweep.json").read_text() == '{"my": "notes"}\n'


def test_a_soup_of_adapters_retrained_in_place_is_never_reused(tmp_path):
    """The soup's adapters count by content: a retrained one refuses the old soup (as another λ does),
    never serves it."""
    from mpo_ray.models.policies import resolve_model

    config = load_config(TINY_CONFIG)
    policies = []
    for i, p in enumerate(config.policies):
        shutil.copytree(resolve_model(p.adapter), tmp_path / f"lora-{i}")
        policies.append(p.model_copy(update={"adapter": str(tmp_path / f"lora-{i}")}))
    config = config.model_copy(update={"policies": policies})
    soups = tmp_path / "soups"
    spec = sweep.soup_specs(config, str(soups), {"soup": [0.5, 0.25, 0.25]})["soup"]
    assert sweep.soup_specs(config, str(soups), {"soup": [0.5, 0.25, 0.25]})["soup"] == spec  # resumed: reused
    made = (soups / "soup" / "adapter_model.safetensors").read_bytes()
    weights = tmp_path / "lora-0" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # retrained in place: same names and sizes
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"soup .* exists and was made from other adapters .*; delete it") as err:
        sweep.soup_specs(config, str(soups), {"soup": [0.5, 0.25, 0.25]})
    assert "\n" not in str(err.value) and (soups / "soup" / "adapter_model.safetensors").read_bytes() == made
    shutil.rmtree(soups / "soup")
    sweep.soup_specs(config, str(soups), {"soup": [0.5, 0.25, 0.25]})  # deleted: made again from the new adapters
    assert (soups / "soup" / "adapter_model.safetensors").read_bytes() != made


# --- 2. evaluate: reads only what it can trust; writes only over its own results ------------------------


def gen_table(ids, responses=None):
    return generation_rows(ids, responses=responses)


def test_evaluate_refuses_a_generation_file_changed_since_written(tmp_path):
    uri = str(tmp_path / "part-0.parquet")
    storage.write_parquet(uri, gen_table(["p0", "p1"]))
    copy = tmp_path / "mine.parquet"
    shutil.copy(uri, copy)
    assert read_generations(str(copy)).num_rows == 2  # a renamed copy is read: its values still match
    table = pq.read_table(uri)
    edited = table.set_column(2, "response", pa.array(["better", "answers"]))  # the footer's digest kept
    pq.write_table(edited, uri)
    with pytest.raises(UserError, match=r"part-0\.parquet does not match the digest") as err:
        read_generations(uri)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not match the digest"):
        read_generations(str(tmp_path))
    pq.write_table(edited.replace_schema_metadata(None), uri)  # a user's own file: nothing to verify against
    assert read_generations(uri)["response"].to_pylist() == ["better", "answers"]


def test_evaluate_refuses_a_prompt_id_in_two_files(tmp_path):
    out = tmp_path / "gens"
    storage.write_parquet(str(out / "part-0.parquet"), gen_table(["p0", "p1"]))
    storage.write_parquet(str(out / "part-1.parquet"), gen_table(["p2", "p3"]))
    assert read_generations(str(out)).num_rows == 4
    shutil.copy(out / "part-1.parquet", out / "part-1 (copy).parquet")  # a user's backup beside the original
    with pytest.raises(UserError, match=r"prompt id 'p2' is in both .*part-1 \(copy\)\.parquet and .*part-1\.parquet"):
        read_generations(str(out))


def test_evaluate_refuses_a_reweight_scores_directory_and_a_whole_sweep(tmp_path, capsys):
    from mpo_ray.cli import main

    run = tmp_path / "run"
    scores = pa.table({"prompt_id": ["p0", "p0"], "sample_idx": [0, 1], "prompt": ["q", "q"], "response": ["a", "b"]})
    storage.write_parquet(str(run / "scores" / "part-00000-abc.parquet"), scores)
    mark_ours(str(run), "reweight")
    for given in (run / "scores", run / "scores" / "part-00000-abc.parquet"):
        with pytest.raises(UserError, match=r"are not generations: .* is the output of `mpo-ray reweight`"):
            read_generations(str(given))
    assert main(["evaluate", TINY_CONFIG, str(run / "scores")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "mpo-ray reweight" in line

    swept = tmp_path / "sweep"
    storage.write_parquet(str(swept / "MPO.parquet"), gen_table(["p0"]))
    storage.write_parquet(str(swept / "reference.parquet"), gen_table(["p0"]))
    mark_ours(str(swept), "sweep")
    with pytest.raises(UserError, match="are a whole sweep"):
        read_generations(str(swept))
    assert read_generations(str(swept / "MPO.parquet")).num_rows == 1
    generated = tmp_path / "gen"
    storage.write_parquet(str(generated / "part-0.parquet"), gen_table(["p0"]))
    mark_ours(str(generated), "generate")
    assert read_generations(str(generated)).num_rows == 1


def test_evaluate_output_refuses_a_file_it_did_not_write_and_a_directory(tmp_path, capsys, monkeypatch):
    from mpo_ray.cli import main
    from mpo_ray.io.artifact import WeightsRecord
    from mpo_ray.workflows import evaluate

    ours = str(tmp_path / "ours.parquet")
    storage.write_parquet(ours, gen_table(["p0", "p1"]))
    weights = tmp_path / "weights.json"
    WeightsRecord.build(version="v", policies=["a", "b"], weights=[0.5, 0.5], beta=0.1).write(str(weights))
    sealed = weights.read_bytes()
    scored = []
    real = evaluate.score_generations
    monkeypatch.setattr(evaluate, "score_generations", lambda *a: scored.append(1) or real(*a))
    for target, match in ((weights, "exists and is not an evaluation mpo-ray wrote"), (tmp_path, "is a directory")):
        assert main(["evaluate", TINY_CONFIG, ours, "--output", str(target)]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert match in line and str(target) in line
    assert not scored, "scoring started before the output was checked"
    assert weights.read_bytes() == sealed and not list(tmp_path.glob("_tmp-*"))

    results = tmp_path / "results.json"
    assert main(["evaluate", TINY_CONFIG, ours, "--output", str(results)]) == 0
    assert main(["evaluate", TINY_CONFIG, ours, "--output", str(results)]) == 0  # its own file: replaced
    assert json.loads(results.read_text())["format"] == "mpo-ray/evaluation"
