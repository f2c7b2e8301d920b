"""Teacher-forced scoring equals a token-by-token reference, whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import EXACT_DTYPE, PROMPTS, reference_logprobs, tiny_family

from mpo_ray import PolicySpec, load_policies, score_sequences


def random_responses(n, vocab, seed, max_len=9):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, size=n)
    lengths[0] = max_len  # at least one non-empty response
    return [rng.integers(0, vocab, size=k).tolist() for k in lengths]


def reference_score(policy, prompt, response):
    if not response:
        return 0.0
    lp = reference_logprobs(policy, prompt, response)
    return float(lp.cpu()[np.arange(len(response)), response].sum())


@pytest.mark.parametrize(
    "kind,arch", [("seeds", "llama"), ("seeds", "gpt2"), ("system", "llama"), ("lora", "llama"), ("lora", "gpt2")]
)
def test_scores_equal_token_by_token_reference(kind, arch):
    policies = tiny_family(kind, 2, arch=arch)
    responses = random_responses(len(PROMPTS), len(policies[0].tokenizer), seed=1)
    for policy in policies:
        expected = [reference_score(policy, p, r) for p, r in zip(PROMPTS, responses)]
        got = score_sequences(policy, PROMPTS, responses)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
        assert got.dtype == np.float64 and got.shape == (len(PROMPTS),)


def test_scores_are_invariant_to_batch_size_and_padding():
    policy = tiny_family("lora", 2)[1]
    prompts = PROMPTS * 3
    responses = random_responses(len(prompts), len(policy.tokenizer), seed=2, max_len=12)
    full = score_sequences(policy, prompts, responses, batch_size=len(prompts))
    for batch_size in (1, 2, 5):
        np.testing.assert_allclose(score_sequences(policy, prompts, responses, batch_size=batch_size), full, atol=1e-4)
    # one row alone (no padding at all) scores the same as inside a padded batch
    np.testing.assert_allclose(score_sequences(policy, prompts[1:2], responses[1:2]), full[1:2], atol=1e-4)


def test_empty_responses_score_zero_and_numpy_ids_are_accepted():
    (policy,) = tiny_family("seeds", 1)
    got = score_sequences(policy, ["a", "b"], [np.array([], dtype=np.int64), np.array([5, 6, 7])])
    assert got[0] == 0.0 and got[1] < 0
    assert score_sequences(policy, ["a"], [[]])[0] == 0.0


def test_each_policy_formats_the_prompt_itself():
    """The same response ids score differently under different system prompts."""
    a, b = tiny_family("system", 2)
    response = [[40, 41, 42, 43]]
    assert not np.isclose(score_sequences(a, ["hi"], response), score_sequences(b, ["hi"], response)).any()


@pytest.mark.parametrize(
    "prompts,responses,match",
    [
        ([], [], "prompts is empty"),
        ("hello", [[1]], "single str"),
        (["ok", 3], [[1], [2]], r"prompts\[1\] is a int"),
        (["ok"], [[1], [2]], "response_token_ids has 2 entries but there are 1 prompts"),
        (["ok"], [[1, 100000]], r"response_token_ids\[0\] must hold integer token ids in \[0, 384\)"),
        (["ok"], [[-1]], r"\[0, 384\)"),
        (["ok"], [["a", "b"]], "integer token ids"),
        (["word " * 300], [[1]], r"prompts\[0\] is \d+ tokens .* over the model's context of 256 tokens"),
        (["ok"], [[1] * 300], r"with 300 response tokens .* context of 256"),
    ],
)
def test_bad_input_is_refused_clearly(prompts, responses, match):
    (policy,) = tiny_family("seeds", 1)
    with pytest.raises(ValueError, match=match):
        score_sequences(policy, prompts, responses)


def test_bad_batch_size_is_refused():
    (policy,) = tiny_family("seeds", 1)
    with pytest.raises(ValueError, match="batch_size"):
        score_sequences(policy, ["a"], [[1]], batch_size=0)


def test_a_base_and_its_adapters_share_one_module_and_score_as_if_loaded_alone():
    """The reference policy is usually the base the LoRA policies were trained from."""
    lora = tiny_family("lora", 2)
    base, adapter = lora[0].spec.model, lora[0].spec.adapter
    ref, p0 = load_policies(
        [PolicySpec("ref", base, dtype=EXACT_DTYPE), PolicySpec("p0", base, adapter=adapter, dtype=EXACT_DTYPE)]
    )
    assert ref.model is p0.model
    [alone] = load_policies([PolicySpec("alone", base, dtype=EXACT_DTYPE)])
    responses = random_responses(len(PROMPTS), len(ref.tokenizer), seed=3)
    np.testing.assert_allclose(
        score_sequences(ref, PROMPTS, responses), score_sequences(alone, PROMPTS, responses), atol=1e-5
    )
    np.testing.assert_allclose(
        score_sequences(p0, PROMPTS, responses), score_sequences(lora[0], PROMPTS, responses), atol=1e-5
    )
