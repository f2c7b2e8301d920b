"""The decoding engine's parts, each against the slow, obviously right path it replaces:
the batched LoRA delta against peft's per-row adapters, the static KV cache against a growing one,
and the device-side loop (compaction, stop strings, host looks) against teacher-forced recomputation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from tiny import EXACT_DTYPE, PROMPTS, reference_mixture, tiny_family

from mpo_ray import MixedPolicy, PolicySpec, load_policies
from mpo_ray.models import decoding, kv_group
from mpo_ray.models.lora import batched_lora
from mpo_ray.models.scoring import response_logprobs


def peft_rows(policies, prompts, responses):
    """response_logprobs through peft's own per-row `adapter_names` (what the batched delta replaces)."""
    from mpo_ray.models import scoring

    original = scoring.batched_lora
    scoring.batched_lora = lambda model, adapters: "forced off by the test"
    try:
        return response_logprobs(policies, [p.encode_prompts(prompts) for p in policies], responses)
    finally:
        scoring.batched_lora = original


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: LoRA around Conv1D (fan_in_fan_out)
def test_batched_lora_delta_equals_peft_per_row_adapters(arch):
    lora = tiny_family("lora", 3, arch=arch)
    base = load_policies([PolicySpec("ref", lora[0].spec.model, dtype=EXACT_DTYPE)])[0]
    # the reference shares the adapters' module when loaded with them: a '__base__' block among adapter blocks
    policies = load_policies([PolicySpec("ref", lora[0].spec.model, dtype=EXACT_DTYPE), *(p.spec for p in lora)])
    assert policies[0].model is policies[1].model and base.model is not policies[0].model
    assert not isinstance(batched_lora(policies[0].model, [p.adapter_name for p in policies]), str)
    responses = [[10, 11, 12], [40] * 5, [7], [3, 4]]
    fast = response_logprobs(policies, [p.encode_prompts(PROMPTS) for p in policies], responses)
    slow = peft_rows(policies, PROMPTS, responses)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_an_adapter_with_bias_falls_back_to_peft_per_row_and_says_why(tmp_path, caplog):
    """A LoRA with a bias on B is not the plain two-GEMM delta: peft's own per-row path computes it, exactly."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = tiny_family("lora", 2)
    base_path = lora[0].spec.model
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_path),
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_bias=True, init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "biased")
    policies = load_policies(
        [*(p.spec for p in lora), PolicySpec("biased", base_path, adapter=str(tmp_path / "biased"), dtype=EXACT_DTYPE)]
    )
    why = batched_lora(policies[0].model, [p.adapter_name for p in policies])
    assert isinstance(why, str) and "'biased' is not a plain bias-free linear LoRA" in why
    weights = [0.3, 0.3, 0.4]
    with caplog.at_level(logging.INFO, logger="mpo_ray.models.scoring"):
        gens = MixedPolicy(policies, weights).generate(PROMPTS, max_new_tokens=6, seed=2)
    assert "selected per row by peft" in caplog.text
    for prompt, g in zip(PROMPTS, gens):
        assert (g.logprob, g.log_normalizer) == tuple(
            pytest.approx(x, abs=1e-4) for x in reference_mixture(policies, weights, prompt, g.token_ids)
        )


@pytest.mark.parametrize("kind", ["seeds", "lora"])
def test_static_and_growing_caches_decode_the_same(kind, monkeypatch):
    policies = tiny_family(kind, 2)
    mixed = MixedPolicy(policies, [0.4, 0.6])
    static = mixed.generate(PROMPTS * 2, max_new_tokens=20, seed=5)
    model_class = type(policies[0].model.get_base_model() if kind == "lora" else policies[0].model)
    monkeypatch.setattr(model_class, "_can_compile_fullgraph", False)
    assert not kv_group._kv_cache(policies[0].model, 8)[1]
    growing = mixed.generate(PROMPTS * 2, max_new_tokens=20, seed=5)
    assert [g.token_ids for g in static] == [g.token_ids for g in growing]
    np.testing.assert_allclose([g.logprob for g in static], [g.logprob for g in growing], atol=1e-4)


def test_long_decodes_compact_finished_rows_and_stay_exact(monkeypatch):
    """Rows finish at different steps, over several host looks, with compaction: every row equals its
    teacher-forced recomputation and what it decodes alone; the host looks once per SYNC_EVERY steps."""
    policies = tiny_family("lora", 2, eos_boost=1.5)
    weights = [0.5, 0.5]
    mixed = MixedPolicy(policies, weights)
    looks, keeps = [], []
    look, keep = MixedPolicy._look, kv_group.KVGroup.keep
    monkeypatch.setattr(MixedPolicy, "_look", lambda self, *a: (looks.append(int(a[6].max())), look(self, *a))[1])
    monkeypatch.setattr(kv_group.KVGroup, "keep", lambda self, index: (keeps.append(len(index)), keep(self, index))[1])
    prompts, seeds = PROMPTS * 4, list(range(16))
    gens = mixed.generate(prompts, max_new_tokens=48, seed=seeds)
    lengths = sorted(g.num_tokens for g in gens)
    assert lengths[0] < 16 and len(set(lengths)) > 3, lengths  # the world finishes rows at many different steps
    assert keeps, "no compaction happened"
    assert len(looks) <= 48 // decoding.SYNC_EVERY and looks == sorted(looks)  # tokens looked at so far
    for i in (0, 5, 10, 15):
        [alone] = mixed.generate([prompts[i]], max_new_tokens=48, seed=[seeds[i]])
        assert alone.token_ids == gens[i].token_ids
        logprob, log_norm = reference_mixture(policies, weights, prompts[i], gens[i].token_ids)
        assert (gens[i].logprob, gens[i].log_normalizer) == (
            pytest.approx(logprob, abs=1e-4),
            pytest.approx(log_norm, abs=1e-4),
        )


def test_stop_strings_found_between_host_looks_end_rows_at_their_token():
    """A stop string completed at step t between two looks ends the row at t exactly: its scores are those
    of the tokens up to t (teacher-forced), never of the tokens decoded after t until the host looked."""
    import re

    policies = tiny_family("seeds", 2)
    mixed = MixedPolicy(policies, [0.5, 0.5])
    free = mixed.generate(PROMPTS, max_new_tokens=24, seed=9, ignore_eos=True)
    # an ASCII pair late in some row's text (a stop string's bytes then sit in whole tokens)
    row, stop = next(
        (i, m.group()) for i, g in enumerate(free) for m in re.finditer(r"[a-z]{2}", g.text) if m.start() >= 3
    )
    cut = mixed.generate(PROMPTS, max_new_tokens=24, seed=9, ignore_eos=True, stop=[stop])
    g = cut[row]
    assert g.finish_reason == "stop" and stop not in g.text and 1 < g.num_tokens < 24
    assert g.token_ids == free[row].token_ids[: g.num_tokens]
    assert stop in policies[0].tokenizer.decode(g.token_ids) and stop not in policies[0].tokenizer.decode(
        g.token_ids[:-1]
    )
    lp, ln = mixed.sequence_logprob([PROMPTS[row]], [g.token_ids])
    assert (g.logprob, g.log_normalizer) == (pytest.approx(lp[0], abs=1e-4), pytest.approx(ln[0], abs=1e-4))


def test_bench_decode_prints_ratios_and_fractions_of_the_bound(capsys):
    from mpo_ray.benchmarks import decode as bench

    rows = bench.main(
        [
            "--k",
            "1,2",
            "--batch",
            "1,2",
            "--families",
            "lora",
            "--max-new-tokens",
            "2",
            "--repeats",
            "1",
            "--hidden-size",
            "32",
        ]
    )
    assert [(r["k"], r["batch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        for key in (
            "mixed_tok_s",
            "one_tok_s",
            "mix_over_one",
            "mix_over_sep",
            "bandwidth_fraction",
            "compute_fraction",
        ):
            assert np.isfinite(r[key]) and r[key] > 0, (key, r)
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "% bw bound" in out


def test_bench_decode_refill_compares_chunks_refill_and_all_at_once(capsys):
    """--refill S: 4·S sampled rows decoded three ways (the bench itself checks they give the same rows)."""
    from mpo_ray.benchmarks import decode as bench

    argv = "--refill 2 --k 2 --families lora --max-new-tokens 6 --repeats 1 --hidden-size 32".split()
    [row] = bench.main(argv)
    assert row["slots"] == 2 and 0 < row["mean_tokens"] <= 6
    for key in ("chunks_tok_s", "refill_tok_s", "once_tok_s", "refill_over_chunks", "refill_over_once_cpu"):
        assert np.isfinite(row[key]) and row[key] > 0, (key, row)
    assert "refill/chunks" in capsys.readouterr().out


@pytest.mark.slow  # torch.compile of a tiny model: ~30 s on two CPU cores
def test_the_compiled_step_decodes_what_the_eager_step_does(caplog):
    """compile=True gives the same rows as eager decoding (after compaction too: a second shape), and logs
    each shape's compile time."""
    policies = tiny_family("lora", 2, eos_boost=1.5)
    eager = MixedPolicy(policies, [0.4, 0.6]).generate(PROMPTS * 2, max_new_tokens=20, seed=list(range(8)))
    with caplog.at_level(logging.INFO, logger=kv_group.__name__):
        compiled = MixedPolicy(policies, [0.4, 0.6], compile=True).generate(
            PROMPTS * 2, max_new_tokens=20, seed=list(range(8))
        )
    assert [g.token_ids for g in compiled] == [g.token_ids for g in eager]
    np.testing.assert_allclose([g.logprob for g in compiled], [g.logprob for g in eager], atol=1e-4)
    assert "compiled the decode step for 16 rows" in caplog.text  # 2 policies x 8 rows


