"""The fault-and-input catalogue: a user's files are never destroyed, bad input fails before work starts.

Each test is one case, named by what it proves. Nothing here starts Ray: every
refusal must come before any actor does.
"""

import os

import pytest
import ray
from tiny import TINY_CONFIG

from mpo_ray.config import load_config
from mpo_ray.io.artifact import WeightsRecord
from mpo_ray.io.ownership import mark_ours
from mpo_ray.io.store import WeightsStore


def foreign_dir(path, files=("report.md", "weights.json")):
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text(f"the user's {name}")
    return path


def untouched(path, files=("report.md", "weights.json")):
    return sorted(os.listdir(path)) == sorted(files) and all(
        (path / name).read_text() == f"the user's {name}" for name in files
    )


def test_reweight_refuses_a_directory_it_did_not_make_and_leaves_it_intact(tmp_path):
    from mpo_ray.workflows.reweight import reweight

    theirs = foreign_dir(tmp_path / "theirs")
    with pytest.raises(
        ValueError, match=r"is not empty \(report.md, weights.json\) and was not made by `mpo-ray reweight`"
    ):
        reweight(load_config(TINY_CONFIG, overrides={"reweight.output": str(theirs)}), progress=False)
    assert untouched(theirs) and not ray.is_initialized()


def test_generate_refuses_another_workflows_output(tmp_path):
    from mpo_ray.workflows.generate import generate

    other = tmp_path / "rw"
    mark_ours(str(other), "reweight")
    config = load_config(TINY_CONFIG, overrides={"generate.output": str(other), "generate.weights": [0.5, 0.3, 0.2]})
    with pytest.raises(ValueError, match="holds the output of `mpo-ray reweight`, not of `mpo-ray generate`"):
        generate(config, progress=False)
    assert os.listdir(other) == ["__mpo_ray__"] and not ray.is_initialized()


def test_sweep_refuses_a_directory_it_did_not_make(tmp_path):
    from mpo_ray.workflows.sweep import run_sweep

    theirs = foreign_dir(tmp_path / "theirs", files=("notes.txt",))
    with pytest.raises(ValueError, match="was not made by `mpo-ray sweep`"):
        run_sweep(
            load_config(TINY_CONFIG), output=str(theirs), points={"a": [1.0, 0.0, 0.0]}, max_prompts=2, progress=False
        )
    assert untouched(theirs, files=("notes.txt",)) and not ray.is_initialized()


def test_a_file_as_output_is_refused(tmp_path):
    from mpo_ray.workflows.reweight import reweight

    target = tmp_path / "out.txt"
    target.write_text("the user's file")
    with pytest.raises(ValueError, match="is a file"):
        reweight(load_config(TINY_CONFIG, overrides={"reweight.output": str(target)}), progress=False)
    assert target.read_text() == "the user's file"


def test_nightly_refuses_a_store_location_it_did_not_make(tmp_path):
    from mpo_ray.workflows.nightly import plan_night

    theirs = foreign_dir(tmp_path / "theirs", files=("data.csv",))
    with pytest.raises(ValueError, match="weights store .* was not made by `mpo-ray nightly`"):
        plan_night(load_config(TINY_CONFIG, overrides={"nightly.store": str(theirs), "nightly.night": "2025-06-01"}))
    assert untouched(theirs, files=("data.csv",))


def test_a_store_pointer_cannot_lead_outside_the_store(tmp_path):
    store = WeightsStore(str(tmp_path / "store"))
    store.write_version("n1", WeightsRecord.build(version="n1", policies=["a"], weights=[1.0], beta=0.1))
    store.promote("n1", expected=None)
    outside = tmp_path / "x"
    WeightsRecord.build(version="evil", policies=["a"], weights=[1.0], beta=0.1).write(str(outside / "weights.json"))
    import json

    from mpo_ray.io import storage

    pointer = tmp_path / "store" / "latest.json"
    forged = {**json.loads(pointer.read_text()), "weights": "../x/weights.json"}
    pointer.write_text(json.dumps(storage.sealed(forged)))  # a well-formed, sealed pointer that leads outside
    with pytest.raises(ValueError, match="refusing to follow it"):
        WeightsRecord.read(store.uri)


@pytest.mark.parametrize(
    "weights, match",
    [
        ([float("nan"), 1.0, 0.0], "must be finite, non-negative and not all zero"),
        ([0.0, 0.0, 0.0], "must be finite, non-negative and not all zero"),
        ([-0.5, 1.0, 0.5], "must be finite, non-negative and not all zero"),
        ([0.5, 0.5], "names 3 policies but has 2 weights"),
    ],
)
def test_bad_weights_artifacts_fail_before_generation_starts(tmp_path, weights, match):
    import json

    from mpo_ray.workflows.generate import generate

    path = tmp_path / "weights.json"
    path.write_text(
        json.dumps(
            {
                "format": "mpo-ray/weights",
                "format_version": 1,
                "version": "v",
                "beta": 0.1,
                "objective": "maxmin",
                "policies": ["concise", "detailed", "upbeat"],
                "weights": weights,
            }
        )
    )
    config = load_config(
        TINY_CONFIG, overrides={"generate.output": str(tmp_path / "out"), "generate.weights_uri": str(path)}
    )
    with pytest.raises(ValueError, match=match):
        generate(config, progress=False)
    assert not (tmp_path / "out").exists() and not ray.is_initialized()


