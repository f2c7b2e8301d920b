"""MixedPolicy: exact against token-by-token recomputation, one-hot = the policy itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tiny import EXACT_DTYPE, PROMPTS, reference_mixture, tiny_family, tiny_model_path

from mpo_ray import Generation, MixedPolicy, PolicySpec, load_policies, score_sequences
from mpo_ray.models.scoring import pad_left

MAX_NEW = 12


def hf_greedy(policy, prompts, max_new_tokens):
    """The policy's own transformers greedy generate on the same left-padded prompts."""
    ids, mask = pad_left(policy.encode_prompts(prompts), policy.pad_token_id, policy.device)
    with policy.activated():
        out = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind,arch", [("seeds", "llama"), ("seeds", "gpt2"), ("system", "llama"), ("lora", "llama")])
def test_one_hot_weights_reproduce_the_policy(kind, arch):
    policies = tiny_family(kind, 3, arch=arch)
    for k, policy in enumerate(policies):
        weights = np.eye(len(policies))[k]
        gens = MixedPolicy(policies, weights).generate(PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
        expected = hf_greedy(policy, PROMPTS, MAX_NEW)
        eos = policy.tokenizer.eos_token_id
        for g, hf in zip(gens, expected):
            assert g.token_ids == hf[: g.num_tokens]
            if g.finish_reason == "stop":
                assert g.token_ids[-1] == eos and set(hf[g.num_tokens :]) <= {policy.pad_token_id}
            else:
                assert g.num_tokens == MAX_NEW and eos not in g.token_ids
            assert g.log_normalizer == pytest.approx(0.0, abs=1e-4)
        scores = score_sequences(policy, PROMPTS, [g.token_ids for g in gens])
        np.testing.assert_allclose([g.logprob for g in gens], scores, rtol=1e-5, atol=1e-4)


def test_rows_finish_independently():
    policies = tiny_family("seeds", 2)
    gens = MixedPolicy(policies, [0.5, 0.5]).generate(PROMPTS * 2, max_new_tokens=MAX_NEW, seed=3)
    assert len({g.num_tokens for g in gens}) > 1
    assert {g.finish_reason for g in gens} <= {"stop", "length"}
    for g in gens:
        assert g.num_tokens == len(g.token_ids)
        assert (g.finish_reason == "length") == (g.num_tokens == MAX_NEW and g.token_ids[-1] != 2)


@pytest.mark.parametrize("kind", ["seeds", "system", "lora"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_logprob_and_normalizer_equal_recomputation(kind, k):
    """Random λ on the simplex, padded batch and unpadded single prompt."""
    policies = tiny_family(kind, k)
    weights = np.random.default_rng(k).dirichlet(np.ones(k))
    mixed = MixedPolicy(policies, weights)
    for prompts in (PROMPTS, PROMPTS[1:2]):
        gens = mixed.generate(prompts, max_new_tokens=MAX_NEW, seed=k)
        for prompt, g in zip(prompts, gens):
            logprob, log_norm = reference_mixture(policies, weights, prompt, g.token_ids)
            assert g.logprob == pytest.approx(logprob, rel=1e-5, abs=1e-4)
            assert g.log_normalizer == pytest.approx(log_norm, rel=1e-5, abs=1e-4)
            assert g.log_normalizer <= 1e-6  # Hölder: Σ_v Π_k π_k^λ_k ≤ 1 on the simplex
        lp, ln = mixed.sequence_logprob(prompts, [g.token_ids for g in gens], batch_size=3)
        np.testing.assert_allclose(lp, [g.logprob for g in gens], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ln, [g.log_normalizer for g in gens], rtol=1e-5, atol=1e-4)


def test_weights_off_the_simplex_are_an_allowed_extension():
    policies = tiny_family("seeds", 2)
    weights = [1.5, -0.5]  # DeRa-style extrapolation away from policy 1
    gens = MixedPolicy(policies, weights).generate(PROMPTS[:2], max_new_tokens=6, seed=0)
    for prompt, g in zip(PROMPTS, gens):
        logprob, log_norm = reference_mixture(policies, weights, prompt, g.token_ids)
        assert (g.logprob, g.log_normalizer) == (pytest.approx(logprob, abs=1e-4), pytest.approx(log_norm, abs=1e-4))


def test_sequence_logprob_mixes_separate_models_and_shared_bases():
    """Two LoRA adapters on one base plus a separate model: two groups, one mixture."""
    lora = tiny_family("lora", 2)
    (other,) = tiny_family("seeds", 1, arch="gpt2")
    policies, weights = [*lora, other], [0.2, 0.3, 0.5]
    responses = [[10, 11, 12], [], [40] * 7, [5]]
    lp, ln = MixedPolicy(policies, weights).sequence_logprob(PROMPTS, responses)
    for i, (prompt, response) in enumerate(zip(PROMPTS, responses)):
        assert (lp[i], ln[i]) == pytest.approx(reference_mixture(policies, weights, prompt, response), abs=1e-4)


def test_base_rows_and_adapter_rows_mix_in_one_forward():
    """A reference (adapters off) and two adapters of one base: one group, '__base__' rows."""
    lora = tiny_family("lora", 2)
    base = lora[0].spec.model
    policies = load_policies([PolicySpec("ref", base, dtype=EXACT_DTYPE), *(p.spec for p in lora)])
    weights = [-0.5, 0.8, 0.7]  # a DeRa-style negative exponent on the reference
    gens = MixedPolicy(policies, weights).generate(PROMPTS, max_new_tokens=8, seed=4)
    for prompt, g in zip(PROMPTS, gens):
        logprob, log_norm = reference_mixture(policies, weights, prompt, g.token_ids)
        assert (g.logprob, g.log_normalizer) == (pytest.approx(logprob, abs=1e-4), pytest.approx(log_norm, abs=1e-4))


def count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("kind", ["system", "lora"])
def test_variants_of_one_base_run_one_forward_per_step(kind):
    policies = tiny_family(kind, 3)
    calls, handle = count_forwards(policies[0].model)
    try:
        MixedPolicy(policies, [0.3, 0.3, 0.4]).generate(PROMPTS, max_new_tokens=5, seed=0, ignore_eos=True)
    finally:
        handle.remove()
    assert len(calls) == 5  # prefill + 4 steps, each over K×B rows, not K forwards per step


def test_sampling_is_deterministic_for_a_seed():
    mixed = MixedPolicy(tiny_family("seeds", 2), [0.4, 0.6])
    a = mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, seed=7)
    assert a == mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, seed=7)
    assert a != mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, seed=8)
    assert all(isinstance(g, Generation) for g in a)


