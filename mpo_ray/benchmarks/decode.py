"""`mpo-ray bench decode`: MixedPolicy.generate against K separate HF generates.

For K = 1, 2, 3 policies, times (a) `MixedPolicy.generate` producing B×T mixed
tokens and (b) each of the K policies' own `transformers` `generate` on the
same prompts, one after another (K×B×T tokens), in one run, and prints the
cost ratio t_mixed / t_separate. docs/design.md §5: mixing K separate models reads
all K models per token, so the honest target is a ratio ≤ 1.1; system-prompted
or LoRA variants of one base run as one forward over K×B rows and should come
in under 1. Every row decodes exactly T tokens (EOS ignored / suppressed) and
both sides decode greedily, so the work is identical. Figures, not asserts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mpo_ray.benchmarks import positive_int, positive_int_list
from mpo_ray.config import PolicySpec
from mpo_ray.models.decoding import MixedPolicy
from mpo_ray.models.policies import load_policies, resolve_model
from mpo_ray.models.scoring import pad_left
from mpo_ray.testing import build_lora_adapter, build_tiny_family

PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke about cats.",
    "How do I bake bread at home?",
    "Write a short poem about rain.",
    "Explain why the sky is blue.",
    "Give me three tips for learning to swim.",
    "What should I pack for a weekend in the mountains?",
    "Summarise the plot of a detective story in two sentences.",
]


def separate_generate(policies, prompts, max_new_tokens):
    """Each policy's own HF greedy generate, one after another."""
    for p in policies:
        ids, mask = pad_left(p.encode_prompts(prompts), p.pad_token_id, p.device)
        with p.activated():  # its LoRA adapter, or adapters off for a base
            p.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=p.pad_token_id,
            )


def timed(fns, repeats: int) -> list[tuple[float, float]]:
    """(median wall time, median process CPU time) of each function. The functions
    alternate within each repeat so that drift in machine load hits them alike; CPU
    time is the steadier figure on a shared CPU machine (meaningless on GPU)."""
    times = [[] for _ in fns]
    for r in range(repeats + 1):  # the first round is a warm-up
        for fn, ts in zip(fns, times):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if r:
                ts.append((time.perf_counter() - t0, time.process_time() - c0))
    return [(statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for ts in times]


def tiny_policies(kind, k, root, args):
    specs = build_tiny_family(
        Path(root) / kind, k, kind=kind, hidden_size=args.hidden_size, num_layers=args.layers, max_positions=1024
    )
    return load_policies([s.model_copy(update={"device": args.device, "dtype": args.dtype}) for s in specs])


def model_policies(kind, k, path, root, args):
    """K policies around one real model: K separate copies, K system prompts, or K random LoRA adapters."""
    base = dict(model=str(path), device=args.device, dtype=args.dtype)
    if kind == "seeds":  # K separately loaded modules (same weights: the cost is what we measure)
        return [load_policies([PolicySpec(f"copy{i}", **base)])[0] for i in range(k)]
    if kind == "system":
        words = ["helpful", "harmless", "funny", "brief", "formal"]
        return load_policies([PolicySpec(f"sys{i}", system_prompt=f"You are a {words[i]} assistant.", **base) for i in range(k)])
    adapters = [build_lora_adapter(path, Path(root) / f"lora{i}", seed=i, scale=0.01) for i in range(k)]
    return load_policies([PolicySpec(f"lora{i}", adapter=str(a), **base) for i, a in enumerate(adapters)])


def random_llama_1b(path: Path, tokenizer_from: str) -> Path:
    """A randomly initialised Llama-3.2-1B-shaped model (≈1.2B parameters, bf16) with
    SmolLM2's tokenizer: the decode cost of a real 1B model, no download."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run(label, policies_for, ks, prompts, args):
    print(f"\n{label}: B={len(prompts)} prompts, T={args.max_new_tokens} new tokens, median of {args.repeats}")
    print(f"{'family':8} {'K':>2} {'mixed tok/s':>12} {'one generate tok/s':>19} {'t_mixed / t_K_separate':>23}"
          f" {'(CPU time)':>10}")
    rows = []
    for kind in args.families:
        policies = policies_for(kind, max(ks))
        for k in ks:
            mixed = MixedPolicy(policies[:k], [1.0 / k] * k)
            (t_mix, c_mix), (t_sep, c_sep), (t_one, _) = timed(
                [
                    lambda: mixed.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=0, ignore_eos=True),
                    lambda: separate_generate(policies[:k], prompts, args.max_new_tokens),
                    lambda: separate_generate(policies[:1], prompts, args.max_new_tokens),
                ],
                args.repeats,
            )
            tokens = len(prompts) * args.max_new_tokens
            print(f"{kind:8} {k:>2} {tokens / t_mix:12.1f} {tokens / t_one:19.1f} {t_mix / t_sep:22.2f}×"
                  f" {c_mix / c_sep:9.2f}×", flush=True)
            rows.append((label, kind, k, tokens / t_mix, tokens / t_one, t_mix / t_sep, c_mix / c_sep))
    return rows


def main(argv: list[str] | None = None) -> list[tuple]:
    p = argparse.ArgumentParser(prog="mpo-ray bench decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=positive_int_list, default="1,2,3", help="policy counts to mix (default 1,2,3)")
    p.add_argument("--families", default="seeds,system,lora",
                   help="seeds = K separate models, system = K system prompts on one base, lora = K adapters on one base")
    p.add_argument("--prompts", type=positive_int, default=8, help="batch size B")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--hidden-size", type=positive_int, default=64, help="tiny model width")
    p.add_argument("--layers", type=positive_int, default=2, help="tiny model depth")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny models")
    p.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct (the embedded default)")
    p.add_argument("--model", default=None, help="also this model directory / hub id")
    p.add_argument("--random-1b", action="store_true", help="also a random Llama-1B-shaped model (for GPUs)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto / float32 / bfloat16 / float16")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (1 keeps figures steady on a busy shared machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = args.k
    args.families = args.families.split(",")
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-") as root:
        if not args.no_tiny:
            label = f"tiny llama (hidden {args.hidden_size}, {args.layers} layers, vocab 384)"
            rows += run(label, lambda kind, k: tiny_policies(kind, k, root, args), ks, prompts, args)
        models = (["default"] if args.smollm2 else []) + ([args.model] if args.model else [])
        if args.random_1b:
            models.append(str(random_llama_1b(Path(root) / "llama-1b", resolve_model("default"))))
        for model in models:
            path = resolve_model(model)
            label = {"default": "SmolLM2-135M-Instruct"}.get(model, Path(model).name)
            rows += run(label, lambda kind, k: model_policies(kind, k, path, root, args), ks, prompts, args)
    return rows


if __name__ == "__main__":
    main()
