"""User mistakes that used to surface only after Ray started are refused before it, in one line (issue 21).

Each test is one case of the catalogue: config validation (names, devices, weights), the driver's preflight
(devices, reward model paths, a probe call of every reward function, β against the solver's range) and
reading weights artifacts (unreachable, nested, BOM, unsealed). No Ray, no GPU, no model weights.
"""

import json
import logging
import sys
import textwrap

import pytest
import ray
from tiny import tiny_config

from mpo_ray.config import ConfigError, config_from_dict
from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsRecord
from mpo_ray.models.preflight import check_models
from mpo_ray.models.rewards import RewardSource
from mpo_ray.workflows.reweight import reweight

REWARDS = """
def fine(prompts, responses):
    return [float(len(r)) for r in responses]

def raises(prompts, responses):
    raise RuntimeError("the scoring server is down")

def strings(prompts, responses):
    return ["0.5" for _ in responses]

def short(prompts, responses):
    return [1.0]

def nan(prompts, responses):
    return [float("nan")] * len(responses)

def nan_on_row_1(prompts, responses):
    return [float("nan") if i == 1 else 1.0 for i in range(len(responses))]

def five(prompts, responses):
    return [5.0] * len(responses)
"""


@pytest.fixture(scope="module")
def rewards_module(tmp_path_factory):
    """`catalogue_rewards:<fn>`: reward functions that misbehave in each way, importable by name."""
    root = tmp_path_factory.mktemp("rewards")
    (root / "catalogue_rewards.py").write_text(textwrap.dedent(REWARDS))
    (root / "catalogue_broken.py").write_text("def f(prompts, responses)\n    return []\n")  # a SyntaxError
    sys.path.insert(0, str(root))
    yield "catalogue_rewards"
    sys.path.remove(str(root))
    sys.modules.pop("catalogue_rewards", None)


def base(**extra) -> dict:
    return {
        "reference": {"name": "base", "model": "tiny:base"},
        "policies": [
            {"name": "a", "model": "tiny:base", "adapter": "tiny:lora-1"},
            {"name": "b", "model": "tiny:base", "adapter": "tiny:lora-2"},
        ],
        **extra,
    }


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --- 1. names that clash with the score table's fixed columns -------------------------------------------------


@pytest.mark.parametrize("name, column", [("ref", "logp_ref"), ("proposal", "logp_proposal")])
def test_policy_named_like_a_fixed_score_column_is_refused(name, column):
    d = base()
    d["policies"][1]["name"] = name
    with pytest.raises(
        ConfigError, match=rf"`policies\[1\]\.name` is '{name}', but the score table's column `{column}`"
    ) as e:
        config_from_dict(d, source="c.yaml")
    one_line(e)
    # The reference's log-probs are `logp_ref` whatever it is called, so the reference may be `ref` (tiny.yaml)
    for ref_name in ("ref", "proposal"):
        config_from_dict({**base(), "reference": {"name": ref_name, "model": "tiny:base"}})
    # A reward named like a model: both run as actors named after them, and the second name is taken
    with pytest.raises(ConfigError, match=r"`rewards\[0\]\.name` is 'a', the name of a model"):
        config_from_dict(base(rewards=[{"name": "a", "function": "m:f"}]), source="c.yaml")


# --- 2. two rewards with one name ----------------------------------------------------------------------------


def test_two_rewards_with_one_name_are_refused():
    d = base(rewards=[{"name": "r", "function": "m:f"}, {"name": "r", "function": "m:g"}])
    with pytest.raises(
        ConfigError, match=r"c.yaml: `rewards\[1\]\.name` is 'r' again; reward names must be unique"
    ) as e:
        config_from_dict(d, source="c.yaml")
    one_line(e)