def test_bench_score_prints_rates_and_fractions_of_the_compute_bound(capsys):
    from mpo_ray.benchmarks import score as bench

    rows = bench.main(["--k", "2", "--batch", "2", "--response-tokens", "4", "--repeats", "1", "--hidden-size", "32"])
    assert [r["what"] for r in rows] == ["one policy", "mixture of K=2"]
    assert all(np.isfinite(r["tokens_s"]) and 0 < r["compute_fraction"] for r in rows)
    assert "% compute bound" in capsys.readouterr().out


@pytest.mark.parametrize("slots", [1, 3, 5])
def test_slot_refill_decodes_every_row_as_all_at_once(slots, monkeypatch):
    """Fewer slots than rows: finished rows' slots take the next prompts (prefilled alone, copied into the
    static cache, the cache rebased when full). Every row's tokens and scores equal the all-at-once decode:
    two LoRA adapters of one base mixed with a separate model, EOS and a stop string, many waves."""
    lora = tiny_family("lora", 2, eos_boost=1.5)
    (other,) = tiny_family("seeds", 1)
    policies, weights = [*lora, other], [0.3, 0.3, 0.4]
    mixed = MixedPolicy(policies, weights)
    prompts, seeds = PROMPTS * 3, list(range(12))
    rebased = []
    rebase = kv_group.KVGroup.rebase
    monkeypatch.setattr(
        kv_group.KVGroup,
        "rebase",
        lambda self, needed: (
            rebased.append(self.write_position() + needed > self.mask.shape[1]),
            rebase(self, needed),
        )[1],
    )
    at_once = mixed.generate(prompts, max_new_tokens=30, seed=seeds, stop=["ab"])
    refilled = mixed.generate(prompts, max_new_tokens=30, seed=seeds, stop=["ab"], slots=slots)
    assert [g.token_ids for g in refilled] == [g.token_ids for g in at_once]
    assert [g.finish_reason for g in refilled] == [g.finish_reason for g in at_once]
    assert [g.text for g in refilled] == [g.text for g in at_once]
    np.testing.assert_allclose([g.logprob for g in refilled], [g.logprob for g in at_once], atol=1e-4)
    np.testing.assert_allclose([g.log_normalizer for g in refilled], [g.log_normalizer for g in at_once], atol=1e-4)
    assert {g.finish_reason for g in at_once} == {"stop", "length"}
    if slots == 1:
        assert any(rebased), "twelve rows through one slot never filled the cache"


