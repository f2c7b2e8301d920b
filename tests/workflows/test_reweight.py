"""The reweighting workflow end to end on local Ray with the tiny config."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny import tiny_config

from mpo_ray import solve_weights
from mpo_ray.core.estimator import score_arrays
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsRecord
from mpo_ray.workflows.reweight import reweight

SMALL = {"reweight.max_prompts": 12, "reweight.batch_prompts": 4}


def tiny(**overrides):
    return tiny_config(**{**SMALL, **overrides})


def read_table(out):
    return pq.read_table(os.path.join(out, "scores"))


@pytest.fixture(scope="module")
def first_run(local_ray, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reweight") / "run")
    return out, reweight(tiny().with_overrides({"reweight.output": out}), progress=False)


def test_reweight_end_to_end_matches_solver_on_its_table(first_run):
    config = tiny()
    out, artifact = first_run
    table = read_table(out)
    m = config.reweight.sampling.samples_per_prompt
    assert table.num_rows == 12 * m
    assert {"prompt_id", "sample_idx", "response_token_ids", "logp_ref", "logp_concise", "reward_brevity"} <= set(
        table.column_names
    )
    arrays = score_arrays(table, config.policy_names)
    expected = solve_weights(arrays.log_ratios, mask=arrays.mask, log_importance=arrays.log_importance)
    np.testing.assert_allclose(artifact.weights, expected.weights, atol=1e-9)
    on_disk = json.loads(open(os.path.join(out, "weights.json")).read())
    assert on_disk["weights"] == artifact.weights and on_disk["policies"] == config.policy_names
    assert WeightsRecord.read(out) == artifact and on_disk == storage.sealed(artifact.to_json())  # one shape
    assert (
        on_disk["serving"]["mode"] == "resampled" and on_disk["serving"]["num_candidates"] == 4
    )  # generate's default (issue 19)
    assert on_disk["certificate"]["gap_nats"] <= 1e-9
    assert "rewards" in on_disk["estimates"]  # one reward function per objective: both estimates reported
    ci = on_disk["weights_ci"]
    assert sorted(ci) == sorted(config.policy_names) and all(0 <= lo <= hi <= 1 for lo, hi in ci.values())
    assert on_disk["weights_ci_method"]["resamples"] == 200 and on_disk["ess"]["median_at_uniform"] > 0
    report = open(os.path.join(out, "report.md")).read()
    assert "Certificate gap" in report and "concise" in report and "90% interval" in report
    assert not [p for p in os.listdir(out) if p.startswith("_tmp-")]


def test_rerun_resumes_and_gives_the_same_weights(first_run, tmp_path):
    import shutil

    config = tiny()
    out = str(tmp_path / "run")
    shutil.copytree(first_run[0], out)
    first = first_run[1]
    files = storage.list_files(os.path.join(out, "scores"))
    os.remove(files[1])  # a run that died after three of four batches
    second = reweight(config.with_overrides({"reweight.output": out}), progress=False)
    assert second.weights == pytest.approx(first.weights, abs=1e-12)
    table = read_table(out)
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("sample_idx").to_pylist()))
    assert len(keys) == len(set(keys)) == 12 * config.reweight.sampling.samples_per_prompt


@pytest.mark.slow
def test_mixture_proposal_and_reward_estimate(local_ray, tmp_path):
    config = tiny(
        **{
            "reweight.sampling": {"samples_per_prompt": 4, "max_new_tokens": 8, "proposal": "mixture"},
            "reweight.estimate": "rewards",
        }
    )
    artifact = reweight(config.with_overrides({"reweight.output": str(tmp_path / "mix")}), progress=False)
    table = read_table(str(tmp_path / "mix"))
    assert sorted(set(table.column("sampler").to_pylist())) == ["concise", "detailed", "ref", "upbeat"]
    assert artifact.estimate == "rewards"
    assert artifact.weights == pytest.approx(artifact.estimates["rewards"]["weights"])
    logq = table.column("logp_proposal").to_numpy()
    assert np.all(np.isfinite(logq))
