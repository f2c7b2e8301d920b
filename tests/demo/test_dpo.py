"""The DPO loop that makes the demo's policies: loss, log-probs, training on a tiny model."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from tiny import tiny_model_path

from mpo_ray.config import PolicySpec
from mpo_ray.demo.dpo import DPOConfig, PreferencePairs, dpo_loss, sequence_logprobs, train_dpo
from mpo_ray.models.decoding import MixedPolicy
from mpo_ray.models.policies import load_policies
from mpo_ray.models.scoring import score_sequences


def test_loss_is_the_closed_form():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])
    loss, margins = dpo_loss(pc, pr, rc, rr, beta=0.5)
    m = [0.5 * ((-3.0 + 3.5) - (-4.0 + 3.0)), 0.5 * ((-5.0 + 5.0) - (-2.0 + 2.5))]
    expected = np.mean([math.log1p(math.exp(-x)) for x in m])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(margins.numpy(), m, rtol=1e-6)
    zero, _ = dpo_loss(pc, pr, pc, pr, beta=0.1)  # π = π_ref: loss log 2
    assert zero.item() == pytest.approx(math.log(2))


def test_sequence_logprobs_match_the_scorer():
    (policy,) = load_policies([PolicySpec(name="p", model=tiny_model_path("dpo-base", seed=3))])
    prompts = ["hello there", "How do I bake bread? Tell me slowly."]
    responses = [[10, 11, 12, 13], [40, 41]]
    ids = policy.encode_prompts(prompts)
    with torch.no_grad():
        ours = sequence_logprobs(policy.model, ids, responses, policy.pad_token_id).double().numpy()
    np.testing.assert_allclose(ours, score_sequences(policy, prompts, responses), atol=1e-5)


def _pairs(policy, n=12, seed=0):
    """Chosen responses use tokens 20-29, rejected ones 50-59: a preference the model can learn."""
    rng = np.random.default_rng(seed)
    prompts = policy.encode_prompts([f"question number {i}" for i in range(n)])
    chosen = [rng.integers(20, 30, size=rng.integers(2, 6)).tolist() for _ in range(n)]
    rejected = [rng.integers(50, 60, size=rng.integers(2, 6)).tolist() for _ in range(n)]
    return PreferencePairs(prompts, chosen, rejected)


def test_training_learns_the_preference_deterministically(tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny_model_path("dpo-base", seed=3)
    (policy,) = load_policies([PolicySpec(name="p", model=path)])
    config = DPOConfig(epochs=4, batch_pairs=4, learning_rate=5e-2, lora_rank=4, last_layers=1, seed=1)
    runs = []
    for _ in range(2):
        base = AutoModelForCausalLM.from_pretrained(path)
        model, history = train_dpo(base, _pairs(policy), config, pad_id=policy.pad_token_id)
        runs.append((model, history))
    (model, history), (_, again) = runs
    assert [h["loss"] for h in history] == [h["loss"] for h in again]  # seeded: bit-for-bit
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # a fresh adapter is the base
    assert history[-1]["loss"] < 0.5 * math.log(2) and history[-1]["accuracy"] == 1.0
    # only the last layer is adapted
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted == {"1"}
    base = AutoModelForCausalLM.from_pretrained(path)
    _, short = train_dpo(base, _pairs(policy), dataclasses.replace(config, max_steps=5), pad_id=policy.pad_token_id)
    assert [h["loss"] for h in short] == [h["loss"] for h in history[:5]]  # early stop = a prefix of the full run

    # the saved adapter is a policy like any other; on held-out pairs it prefers the learnt tokens
    model.save_pretrained(tmp_path / "adapter")
    ref, tuned = load_policies(
        [PolicySpec(name="ref", model=path), PolicySpec(name="tuned", model=path, adapter=str(tmp_path / "adapter"))]
    )
    held = _pairs(policy, n=8, seed=9)
    prompts = [f"question number {i}" for i in range(8)]
    ratio_c = score_sequences(tuned, prompts, held.chosen_ids) - score_sequences(ref, prompts, held.chosen_ids)
    ratio_r = score_sequences(tuned, prompts, held.rejected_ids) - score_sequences(ref, prompts, held.rejected_ids)
    assert np.mean(ratio_c > ratio_r) >= 0.75
    MixedPolicy([ref, tuned], [0.5, 0.5]).generate(prompts[:2], max_new_tokens=4, seed=0)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="same positive number"):
        PreferencePairs([[1]], [[2]], [])
    with pytest.raises(ValueError, match="at least one token"):
        PreferencePairs([[1]], [[]], [[3]])
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="epochs"):
        DPOConfig(epochs=0)
    with pytest.raises(ValueError, match="max_steps"):
        DPOConfig(max_steps=0)
    with pytest.raises(ValueError, match="last_layers"):
        DPOConfig(last_layers=0)
