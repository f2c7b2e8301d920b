"""Configuration: typed loading, errors that name the key and the file."""

import os
import pickle
import subprocess
import sys

import pytest
from tiny import ROOT, TINY_CONFIG

from mpo_ray.config import ConfigError, DecodingParams, PolicySpec, config_from_dict, load_config
from mpo_ray.core.errors import UserError


def base(**extra):
    return {
        "reference": {"name": "ref", "model": "tiny:base"},
        "policies": [
            {"name": "a", "model": "tiny:base", "adapter": "tiny:lora-1"},
            {"name": "b", "model": "tiny:base"},
        ],
        "reweight": {"prompts": "p.jsonl"},
        **extra,
    }


def test_tiny_config_loads_and_resolves_paths():
    c = load_config(TINY_CONFIG)
    assert c.policy_names == ["concise", "detailed", "upbeat"]
    assert c.reweight.prompts == os.path.join(ROOT, "workflows", "data", "tiny_prompts.jsonl")
    assert os.path.isabs(c.reweight.output)
    assert c.reweight.sampling.samples_per_prompt == 4 and c.reweight.solver.tol == 1e-9
    assert c.source == TINY_CONFIG


def test_defaults_fill_in():
    c = config_from_dict(base())
    assert c.beta == 0.1 and c.reweight.sampling.temperature == 1.0 and c.reweight.solver.method == "full"
    assert c.resources.max_restarts == 3 and c.rewards == []


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(betta=1), r"unknown key `betta`"),
        (lambda d: d["reweight"].update(sampling={"samples": 3}), r"unknown key `reweight.sampling.samples`"),
        (
            lambda d: d["reweight"]["sampling"] if False else d["reweight"].update(batch_prompts="8"),
            r"`reweight.batch_prompts` must be int",
        ),
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
        (
            lambda d: d.update(rewards=[{"name": "r", "function": "m:f", "objective": "zzz"}]),
            r"not one of the policies",
        ),
        (lambda d: d["reweight"].update(sampling={"temperature": 0}), r"temperature` must be > 0"),
        (lambda d: d["reweight"].update(sampling={"top_p": 1.5}), r"top_p` must be in"),
        (lambda d: d["reweight"].update(sampling={"proposal": "mixture", "temperature": 0.7}), r"needs untempered"),
        (
            lambda d: d["reweight"].update(sampling={"proposal": "geometric", "top_k": 5}),
            r"is `geometric`, which needs untempered",
        ),
        (
            lambda d: d["reweight"].update(sampling={"proposal": "geometric", "geometric_share": 0}),
            r"`reweight.sampling.geometric_share` must be in \(0, 1\], got 0",
        ),
        (
            lambda d: d["reweight"].update(sampling={"proposal": "geometric", "geometric_share": 1.5}),
            r"`reweight.sampling.geometric_share` must be in \(0, 1\], got 1.5",
        ),
        (lambda d: d["policies"][0].update(dtype="float8"), r"`policies\[0\]\.dtype` must be one of \['auto'"),
        (
            lambda d: d["resources"] if False else d.update(resources={"replicas": 0}),
            r"`resources.replicas` must be >= 1",
        ),
        # strict types: no string numbers, no bools as numbers
        (lambda d: d.update(beta=True), r"`beta` must be a number, got True \(bool\)"),
        (lambda d: d["reweight"].update(sampling={"top_k": True}), r"`reweight.sampling.top_k` must be int"),
        (lambda d: d["reweight"].update(stream_bsmd="yes"), r"`reweight.stream_bsmd` must be true or false"),
        (
            lambda d: d["reweight"].update(sampling={"max_new_tokens": 8.0}),
            r"`reweight.sampling.max_new_tokens` must be int",
        ),
        (lambda d: d.update(beta=float("inf")), r"`beta` must be a finite number"),
        (
            lambda d: d.update(generate={"prompts": "p", "weights": {"a": float("nan"), "b": 1.0}}),
            r"`generate.weights.a` must be a finite",
        ),
        (
            lambda d: d.update(generate={"prompts": "p", "weights": "x"}),
            r"`generate.weights` must be a mapping or a list",
        ),
        (lambda d: d.update(generate={"prompts": "p", "weights": [1.0]}), r"`generate.weights` has 1 entries for 2"),
        (
            lambda d: d.update(generate={"prompts": "p", "weights": [1.0, 1.0], "weights_uri": "w.json"}),
            r"are both set",
        ),
        (lambda d: d.update(generate={"prompts": "p", "stop": [""]}), r"`generate.stop\[0\]` must not be empty"),
        (lambda d: d.update(generate={"prompts": "p", "temperature": 0, "num_candidates": 2}), r"needs sampling"),
        (lambda d: d.update(generate={"prompts": "p", "top_p": 0}), r"`generate.top_p` must be in \(0, 1\]"),
        (lambda d: d.update(nightly={"prompts": "p", "store": "s", "night": "../x"}), r"`nightly.night` is '../x'"),
        (
            lambda d: d.update(nightly={"prompts": "p", "store": "s", "gate": {"min_median_ess": 9}}),
            r"no night could pass",
        ),
        (
            lambda d: d.update(nightly={"prompts": "p", "store": "s", "gate": {"max_drift": 2}}),
            r"`nightly.gate.max_drift` must be in \[0, 1\]",
        ),
        (
            lambda d: d.update(nightly={"prompts": "p", "store": "s", "estimate": "rewards"}),
            r"`nightly.estimate` is `rewards`",
        ),
        (lambda d: d.update(source="elsewhere.yaml"), r"unknown key `source`"),
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


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("# nothing here\n", "is empty"),
        ("a: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("just text\n", "top level must be a mapping of keys, got str"),
        (b"beta: 0.1 # caf\xe9\n", "is not UTF-8"),
        ("DIR", "is a directory"),
    ],
)
def test_unreadable_or_malformed_files(tmp_path, content, match):
    path = tmp_path / "c.yaml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_config(str(path))


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


