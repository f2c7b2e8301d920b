"""Configuration: typed loading, errors that name the key and the file."""

import os

import pytest
import yaml

from mpo_ray.config import ConfigError, config_from_dict, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "workflows", "configs", "tiny.yaml")


def base(**extra):
    return {
        "reference": {"name": "ref", "model": "tiny:base"},
        "policies": [{"name": "a", "model": "tiny:base", "adapter": "tiny:lora-1"}, {"name": "b", "model": "tiny:base"}],
        "reweight": {"prompts": "p.jsonl"},
        **extra,
    }


def test_tiny_config_loads_and_resolves_paths():
    c = load_config(TINY)
    assert c.policy_names == ["concise", "detailed", "upbeat"]
    assert c.reweight.prompts == os.path.join(ROOT, "workflows", "data", "tiny_prompts.jsonl")
    assert os.path.isabs(c.reweight.output)
    assert c.reweight.sampling.samples_per_prompt == 4 and c.reweight.solver.tol == 1e-9
    assert c.source == TINY


def test_defaults_fill_in():
    c = config_from_dict(base())
    assert c.beta == 0.1 and c.reweight.sampling.temperature == 1.0 and c.reweight.solver.method == "full"
    assert c.resources.max_restarts == 3 and c.rewards == []


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(betta=1), r"unknown key `betta`"),
        (lambda d: d["reweight"].update(sampling={"samples": 3}), r"unknown key `reweight.sampling.samples`"),
        (lambda d: d["reweight"]["sampling"] if False else d["reweight"].update(batch_prompts="8"), r"`reweight.batch_prompts` must be int"),
        (lambda d: d.update(beta="high"), r"`beta` must be a number"),
        (lambda d: d.update(beta=0), r"`beta` must be > 0"),
        (lambda d: d.update(policies=[]), r"`policies` is empty"),
        (lambda d: d.update(policies={"name": "a"}), r"`policies` must be a list"),
        (lambda d: d["policies"][0].pop("model"), r"`policies\[0\].model` is required"),
        (lambda d: d["policies"][1].update(name="ref"), r"names must be unique"),
        (lambda d: d["policies"][1].update(name="b c"), r"must start with a letter"),
        (lambda d: d["reweight"].update(estimate="magic"), r"must be one of \['implicit', 'rewards'\]"),
        (lambda d: d["reweight"].update(estimate="rewards"), r"one reward source per policy"),
        (lambda d: d.update(rewards=[{"name": "r", "function": "nocolon"}]), r"package.module:function"),
        (lambda d: d.update(rewards=[{"name": "r"}]), r"exactly one of `function`"),
        (lambda d: d.update(rewards=[{"name": "r", "function": "m:f", "objective": "zzz"}]), r"not one of the policies"),
        (lambda d: d["reweight"].update(sampling={"temperature": 0}), r"temperature` must be > 0"),
        (lambda d: d["reweight"].update(sampling={"top_p": 1.5}), r"top_p` must be in"),
        (lambda d: d["reweight"].update(sampling={"proposal": "mixture", "temperature": 0.7}), r"needs untempered"),
        (lambda d: d["policies"][0].update(dtype="float8"), r"dtype must be"),
        (lambda d: d["resources"] if False else d.update(resources={"replicas": 0}), r"`resources.replicas` must be >= 1"),
    ],
)
def test_bad_configs_name_the_key_and_the_file(mutate, match):
    d = base()
    mutate(d)
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(d, source="my.yaml")
    assert "my.yaml" in str(info.value)


def test_missing_section_is_a_clear_error():
    d = base()
    d.pop("reweight")
    c = config_from_dict(d, source="x.yaml")
    with pytest.raises(ValueError, match=r"x.yaml has no `reweight:` section"):
        c.section("reweight")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(str(tmp_path / "empty.yaml"))
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))