# --- 3. devices ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where, key", [("policies", r"policies\[0\]\.device"), ("rewards", r"rewards\[0\]\.device")])
@pytest.mark.parametrize("device", ["gpu", "cuda7", "cuda:x", "CUDA:0", "cuda:0 "])
def test_device_string_syntax_is_checked_by_the_config(where, key, device):
    d = base(rewards=[{"name": "rm", "model": "org/rm"}])
    d[where][0]["device"] = device
    with pytest.raises(ConfigError, match=rf"`{key}` is .*; use cpu, cuda, cuda:N, mps"):
        config_from_dict(d)
    for fine in ("cpu", "cuda", "cuda:3", "mps", "xpu:1"):
        d[where][0]["device"] = fine
        config_from_dict(d)
    d = base(rewards=[{"name": "rm", "model": "org/rm", "dtype": "fp16"}])  # the reward's dtype was a free string
    with pytest.raises(ConfigError, match=r"`rewards\[0\]\.dtype` must be one of"):
        config_from_dict(d)


def test_device_this_machine_lacks_is_refused_before_ray_unless_on_a_cluster(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    d = base(rewards=[{"name": "rm", "model": "org/rm", "device": "cuda:7"}])
    d["policies"][1]["device"] = "cuda:7"
    config = config_from_dict(d, source="c.yaml")
    with pytest.raises(
        UserError,
        match=r"c.yaml: `policies\[1\]\.device` is 'cuda:7', but this machine has 1 cuda "
        r"device \(cuda:0\.\.cuda:0\) visible",
    ) as e:
        check_models(config)
    one_line(e)
    with pytest.raises(UserError, match=r"`rewards\[0\]\.device` is 'cuda:7'"):
        check_models(config, [], reference=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match=r"`rewards\[0\]\.device` is 'cuda:7', but this machine has no cuda device"):
        check_models(config, [], reference=False)
    # On a cluster the driver cannot see the workers' GPUs: nothing is said (a hub-id reward model is not loaded here)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert check_models(config, [], reference=False) == []


# --- 4. a reward model path that does not exist ------------------------------------------------------------------


def test_missing_local_reward_model_path_is_refused(tmp_path):
    config = config_from_dict(
        base(rewards=[{"name": "rm", "model": "./no-such-reward-model"}]), source="c.yaml", base_dir=str(tmp_path)
    )
    with pytest.raises(
        UserError,
        match=r"c.yaml: `rewards\[0\]\.model` of reward 'rm', '.*no-such-reward-model', "
        "does not exist",
    ) as e:
        check_models(config)
    one_line(e)
    # A hub id is not a path: it is left to the loader
    check_models(config_from_dict(base(rewards=[{"name": "rm", "model": "org/reward-model"}])), [], reference=False)


# --- 5. reward functions that raise or return the wrong thing --------------------------------------------------


@pytest.mark.parametrize(
    "fn, match",
    [
        (
            "raises",
            r"reward 'r' \(catalogue_rewards:raises\) raised RuntimeError: the scoring server is down when called "
            r"on a 2-row probe",
        ),
        ("strings", r"reward 'r' \(catalogue_rewards:strings\) returned strings \(e\.g\. '0\.5' for row 0\)"),
        ("short", r"reward 'r' \(catalogue_rewards:short\) returned 1 value for 2 rows"),
        ("nan", r"reward 'r' \(catalogue_rewards:nan\) returned a non-finite value \(nan\) for row 0"),
    ],
)
def test_reward_function_is_probed_before_ray(rewards_module, fn, match):
    config = config_from_dict(base(rewards=[{"name": "r", "function": f"{rewards_module}:{fn}"}]), source="c.yaml")
    with pytest.raises(UserError, match=rf"^c.yaml: {match}") as e:
        check_models(config)
    one_line(e)
    broken = config_from_dict(base(rewards=[{"name": "r", "function": "catalogue_broken:f"}]))
    with pytest.raises(UserError, match=r"'catalogue_broken:f' does not import \(SyntaxError"):
        check_models(broken, [], reference=False)
    check_models(
        config_from_dict(base(rewards=[{"name": "r", "function": f"{rewards_module}:fine"}])), [], reference=False
    )


def test_reward_returning_nan_or_strings_in_the_run_names_the_row(rewards_module):
    config = config_from_dict(
        base(
            rewards=[
                {"name": "r", "function": f"{rewards_module}:nan_on_row_1"},
                {"name": "s", "function": f"{rewards_module}:strings"},
            ]
        )
    )
    prompts, responses = ["p0", "p1", "p2"], ["y0", "y1", "y2"]
    with pytest.raises(
        UserError,
        match=r"reward 'r' \(catalogue_rewards:nan_on_row_1\) returned a non-finite value "
        r"\(nan\) for row 1 \(prompt 'p1', response 'y1'\)",
    ):
        RewardSource(config.rewards[0]).score(prompts, responses)
    with pytest.raises(UserError, match=r"reward 's' \(catalogue_rewards:strings\) returned strings"):
        RewardSource(config.rewards[1]).score(prompts, responses)


# --- 6. β so small that rewards/β leave the solver's range --------------------------------------------------


def test_beta_too_small_for_the_rewards_is_refused_before_ray(rewards_module):
    rewards = [
        {"name": "ra", "function": f"{rewards_module}:five", "objective": "a"},
        {"name": "rb", "function": f"{rewards_module}:fine", "objective": "b"},
    ]
    config = config_from_dict(base(rewards=rewards, beta=1e-7), source="c.yaml")
    with pytest.raises(
        UserError,
        match=r"c.yaml: reward 'ra' returned 5 on a probe row, and 5/beta = 5e\+07 nats is "
        r"beyond the ±1e\+06 the solver accepts; raise `beta`",
    ) as e:
        check_models(config, [], reference=False)
    one_line(e)
    check_models(config.with_overrides({"beta": 1e-4}), [], reference=False)  # 37/1e-4 = 3.7e5: within range
    # Rewards that cover only some policies are never divided by β (no rewards estimate): nothing to refuse
    check_models(config_from_dict(base(rewards=rewards[:1], beta=1e-7)), [], reference=False)


# --- 7. generate.weights beyond the decoder's limit ---------------------------------------------------------------


def test_generate_weights_beyond_the_decoders_limit_are_refused():
    from mpo_ray.config import schema
    from mpo_ray.io import artifact
    from mpo_ray.models.decoding import MAX_ABS_WEIGHT

    assert schema.MAX_ABS_WEIGHT == artifact.MAX_ABS_WEIGHT == MAX_ABS_WEIGHT
    for weights, key in (([0.5, 2e4], r"generate\.weights\[1\]"), ({"a": 1e5, "b": 0}, r"generate\.weights\.a")):
        with pytest.raises(ConfigError, match=rf"c.yaml: `{key}` is .*, beyond the decoder's \|λ\| <= 10000") as e:
            config_from_dict(base(generate={"prompts": "p.jsonl", "weights": weights}), source="c.yaml")
        one_line(e)
    config_from_dict(base(generate={"prompts": "p.jsonl", "weights": [1e4, 0.0]}))
    w = WeightsRecord.build(version="v", policies=["a", "b"], weights=[1.0, 0.0], beta=0.1).to_json()
    with pytest.raises(UserError, match=r"beyond the decoder's \|λ\| <= 10000"):
        WeightsRecord.from_json({**w, "weights": [2e4, 1.0]}, "w.json")


# --- 8. unreachable and deeply nested weights ---------------------------------------------------------------------


def test_unreachable_or_deeply_nested_weights_are_refused_in_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    just_under = tmp_path / "under.json"  # parses (under the recursion limit): refused by its depth all the same
    just_under.write_text('{"format": "mpo-ray/weights", "x": ' + "[" * 900 + "]" * 900 + "}")
    cases = {
        "http://127.0.0.1:9/x.json": r"weights artifact 'http://127\.0\.0\.1:9/x\.json' cannot be read \(",
        str(tmp_path / "missing.json"): r"missing\.json' does not exist",
        str(deep): r"weights artifact .*deep\.json. nests more than 64 levels deep",
        str(just_under): r"weights artifact .*under\.json. nests more than 64 levels deep",
    }
    for uri, match in cases.items():
        with pytest.raises(UserError, match=match) as e:
            WeightsRecord.read(uri)
        one_line(e)
    with pytest.raises(UserError, match=r"cannot open 's3://no-such-bucket/w\.json'|weights artifact 's3://"):
        WeightsRecord.read("s3://no-such-bucket/w.json")
    # generate reads its weights before Ray starts
    from mpo_ray.workflows.generate import resolve_weights

    config = config_from_dict(base(generate={"prompts": "p.jsonl", "weights_uri": str(deep)}), source="c.yaml")
    with pytest.raises(UserError, match="nests more than 64 levels"):
        resolve_weights(config)


# --- 9. a byte-order mark --------------------------------------------------------------------------------------


def test_weights_json_with_a_byte_order_mark_is_read(tmp_path, caplog):
    path = tmp_path / "weights.json"
    WeightsRecord.build(version="v1", policies=["a", "b"], weights=[0.25, 0.75], beta=0.1).write(str(path))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows Notepad saves it
    with caplog.at_level(logging.WARNING, logger="mpo_ray"):
        assert WeightsRecord.read(str(path)).weights == [0.25, 0.75]
    assert not caplog.records  # still sealed: the seal covers the values, not the bytes


# --- 10. unsealed artifacts: accepted, with a warning --------------------------------------------------------------


def test_unsealed_weights_are_accepted_with_a_one_line_warning(tmp_path, caplog):
    path = tmp_path / "weights.json"
    WeightsRecord.build(version="v1", policies=["a", "b"], weights=[0.5, 0.5], beta=0.1).write(str(path))
    doc = json.loads(path.read_text())
    assert doc.pop(storage.SEAL)
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="mpo_ray"):
        assert WeightsRecord.read(str(path)).weights == [0.5, 0.5]
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    assert record.getMessage().startswith(f"{path} has no `sha256` seal, so its integrity cannot be checked")
    path.write_text(json.dumps(storage.sealed(doc) | {"weights": [0.4, 0.6]}))  # a sealed file that changed: refused
    with pytest.raises(UserError, match="does not match the digest"):
        WeightsRecord.read(str(path))