@pytest.mark.parametrize(
    "version, match", [('"1"', "format_version must be a positive integer"), ("2", "reads up to 1. Upgrade mpo-ray")]
)
def test_weights_artifact_format_versions(tmp_path, version, match):
    path = tmp_path / "weights.json"
    path.write_text(
        f'{{"format": "mpo-ray/weights", "format_version": {version}, "version": "v", "beta": 0.1, '
        '"objective": "maxmin", "policies": ["a"], "weights": [1.0]}'
    )
    with pytest.raises(ValueError, match=match):
        WeightsRecord.read(str(path))


def test_a_prompt_too_long_for_the_context_is_named_by_its_row_before_ray_starts(tmp_path):
    import json

    from mpo_ray.workflows.reweight import reweight

    corpus = tmp_path / "prompts.jsonl"
    rows = [{"prompt_id": "ok", "prompt": "hello"}, {"prompt_id": "long-one", "prompt": "word " * 400}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        TINY_CONFIG, overrides={"reweight.prompts": str(corpus), "reweight.output": str(tmp_path / "out")}
    )
    with pytest.raises(
        ValueError, match=r"prompts.jsonl', row 1 \(id 'long-one'\): prompt is \d+ tokens once formatted"
    ):
        reweight(config, progress=False)
    assert not (tmp_path / "out").exists() and not ray.is_initialized()


