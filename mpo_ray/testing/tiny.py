"""Tiny, deterministic language models for tests and benchmarks.

No hub is reachable where the tests run (docs/design.md §6), so the suite builds its
own models: a byte-level BPE trained with `tokenizers` in milliseconds, a chat
template, and a small randomly initialised Llama or GPT-2 saved as an ordinary
Hugging Face directory. Everything is seeded, so the same call gives the same
weights and the same vocabulary (which mixing requires).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mpo_ray.config import PolicySpec

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A helpful assistant answers the
question clearly and briefly. A harmless assistant refuses to help with anything
dangerous. A funny assistant tells a joke about cats, dogs and the weather.
What is the capital of France? Paris is the capital of France. How do I bake
bread? Mix flour, water, salt and yeast, knead the dough, let it rise, bake it.
Tell me about the sea, the mountains, the rivers and the stars at night.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2025. Please write a short poem about rain.
"""


def build_tokenizer(vocab_size: int = 384, *, chat_template: bool = True):
    """Train a byte-level BPE on a fixed corpus; any byte string is encodable."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE if chat_template else None,
        model_max_length=10**6,
    )


def build_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = 384,
    arch: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    max_positions: int = 256,
    init_scale: float = 0.5,
    eos_boost: float = 1.0,
    chat_template: bool = True,
) -> Path:
    """Save a randomly initialised causal LM and its tokenizer under `path`.

    `init_scale` is the weight std: larger than the usual 0.02 so that the
    next-token distributions are peaked and different seeds disagree, which is
    what mixing tests need. `eos_boost` scales the EOS row of the output layer
    so that rows finish at different, seed-dependent steps.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    path = Path(path)
    tok = build_tokenizer(vocab_size, chat_template=chat_template)
    ids = dict(
        vocab_size=len(tok),
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=init_scale,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max_positions,
            **ids,
        )
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=max_positions, **ids)
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_output_embeddings().weight[tok.eos_token_id] *= eos_boost
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_lora_adapter(base: str | Path, path: str | Path, *, seed: int, rank: int = 4, scale: float = 0.5) -> Path:
    """Save a random (non-zero) LoRA adapter for `base` under `path`.

    peft initialises B = 0, i.e. an adapter equal to the base; we draw both
    factors so that each adapter is a genuinely different policy.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    gpt2 = model.config.model_type == "gpt2"  # GPT-2 uses Conv1D, i.e. transposed weights
    target = ["c_attn", "c_proj"] if gpt2 else ["q_proj", "v_proj", "o_proj"]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=target, fan_in_fan_out=gpt2, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, scale)
    peft_model.save_pretrained(path)
    return Path(path)


def build_tiny_family(
    root: str | Path, k: int, *, kind: str = "seeds", seed: int = 0, dtype: str = "auto", **model_kwargs
) -> list[PolicySpec]:
    """K tiny policies with one shared vocabulary, as PolicySpecs of dtype `dtype`.

    kind="seeds": K independent models (different random seeds, same arch and
    tokenizer); "lora": K LoRA adapters on one base saved under root/base;
    "system": K system-prompted variants of one base. The base of "lora" and
    "system" is the natural reference policy: PolicySpec("ref", root/"base").
    Tests about exactness pass dtype="float32": "auto" is bfloat16 on CUDA.
    """
    root = Path(root)
    if kind == "seeds":
        return [
            PolicySpec(f"p{i}", str(build_tiny_model(root / f"p{i}", seed=seed + i, **model_kwargs)), dtype=dtype)
            for i in range(k)
        ]
    base = str(build_tiny_model(root / "base", seed=seed, **model_kwargs))
    if kind == "lora":
        return [
            PolicySpec(
                f"p{i}", base, adapter=str(build_lora_adapter(base, root / f"lora{i}", seed=seed + 1 + i)), dtype=dtype
            )
            for i in range(k)
        ]
    if kind == "system":
        words = ["helpful", "harmless", "funny", "brief", "poetic", "formal", "kind", "curious"]
        return [
            PolicySpec(f"p{i}", base, system_prompt=f"You are a {words[i % len(words)]} assistant.", dtype=dtype)
            for i in range(k)
        ]
    raise ValueError(f"kind must be 'seeds', 'lora' or 'system', got {kind!r}")


def token_by_token_logprobs(model, prefix_ids: list[int], continuation: list[int], **forward_kwargs) -> torch.Tensor:
    """Reference log-softmax rows [len(continuation), V] from full, unpadded, uncached forwards.

    One forward per prefix length: slow and obviously right, which is the point.
    The input is built on the model's device (CUDA as well as CPU); the rows come
    back as float32 on that device.
    """
    device = next(model.parameters()).device
    rows = []
    seq = list(prefix_ids)
    for tok in continuation:
        with torch.no_grad():
            logits = model(torch.tensor([seq], device=device), **forward_kwargs).logits[0, -1].float()
        rows.append(torch.log_softmax(logits, -1))
        seq.append(tok)
    return torch.stack(rows) if rows else torch.zeros(0, device=device)


def describe(path: str | Path) -> dict:
    """Small summary of a saved tiny model (for benchmark logs)."""
    config = json.loads((Path(path) / "config.json").read_text())
    return {
        k: config.get(k) for k in ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer")
    }


# --- `tiny:` models named in configs, built on first use -------------------------

TINY_PREFIX = "tiny:"


def resolve_tiny(uri: str) -> str:
    """``tiny:base`` | ``tiny:seed-N`` | ``tiny:lora-N`` | ``tiny:other-vocab`` → a built local directory.

    Lets a config (workflows/configs/tiny.yaml) name small models that need no
    download: each is built deterministically the first time any process asks
    for it, in a temporary directory renamed into place, so actors on several
    nodes starting at once all end up with identical files.
    """
    import os
    import shutil
    import tempfile

    from mpo_ray.io.cache import cache_dir

    name = uri[len(TINY_PREFIX) :]
    root = cache_dir() / "tiny-v2"  # bump when a recipe below changes: old caches must not be reused
    target = root / name
    if target.exists():
        return str(target)
    if name == "base":
        build = lambda p: build_tiny_model(p, seed=0)  # noqa: E731
    elif name == "other-vocab":
        build = lambda p: build_tiny_model(p, seed=0, vocab_size=320)  # noqa: E731
    elif name.startswith("seed-") and name[5:].isdigit():
        build = lambda p: build_tiny_model(p, seed=int(name[5:]))  # noqa: E731
    elif name.startswith("lora-") and name[5:].isdigit():
        base = resolve_tiny(TINY_PREFIX + "base")
        # scale 0.08: log-ratios of about −1 ± 1.5 nats over a dozen tokens, like real aligned policies
        build = lambda p: build_lora_adapter(base, p, seed=int(name[5:]), scale=0.08)  # noqa: E731
    else:
        raise ValueError(f"unknown tiny model {uri!r}; use tiny:base, tiny:seed-N, tiny:lora-N or tiny:other-vocab.")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # lost the race (or failed): keep the winner's copy
    return str(target)