def test_sweep_probes_its_reward_functions_before_ray(rewards_module, tmp_path):
    """sweep evaluates with the rewards only after generating every point: they are probed before Ray starts."""
    import ray

    from mpo_ray.workflows.sweep import run_sweep

    corpus = tmp_path / "prompts.jsonl"
    corpus.write_text('{"prompt_id": "1", "prompt": "hello"}\n')
    config = config_from_dict(
        base(
            rewards=[{"name": "r", "function": f"{rewards_module}:raises"}],
            generate={"prompts": str(corpus), "max_new_tokens": 4},
        ),
        source="c.yaml",
    )
    with pytest.raises(UserError, match=r"reward 'r' \(catalogue_rewards:raises\) raised RuntimeError") as e:
        run_sweep(config, output=str(tmp_path / "sweep"), points={"a": [1.0, 0.0]}, progress=False)
    one_line(e)
    assert not ray.is_initialized() and not (tmp_path / "sweep").exists()


# reweight: bad input fails clearly before any actor starts (or Ray starts), leaving no output.


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
        (
            {"policies": [{"name": "a", "model": "tiny:other-vocab"}]},
            r"policies 'ref' and 'a' have different vocabularies \(vocabulary sizes 384 vs 320",
        ),
    ],
)
def test_bad_input_fails_before_actors_and_writes_nothing(tmp_path, overrides, match):
    if "rewards" not in overrides and "policies" in overrides:
        overrides = {**overrides, "rewards": []}
    config = tiny_config(**{"reweight.max_prompts": 12, **overrides})
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
            tiny_config(**{"reweight.prompts": str(empty)}).with_overrides({"reweight.output": str(tmp_path / "o")}),
            progress=False,
        )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="not writable"):
        reweight(tiny_config().with_overrides({"reweight.output": str(blocker / "sub")}), progress=False)
    assert not ray.is_initialized()