def test_score_files_that_changed_on_disk_are_never_read_back_as_valid(tmp_path):
    """Every one-bit flip of a score-table file either reads back the same values or is refused as corrupt."""
    import numpy as np
    import pyarrow as pa

    from mpo_ray.io import storage

    table = pa.table(
        {
            "prompt_id": ["a", "a", "b"],
            "sample_idx": pa.array([0, 1, 0], pa.int32()),
            "logp_ref": [-1.5, -2.25, -3.0],
            "logp_p": [-1.0, -2.0, -4.0],
        }
    )
    uri = str(tmp_path / "part.parquet")
    storage.write_parquet(uri, table)
    clean = (tmp_path / "part.parquet").read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"same": 0, "refused": 0}
    for bit in rng.choice(len(clean) * 8, size=300, replace=False):
        flipped = bytearray(clean)
        flipped[bit // 8] ^= 1 << (bit % 8)
        (tmp_path / "part.parquet").write_bytes(bytes(flipped))
        try:
            back = storage.read_parquet(uri, verify=True)
        except storage.CorruptFile:
            outcomes["refused"] += 1
            continue
        assert back.replace_schema_metadata(None).equals(table), f"bit {bit} changed the values silently"
        outcomes["same"] += 1
    assert outcomes["refused"] > 0


@pytest.mark.parametrize(
    "name, content, match",
    [
        (
            "unclosed.csv",
            b'prompt_id,prompt\n1,"unclosed quote\n2,next row\n3,third\n',
            r"row 0, column 'prompt' spans several lines \(an unclosed quote",
        ),
        ("latin1.csv", b"prompt_id,prompt\n1,fine\n2,caf\xe9\n", r"line 3 is not UTF-8 text"),
        ("latin1.jsonl", b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n', r"line 2 is not UTF-8 text"),
        ("list.jsonl", b'{"prompt": "fine"}\n["not", "an", "object"]\n', r"line 2 is a JSON list, not an object"),
        ("broken.jsonl", b'{"prompt": "fine"}\n{"prompt": "no closing brace"\n', r"line 2 is not JSON"),
        (
            "dup.jsonl",
            b'{"prompt_id": 1, "prompt": "one"}\n{"prompt_id": 2, "prompt": "two"}\n'
            b'{"prompt_id": 1, "prompt": "uno"}\n',
            r"rows 0 and 2 share the id '1' but not their text",
        ),
        (
            "dup-types.jsonl",
            b'{"prompt_id": 1, "prompt": "one"}\n{"prompt_id": "1", "prompt": "uno"}\n',
            r"rows 0 and 1 share the id '1' but not their text",
        ),
    ],
)
def test_corpora_that_would_be_misread_are_refused_before_ray_starts(tmp_path, name, content, match):
    from mpo_ray.workflows.generate import generate

    corpus = tmp_path / name
    corpus.write_bytes(content)
    config = load_config(
        TINY_CONFIG,
        overrides={
            "generate.prompts": str(corpus),
            "generate.output": str(tmp_path / "out"),
            "generate.weights": [0.5, 0.3, 0.2],
        },
    )
    with pytest.raises(ValueError, match=match):
        generate(config, progress=False)
    assert not (tmp_path / "out").exists() and not ray.is_initialized()
    if "dup" not in name:  # reweight reads corpora with the same reader
        from mpo_ray.workflows.reweight import reweight

        with pytest.raises(ValueError, match=match):
            reweight(
                config.with_overrides({"reweight.prompts": str(corpus), "reweight.output": str(tmp_path / "rw")}),
                progress=False,
            )


def test_a_batch_of_only_bad_rows_becomes_error_rows(tmp_path):
    """Empty, non-text and over-long prompts: every row comes back with its reason; nothing raises."""
    from mpo_ray.models.generator import BatchGenerator
    from mpo_ray.testing import build_tiny_family
    from mpo_ray.workflows.generate import prepare_rows

    specs = build_tiny_family(tmp_path / "tiny", 2, kind="lora")
    prepared = prepare_rows(
        {"prompt": ["", b"\x00\xff binary", None, 7]},
        prompt_column="prompt",
        id_column="prompt_id",
        seed=0,
        done=frozenset(),
    )
    generator = BatchGenerator(specs, threads=1)
    params = {"max_new_tokens": 4, "temperature": 1.0, "top_k": None, "top_p": None, "stop": [], "num_candidates": 1}
    rows = generator.rows(
        prepared["prompt_id"].to_pylist(),
        prepared["prompt"].to_pylist(),
        prepared["seed"].to_pylist(),
        [0.5, 0.5],
        params,
        "v1",
        prepared["error"].to_pylist(),
    )
    assert rows.num_rows == 4 and all(e and "must be a non-empty string" in e for e in rows["error"].to_pylist())
    long = generator.rows(["a", "b"], ["word " * 2000, "hi"], [1, 2], [0.5, 0.5], params, "v1")
    errors = long["error"].to_pylist()
    assert "over the model's context" in errors[0] and errors[1] is None and long["response"].to_pylist()[0] == ""


def test_a_policy_retrained_in_place_gets_a_new_identity(tmp_path):
    """Same file names and sizes, other weights: the identity (and so every score fingerprint) changes."""
    from mpo_ray.config import PolicySpec
    from mpo_ray.io.provenance import model_identity

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\x01" * 64)
    spec = PolicySpec(name="p", model=str(tmp_path), adapter=str(adapter))
    before = model_identity(spec)
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02" * 64)  # retrained: same size
    after = model_identity(spec)
    assert before["content"] != after["content"] and before["verified"] and after["verified"]
    assert model_identity(spec)["content"] == after["content"]  # stable when nothing changed


def test_the_shipped_demo_adapters_have_distinct_identities():
    """They share file names and sizes (the old name-and-size fingerprint gave all three one identity)."""
    from mpo_ray.demo.policies import ADAPTER_DIR, OBJECTIVES
    from mpo_ray.io.provenance import tree_digest

    assert len({tree_digest(str(ADAPTER_DIR / name)) for name in OBJECTIVES}) == len(OBJECTIVES)


def _flips(path, count, seed):
    """(bit, flipped bytes) for ``count`` random one-bit flips of the file at ``path``."""
    import numpy as np

    clean = path.read_bytes()
    for bit in np.random.default_rng(seed).choice(len(clean) * 8, size=count, replace=False):
        flipped = bytearray(clean)
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield int(bit), bytes(flipped)


def test_a_weights_artifact_that_changed_on_disk_is_refused_never_misread(tmp_path):
    """Every one-bit flip of weights.json is refused, or reads back the very same artifact (never other weights)."""
    art = WeightsRecord.build(
        version="v1",
        policies=["concise", "detailed", "upbeat"],
        weights=[0.25, 0.5, 0.25],
        beta=0.1,
        values={"concise": -1.5, "detailed": 0.75, "upbeat": 2.0},
    )
    path = tmp_path / "weights.json"
    art.write(str(path))
    refused = 0
    for bit, data in _flips(path, 400, seed=1):
        path.write_bytes(data)
        try:
            back = WeightsRecord.read(str(path))
        except ValueError:
            refused += 1
            continue
        # every field equal (a flip in the seal's own key name leaves an unsealed document with one unknown key)
        assert back == art and back.to_json() == art.to_json(), f"bit {bit} changed the artifact silently"
    assert refused > 300


def test_a_latest_pointer_that_changed_on_disk_is_refused_never_followed_elsewhere(tmp_path):
    store = WeightsStore(str(tmp_path / "store"))
    for night, w in (("2025-06-01", [1.0, 0.0]), ("2025-06-00", [0.0, 1.0])):  # names one bit apart
        store.write_version(night, WeightsRecord.build(version=night, policies=["a", "b"], weights=w, beta=0.1))
    store.promote("2025-06-01", expected=None)
    path = tmp_path / "store" / "latest.json"
    for bit, data in _flips(path, 300, seed=2):
        path.write_bytes(data)
        try:
            served = WeightsRecord.read(store.uri)
        except ValueError:
            continue
        assert served.version == "2025-06-01", f"bit {bit} made `latest` serve {served.version}"