def test_slots_are_validated():
    mixed = MixedPolicy(tiny_family("seeds", 2), [0.5, 0.5])
    with pytest.raises(ValueError, match="slots must be None or an integer >= 1, got 0"):
        mixed.generate(PROMPTS, max_new_tokens=2, slots=0)


def test_refill_keeps_room_for_the_rows_refilled_last():
    """Eight full-length rows through one slot: the last row starts with the cache nearly full, and the cache must
    still be rebased while it decodes (it once overflowed here: index_copy_ out of bounds)."""
    mixed = MixedPolicy(tiny_family("lora", 2), [0.5, 0.5])
    prompts, seeds = (PROMPTS * 2)[:8], list(range(8))
    at_once = mixed.generate(prompts, max_new_tokens=20, seed=seeds, ignore_eos=True)
    one_slot = mixed.generate(prompts, max_new_tokens=20, seed=seeds, ignore_eos=True, slots=1)
    assert [g.token_ids for g in one_slot] == [g.token_ids for g in at_once]
    np.testing.assert_allclose([g.logprob for g in one_slot], [g.logprob for g in at_once], atol=1e-4)


def test_slots_without_refill_decode_in_chunks_of_the_same_rows(monkeypatch, caplog):
    """A model with a growing KV cache cannot take a prompt into a finished row's slot: its rows decode in
    consecutive chunks of `slots` instead (the reason logged), and are the rows of the all-at-once decode."""
    monkeypatch.setattr(kv_group, "_static_shapes", lambda base: False)
    decoding._log_chunks.cache_clear()  # logged once per reason and process
    mixed = MixedPolicy(tiny_family("lora", 2, eos_boost=1.5), [0.5, 0.5])
    prompts, seeds = PROMPTS * 2, list(range(8))
    at_once = mixed.generate(prompts, max_new_tokens=20, seed=seeds, stop=["ab"])
    with caplog.at_level(logging.INFO, logger=decoding.__name__):
        chunked = mixed.generate(prompts, max_new_tokens=20, seed=seeds, stop=["ab"], slots=3)
    assert "slot refill off: LlamaForCausalLM decodes with a growing KV cache" in caplog.text
    assert [g.token_ids for g in chunked] == [g.token_ids for g in at_once]
    assert [g.finish_reason for g in chunked] == [g.finish_reason for g in at_once]
    np.testing.assert_allclose([g.logprob for g in chunked], [g.logprob for g in at_once], atol=1e-4)
