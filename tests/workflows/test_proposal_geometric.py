"""The `geometric` proposal end to end: batches as rounds, the served mixture at the λ of the batches before.

A tiny reweight on local Ray (2 CPUs, four batches of two prompts) checks what the estimator relies on: which
rows came from the mixture at λ, that `logp_proposal` is the balance heuristic over every component (the
mixture's log-prob recomputed here, teacher-forced, outside Ray), and that a resumed run draws at the same λ.
"""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny import tiny_config

from mpo_ray import solve_weights
from mpo_ray.core.estimator import proposal_counts, score_arrays
from mpo_ray.io import storage
from mpo_ray.runtime.actors import MIXTURE_SAMPLER
from mpo_ray.workflows.reweight import reweight

M = 4


def geometric_config(out):
    return tiny_config(
        **{
            "reweight.max_prompts": 8,
            "reweight.batch_prompts": 2,
            "reweight.bootstrap_resamples": 0,
            "reweight.output": out,
            "reweight.sampling": {"samples_per_prompt": M, "max_new_tokens": 6, "proposal": "geometric"},
        }
    )


def batch_files(out):
    return storage.list_files(os.path.join(out, "scores"))


@pytest.fixture(scope="module")
def run(local_ray, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("geometric") / "run")
    return out, reweight(geometric_config(out), progress=False)


def test_later_batches_draw_from_the_mixture_at_the_lambda_of_the_batches_before(run):
    out, artifact = run
    config = geometric_config(out)
    files = batch_files(out)
    assert len(files) == 4
    K, before = len(config.policies), []
    for b, uri in enumerate(files):
        table = pq.read_table(uri)
        drawn = json.loads(table.schema.metadata[b"mpo_ray"])["geometric_weights"]
        if b == 0:
            assert drawn is None  # nothing solved yet: the mixture proposal
        else:  # the full solve over the batches before, as the resumed run recomputes it
            arrays = score_arrays(_concat(before), config.policy_names)
            expected = solve_weights(arrays.log_ratios, mask=arrays.mask, log_importance=arrays.log_importance)
            np.testing.assert_allclose(drawn, expected.weights, rtol=0, atol=1e-12)
        counts = proposal_counts(M, K, config.reweight.sampling.geometric_share if b else None)
        names = [config.reference.name, *config.policy_names, MIXTURE_SAMPLER]
        expected_samplers = [n for n, c in zip(names, counts) for _ in range(c)]
        samplers = table.column("sampler").to_pylist()
        assert samplers == expected_samplers * 2, (b, samplers)  # two prompts, samples in sampler order
        before.append(table)
    assert artifact.sampling["proposal"] == "geometric"
    assert artifact.certificate.gap_nats <= 1e-9


def _concat(tables):
    import pyarrow as pa

    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])


def test_logp_proposal_is_the_balance_heuristic_over_every_component(run):
    """log q = log Σ_c (n_c/m) π_c(y|x), the mixture's π̃_λ teacher-forced here by a MixedPolicy of our own."""
    from mpo_ray.models.decoding import MixedPolicy
    from mpo_ray.models.policies import load_policies

    out, _ = run
    config = geometric_config(out)
    policies = load_policies(config.policies)
    K = len(policies)
    for b, uri in enumerate(batch_files(out)):
        table = pq.read_table(uri)
        drawn = json.loads(table.schema.metadata[b"mpo_ray"])["geometric_weights"]
        counts = proposal_counts(M, K, config.reweight.sampling.geometric_share if b else None)
        logps = [table.column(f"logp_{n}").to_numpy() for n in ["ref", *config.policy_names]]
        if drawn is not None:
            logps.append(
                MixedPolicy(policies, drawn).sequence_logprob(
                    table.column("prompt").to_pylist(), table.column("response_token_ids").to_pylist()
                )[0]
            )
        used = [(lp, c) for lp, c in zip(logps, counts) if c]
        expected = np.logaddexp.reduce(np.stack([lp + np.log(c / M) for lp, c in used]), axis=0)
        np.testing.assert_allclose(table.column("logp_proposal").to_numpy(), expected, rtol=0, atol=1e-4)
        if drawn is not None:  # the mixture's rows are in the table, and it gives its own rows a finite log-prob
            assert MIXTURE_SAMPLER in table.column("sampler").to_pylist()
            assert np.all(np.isfinite(logps[-1]))


def test_resumed_run_draws_at_the_same_lambda(run, tmp_path):
    out, first = run
    resumed_out = str(tmp_path / "run")
    shutil.copytree(out, resumed_out)
    files = batch_files(resumed_out)
    os.remove(files[1])  # batch 1 lost: batches 2 and 3 were drawn at λs that depend on it
    os.remove(files[3])
    second = reweight(geometric_config(resumed_out), progress=False)
    assert second.weights == pytest.approx(first.weights, rel=0, abs=1e-12)
    for a, b in zip(batch_files(out), batch_files(resumed_out)):
        ta, tb = pq.read_table(a), pq.read_table(b)
        assert (
            json.loads(ta.schema.metadata[b"mpo_ray"])["geometric_weights"]
            == json.loads(tb.schema.metadata[b"mpo_ray"])["geometric_weights"]
        )
        assert ta.column("response_token_ids").to_pylist() == tb.column("response_token_ids").to_pylist()
