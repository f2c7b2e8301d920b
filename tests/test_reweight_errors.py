"""Bad reweighting input fails clearly before any actor starts (or Ray starts), leaving no output."""

import os

import pytest
import ray

from mpo_ray.config import load_config
from mpo_ray.workflows.reweight import reweight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "workflows", "configs", "tiny.yaml")


def tiny(**overrides):
    return load_config(TINY, overrides={"reweight.max_prompts": 12, **overrides})


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"reweight.prompt_column": "question"}, r"no column 'question'; its columns are \['prompt_id', 'prompt'\]"),
        ({"policies": [{"name": "a", "model": "/no/such/model"}]}, r"model of 'a', '/no/such/model', cannot be loaded"),
        (
            {"policies": [{"name": "a", "model": "tiny:base", "adapter": "/no/such/adapter"}]},
            r"adapter of 'a'.*does not exist",
        ),
        (
            {"rewards": [{"name": "r", "function": "no_such_module:f"}]},
            r"reward function 'no_such_module:f' does not import",
        ),
        ({"policies": [{"name": "a", "model": "tiny:other-vocab"}]}, r"does not share the vocabulary of the reference"),
    ],
)
def test_bad_input_fails_before_actors_and_writes_nothing(tmp_path, overrides, match):
    if "rewards" not in overrides and "policies" in overrides:
        overrides = {**overrides, "rewards": []}
    config = tiny(**overrides)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        reweight(config.with_overrides({"reweight.output": str(out)}), progress=False)
    assert not out.exists()
    assert not ray.is_initialized()


def test_empty_corpus_and_unwritable_output(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        reweight(
            tiny(**{"reweight.prompts": str(empty)}).with_overrides({"reweight.output": str(tmp_path / "o")}),
            progress=False,
        )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        reweight(tiny().with_overrides({"reweight.output": str(blocker / "sub")}), progress=False)
    assert not ray.is_initialized()