def test_top_k_one_and_tiny_top_p_are_greedy():
    mixed = MixedPolicy(tiny_family("seeds", 2), [0.4, 0.6])
    greedy = mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, temperature=0)
    assert mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, top_k=1, seed=1) == greedy
    assert mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, top_p=1e-6, seed=1) == greedy


def test_temperature_and_filters_apply_after_mixing_but_logprob_stays_untempered():
    policies = tiny_family("system", 2)
    weights = [0.7, 0.3]
    gens = MixedPolicy(policies, weights).generate(
        PROMPTS, max_new_tokens=8, temperature=0.6, top_k=5, top_p=0.9, seed=2
    )
    for prompt, g in zip(PROMPTS, gens):
        assert g.logprob == pytest.approx(reference_mixture(policies, weights, prompt, g.token_ids)[0], abs=1e-4)


def test_stop_strings_end_rows_and_cut_the_text():
    mixed = MixedPolicy(tiny_family("seeds", 2, eos_boost=0.0), [0.5, 0.5])
    free = mixed.generate(PROMPTS[:2], max_new_tokens=MAX_NEW, temperature=0)
    assert all(g.finish_reason == "length" for g in free)
    text = free[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = mixed.generate(PROMPTS[:2], max_new_tokens=MAX_NEW, temperature=0, stop=[stop, "\x00never"])
    first = cut[0]
    assert first.finish_reason == "stop" and first.text == text[: text.index(stop)]
    assert first.token_ids == free[0].token_ids[: first.num_tokens] and first.num_tokens < MAX_NEW
    if stop not in free[1].text:  # the other row goes on as before (scores equal to float tolerance)
        assert (cut[1].token_ids, cut[1].finish_reason) == (free[1].token_ids, "length")
        assert cut[1].logprob == pytest.approx(free[1].logprob, abs=1e-4)


def test_ignore_eos_decodes_every_row_to_the_limit():
    mixed = MixedPolicy(tiny_family("seeds", 2, eos_boost=4.0), [0.5, 0.5])
    gens = mixed.generate(PROMPTS, max_new_tokens=MAX_NEW, seed=0, ignore_eos=True)
    assert all(g.num_tokens == MAX_NEW and g.finish_reason == "length" for g in gens)


def test_num_candidates_pick_is_a_consistent_deterministic_candidate():
    """The kept candidate is a real sample (its scores equal a teacher-forced recomputation), and it is
    the same whatever else is in the batch: each (prompt, candidate) draws from its own seeded stream."""
    mixed = MixedPolicy(tiny_family("seeds", 2), [0.5, 0.5])
    n = 4
    picked = mixed.generate(PROMPTS[:2], max_new_tokens=MAX_NEW, seed=[11, 12], num_candidates=n)
    alone = mixed.generate(PROMPTS[1:2], max_new_tokens=MAX_NEW, seed=[12], num_candidates=n)
    assert len(picked) == 2 and picked[1].token_ids == alone[0].token_ids
    logprob, log_norm = mixed.sequence_logprob(PROMPTS[:2], [g.token_ids for g in picked])
    np.testing.assert_allclose(logprob, [g.logprob for g in picked], atol=1e-4)
    np.testing.assert_allclose(log_norm, [g.log_normalizer for g in picked], atol=1e-4)


def test_per_prompt_seeds_make_rows_independent_of_the_batch():
    mixed = MixedPolicy(tiny_family("seeds", 2), [0.5, 0.5])
    both = mixed.generate(PROMPTS[:3], max_new_tokens=MAX_NEW, seed=[1, 2, 3])
    one = mixed.generate([PROMPTS[2]], max_new_tokens=MAX_NEW, seed=[3])
    assert both[2].token_ids == one[0].token_ids
    assert (
        mixed.generate(PROMPTS[:3], max_new_tokens=MAX_NEW, seed=7)[0].token_ids
        == mixed.generate(PROMPTS[:3], max_new_tokens=MAX_NEW, seed=7)[0].token_ids
    )
    with pytest.raises(ValueError, match="one per prompt"):
        mixed.generate(PROMPTS[:3], max_new_tokens=MAX_NEW, seed=[1, 2])


def test_importance_resampling_targets_the_sequence_level_mixture():
    """The pick follows softmax(log_normalizer) over the candidates, not a uniform choice."""
    mixed = MixedPolicy(tiny_family("seeds", 2), [0.5, 0.5])
    n, draws = 3, 400
    prompts = PROMPTS[:1] * draws
    seeds = list(range(draws))
    picked = mixed.generate(prompts, max_new_tokens=3, seed=seeds, num_candidates=n, ignore_eos=True)
    candidates = mixed.sample_candidates(prompts, n, max_new_tokens=3, seed=seeds, ignore_eos=True)
    hits, expected = 0, []
    for g, group in zip(picked, candidates):
        assert any(dataclasses.replace(g, log_partition=None) == c for c in group)
        w = np.exp([c.log_normalizer for c in group])
        # untempered: proposal_logprob == logprob (up to float32),
        # so each weight is exp(log_normalizer) and Ẑ their mean
        assert g.log_partition == pytest.approx(np.log(w.mean()), abs=1e-5)
        best = int(np.argmax(w))
        hits += g.token_ids == group[best].token_ids
        expected.append(w[best] / w.sum())
    expected = np.asarray(expected)
    assert expected.mean() > 0.5  # the weights are informative: a uniform pick would give 1/3
    sd = np.sqrt((expected * (1 - expected)).sum())
    assert abs(hits - expected.sum()) < 4 * sd


def test_vocabulary_mismatch_is_refused():
    (p,) = tiny_family("seeds", 1)
    [other] = load_policies([PolicySpec("bigger", tiny_model_path("v400", vocab_size=400))])
    with pytest.raises(ValueError, match="'p0' and 'bigger' have different vocabularies"):
        MixedPolicy([p, other], [0.5, 0.5])


@pytest.mark.parametrize(
    "weights,match",
    [
        ([1.0], r"weights has 1 entries but there are 2 policies \['p0', 'p1'\]"),
        ([0.5, float("nan")], "weights must be finite"),
        ([0.0, 0.0], "all zero"),
        ("ab", "list of numbers"),
        ([0.5 + 0j, 0.5], r"weights must be real numbers, got complex .*np\.real"),
    ],
)
def test_bad_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        MixedPolicy(tiny_family("seeds", 2), weights)


@pytest.mark.parametrize(
    "weights,match",
    [
        ([1e308, 0.5], r"weights\[0\] = 1e\+308 \(policy 'p0'\) is beyond \|w\| <= 1e\+04"),  # inf in float32
        ([0.5, -1e5], r"weights\[1\] = -1e\+05 \(policy 'p1'\)"),
        ([0.0, 10001.0], r"weights\[1\] = 1e\+04 \(policy 'p1'\) is beyond"),
    ],
)
def test_mixture_refuses_weights_that_overflow(weights, match):
    """λ = 1e308 used to decode rows with log_normalizer = -inf and no error; now it is refused up front."""
    from mpo_ray.models.decoding import MAX_ABS_WEIGHT

    with pytest.raises(ValueError, match=match):
        MixedPolicy(tiny_family("seeds", 2), weights)
    MixedPolicy(tiny_family("seeds", 2), [MAX_ABS_WEIGHT, -MAX_ABS_WEIGHT])  # the bound itself is accepted


def test_non_finite_scores_raise_naming_the_prompt():
    """A policy forbidding token 5 (logit -inf): a negative weight on it makes every normaliser +inf, and a
    response that contains the token has log-prob -inf. Neither is returned; the error names the prompt."""
    policies = tiny_family("seeds", 2)

    def forbid_token_5(module, args, output):
        output.logits[..., 5] = float("-inf")

    handle = policies[0].model.register_forward_hook(forbid_token_5)
    try:
        with pytest.raises(
            ValueError,
            match=r"gives prompt 0 \(row 0\) a non-finite score at new token 0 "
            r"\(logprob .*, log_normalizer inf",
        ):
            MixedPolicy(policies, [-0.5, 1.5]).generate(PROMPTS, max_new_tokens=4, temperature=0)
        mixed = MixedPolicy(policies, [0.5, 0.5])
        responses = [[10, 11], [12, 5, 13], [], [14]]
        with pytest.raises(
            ValueError,
            match=r"gives prompt 1 \(row 1\) a non-finite score teacher-forcing "
            r"its response \(logprob -inf",
        ):
            mixed.sequence_logprob(PROMPTS, responses)
        lp, ln = mixed.sequence_logprob(PROMPTS, [responses[0], [], [], responses[3]])  # token 5 absent: fine
        assert np.all(np.isfinite(lp)) and np.all(np.isfinite(ln))
        gens = mixed.generate(PROMPTS, max_new_tokens=4, seed=0)  # positive weights never sample token 5
        assert all(np.isfinite(g.logprob) and np.isfinite(g.log_normalizer) and 5 not in g.token_ids for g in gens)
    finally:
        handle.remove()


@pytest.mark.parametrize(
    "prompts,kwargs,match",
    [
        ([], {}, "prompts is empty"),
        (["a", None], {}, r"prompts\[1\] is a NoneType, expected str"),
        (["a"], {"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        (["a"], {"temperature": -1}, "temperature"),
        (["a"], {"top_k": 0}, "top_k"),
        (["a"], {"top_p": 1.5}, "top_p"),
        (["a"], {"stop": [""]}, "stop"),
        (["a"], {"num_candidates": 2, "temperature": 0}, "needs sampling"),
        (["word " * 300], {}, r"prompts\[0\] is \d+ tokens once formatted for policy 'p0'.*context of 256 tokens"),
        (["a"], {"max_new_tokens": 250}, r"with 250 new tokens \(max_new_tokens\) .* context of 256"),
    ],
)
def test_bad_generate_input_is_refused(prompts, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        MixedPolicy(tiny_family("seeds", 2), [0.5, 0.5]).generate(prompts, **kwargs)


def test_policy_specs_are_loaded_for_you():
    specs = [PolicySpec("a", tiny_model_path("spec_a", seed=1)), PolicySpec("b", tiny_model_path("spec_b", seed=2))]
    mixed = MixedPolicy(specs, [0.5, 0.5])
    assert [p.name for p in mixed.policies] == ["a", "b"]
    assert "a^0.5 * b^0.5" in repr(mixed)
    [g] = mixed.generate(["hi"], max_new_tokens=2, seed=0)
    assert isinstance(g.logprob, float) and isinstance(g.token_ids, list) and isinstance(g.token_ids[0], int)


@pytest.mark.parametrize("call", ["generate", "sequence_logprob"])
def test_a_failed_forward_leaves_no_per_row_adapter_state(call):
    """A forward that raises half-way through a call over rows of several adapters (out of memory, an interrupt)
    must not leave peft's per-row `adapter_names` hooks on the shared module: later calls, with other row
    counts or one policy alone, work and give what they gave before."""
    from mpo_ray.models.policies import drop_row_adapter_hooks

    policies = tiny_family("lora", 2)
    mixed = MixedPolicy(policies, [0.5, 0.5])
    responses = [[10, 11], [12, 13, 14], [], [15]]
    before = score_sequences(policies[0], PROMPTS[:1], responses[:1])
    expected = mixed.generate(PROMPTS[:1], max_new_tokens=4, seed=0)
    failures = []

    def fail_once(module, args):
        if not failures:
            failures.append(1)
            raise RuntimeError("injected failure")

    layer = next(m for name, m in policies[0].model.named_modules() if name.endswith("layers.1"))
    handle = layer.register_forward_pre_hook(fail_once)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            if call == "generate":
                mixed.generate(PROMPTS, max_new_tokens=4, seed=0)
            else:
                mixed.sequence_logprob(PROMPTS, responses)
    finally:
        handle.remove()
    assert failures == [1]
    assert drop_row_adapter_hooks(policies[0].model) == 0  # nothing was left behind
    np.testing.assert_array_equal(score_sequences(policies[0], PROMPTS[:1], responses[:1]), before)
    assert mixed.generate(PROMPTS[:1], max_new_tokens=4, seed=0) == expected