def test_source_is_set_by_the_loader_not_the_file():
    assert config_from_dict(base()).source == "<dict>"
    c = config_from_dict(base(), source="x.yaml")
    assert c.source == "x.yaml" and c.model_copy(update={"beta": 0.2}).source == "x.yaml"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


MINIMAL = "reference: {name: ref, model: 'tiny:base'}\npolicies: [{name: a, model: 'tiny:base'}]\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("reweight:\n  prompts: p\n  seed: 1\n  seed: 2\n", r"duplicate key `reweight.seed` \(line 6\); remove one"),
        ("beta: 0.1\nbeta: 0.2\n", r"duplicate key `beta` \(line 4\)"),
        ("rewards:\n  - {name: r, function: 'm:f', name: s}\n", r"duplicate key `rewards\[0\].name`"),
        ("reweight:\n  prompts: p\n  8: x\n", r"key `reweight.8` \(line 5\) is read as int, not a string"),
        ("reweight:\n  prompts: p\n  on: x\n", r"key `reweight.on` \(line 5\) is read as bool"),
        ("reweight:\n  prompts: p\n  ~: x\n", r"key `reweight.~` \(line 5\) is null"),
        ("beta: .inf\n", r"`beta` must be a finite number, got inf"),
        ("reweight: {prompts: p, sampling: {top_p: .nan}}\n", r"`reweight.sampling.top_p` must be a finite number"),
        ("reweight: {prompts: p, batch_prompts: '8'}\n", r"`reweight.batch_prompts` must be int, got '8' \(str\)"),
    ],
)
def test_yaml_surprises_are_refused(tmp_path, text, match):
    path = write(tmp_path, MINIMAL + text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(info.value).startswith(path + ":") and "\n" not in str(info.value)


def test_yaml_reads_dates_as_text_and_exponents_as_numbers(tmp_path):
    path = write(tmp_path, MINIMAL + "nightly: {prompts: p, store: s, night: 2025-06-01, solver: {tol: 1e-6}}\n")
    c = load_config(path)
    assert c.nightly.night == "2025-06-01" and c.nightly.solver.tol == 1e-6


def test_merge_keys_still_work(tmp_path):
    path = write(tmp_path, MINIMAL + "reweight:\n  <<: {prompts: p, seed: 3}\n  seed: 4\n")
    assert load_config(path).reweight.seed == 4


def test_overrides_are_validated_and_resolved_like_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs(tmp_path / "conf")
    path = write(tmp_path / "conf", MINIMAL + "reweight: {prompts: p.jsonl, output: out}\n")
    c = load_config(
        path,
        overrides={
            "reweight.output": "elsewhere",
            "reweight.prompts": "q.jsonl",
            "generate.prompts": "g.jsonl",
            "generate.weights_uri": "w/weights.json",
            "reweight.max_prompts": None,
        },
    )  # None: back to the default
    assert c.reweight.output == str(tmp_path / "elsewhere")  # outputs: against the working directory
    assert c.reweight.prompts == str(tmp_path / "conf" / "q.jsonl")  # inputs: against the config file
    assert c.generate.prompts == str(tmp_path / "conf" / "g.jsonl")  # a section the file lacked
    assert c.generate.weights_uri == str(tmp_path / "w" / "weights.json")
    assert c.reweight.max_prompts is None
    with pytest.raises(
        ConfigError, match=r"c.yaml: `reweight.batch_prompts` must be int, got '8' \(str\) \(set by an override\)"
    ):
        load_config(path, overrides={"reweight.batch_prompts": "8"})
    with pytest.raises(ConfigError, match=r"unknown key `reweight.betta`.*\(set by an override\)"):
        load_config(path, overrides={"reweight.betta": 1})
    with pytest.raises(ConfigError, match=r"override `reference.name.x`: `reference.name` is not a mapping"):
        load_config(path, overrides={"reference.name.x": 1})


def test_one_path_helper_resolves_what_is_typed_where_the_command_runs(tmp_path, monkeypatch):
    from mpo_ray.config.document import cwd_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cwd_path("out") == str(tmp_path / "out") and cwd_path("~/x") == str(tmp_path / "home" / "x")
    assert cwd_path("s3://bucket/out") == "s3://bucket/out" and cwd_path(None) is None


def test_with_overrides_takes_the_same_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = load_config(TINY_CONFIG)
    d = c.with_overrides(
        {"reweight.output": "o", "reweight.prompts": "p.jsonl", "reweight.max_prompts": None, "beta": 0.5}
    )
    assert d.reweight.output == str(tmp_path / "o") and d.reweight.prompts == os.path.join(
        ROOT, "workflows", "configs", "p.jsonl"
    )
    assert (
        d.beta == 0.5
        and d.reweight.max_prompts is None
        and c.reweight.max_prompts == 32
        and d.source == TINY_CONFIG
        and c.beta == 0.1
    )
    assert c.with_overrides({}) == c  # resolving twice changes nothing
    with pytest.raises(ConfigError, match=r"tiny.yaml: `nightly.night` is 'a/b'.*\(set by an override\)"):
        c.with_overrides({"nightly.night": "a/b"})


def test_an_override_replaces_the_files_other_way_to_give_weights():
    c = load_config(TINY_CONFIG, overrides={"generate.weights": [0.5, 0.3, 0.2]})
    assert c.generate.weights == [0.5, 0.3, 0.2] and c.generate.weights_uri is None
    assert c.with_overrides({"generate.weights_uri": "w.json"}).generate.weights is None
    with pytest.raises(ConfigError, match=r"`generate.weights` and `weights_uri`.*are both set"):
        load_config(TINY_CONFIG, overrides={"generate.weights": [0.5, 0.3, 0.2], "generate.weights_uri": "w.json"})


def test_config_from_dict_does_not_mutate_its_input():
    d = base()
    config_from_dict(d, overrides={"reweight.seed": 5, "generate.prompts": "g"})
    assert d == base()


def test_overrides_without_base_dir_leave_paths_alone():
    c = config_from_dict(base(), overrides={"reweight.output": "out"})
    assert c.reweight.output == "out" and c.reweight.prompts == "p.jsonl"


def test_decoding_params_are_shared():
    c = load_config(TINY_CONFIG)
    assert c.generate.params() == {"max_new_tokens": 16, "temperature": 0.8, "top_k": None, "top_p": 0.95}
    assert c.reweight.sampling.params()["max_new_tokens"] == 12
    assert DecodingParams(temperature=0).temperature == 0.0  # greedy is fine for generation...
    with pytest.raises(ConfigError, match=r"`reweight.sampling.temperature` must be > 0"):
        config_from_dict(
            {**base(), "reweight": {"prompts": "p", "sampling": {"temperature": 0}}}
        )  # ...not for sampling
    assert config_from_dict(base(generate={"prompts": "p"})).generate.max_new_tokens == 128
    assert isinstance(config_from_dict(base(beta=1)).beta, float)  # an int is a number


def test_policy_spec_is_a_plain_value():
    spec = PolicySpec(name="a", model="default", adapter=None, dtype="float32")
    assert PolicySpec("a", "default", dtype="float32") == spec
    assert pickle.loads(pickle.dumps(spec)) == spec and hash(spec) == hash(PolicySpec("a", "default", dtype="float32"))
    with pytest.raises(ValueError):
        PolicySpec(name="", model="x")
    with pytest.raises(ValueError):
        PolicySpec(name="a", model="x", dtype="fp8")
    with pytest.raises(ValueError):
        spec.name = "b"  # frozen
    with pytest.raises(TypeError):
        PolicySpec("a", name="b", model="x")


@pytest.mark.parametrize(
    "code",
    [
        f"from mpo_ray.config import load_config; load_config({TINY_CONFIG!r})",
        "from mpo_ray import load_config, PolicySpec, solve_weights; "
        f"load_config({TINY_CONFIG!r}); PolicySpec('a', 'b')",
    ],
)
def test_loading_a_config_imports_nothing_heavy(code):
    check = code + "; import sys; print(sorted({'torch', 'ray', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_api_is_what_all_names_and_each_name_resolves():
    import mpo_ray

    assert dir(mpo_ray) == sorted(mpo_ray.__all__)
    assert {"solve_weights", "MixedPolicy", "PolicySpec", "load_policies", "load_config"} <= set(mpo_ray.__all__)
    assert "train_dpo" not in mpo_ray.__all__  # the demo's DPO loop is reached by its module path
    for name in mpo_ray.__all__:
        assert getattr(mpo_ray, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'train_dpo'"):
        mpo_ray.train_dpo  # noqa: B018


def test_geometric_share_enters_the_score_fingerprint_only_with_the_geometric_proposal():
    """Other runs' stored batches keep their fingerprint (a new setting must not make every old batch stale)."""
    from mpo_ray.config import SamplingConfig

    assert "geometric_share" not in SamplingConfig().fingerprint()
    assert SamplingConfig(geometric_share=0.3).fingerprint() == SamplingConfig().fingerprint()
    geometric = SamplingConfig(proposal="geometric").fingerprint()
    assert geometric["geometric_share"] == 0.5
    assert SamplingConfig(proposal="geometric", geometric_share=0.25).fingerprint() != geometric


def test_generate_serves_four_candidates_when_sampling_and_one_when_greedy():
    """The default serving mode (issue 19): resampling among 4 when sampling, one candidate when greedy;
    a value given is kept, and a greedy config with n > 1 is refused."""
    from mpo_ray.config.schema import DEFAULT_CANDIDATES, GenerateConfig

    assert GenerateConfig(prompts="p").candidates == DEFAULT_CANDIDATES == 4
    assert GenerateConfig(prompts="p", temperature=0.0).candidates == 1
    assert GenerateConfig(prompts="p", num_candidates=2).candidates == 2
    with pytest.raises(ValueError, match="needs sampling"):
        GenerateConfig(prompts="p", temperature=0.0, num_candidates=2)
