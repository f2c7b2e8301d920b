"""`mpo-ray bench decode`: MixedPolicy.generate against one model's and K models' HF generate, and
against the hardware bound.

For K = 1, 2, 3 policies and each batch size B, times (a) `MixedPolicy.generate` producing B×T mixed
tokens, (b) each of the K policies' own `transformers` `generate` on the same prompts, one after
another (K×B×T tokens) and (c) the first policy's generate alone, in one run, and prints
t_mixed / t_one and t_mixed / t_K_separate (wall, and process CPU time, steadier on a shared CPU).
Every row decodes exactly T tokens (EOS ignored / suppressed), greedily on both sides.

The bound (issue 18): a decode step must read every distinct module's weights once (bandwidth bound:
a copy bandwidth measured here over the parameter bytes, in steps/s, × B mixed tokens a step) and
multiply K×B rows by them (compute bound: a matmul peak measured here over 2 × params × K flops a mixed
token). Each mixed figure is printed as a fraction of both. Figures, not asserts.

``--refill S`` measures slot refill instead, on rows of mixed lengths (sampled, EOS allowed, one seed
each): QUEUED_BATCHES × S rows decoded (a) in consecutive chunks of S, each all at once (a workflow's
batches without refill), (b) through S slots, a finished row's slot taking the next row, and (c) all at
once; it prints generated tokens/s and the ratios of (b) to (a) and (c). The rows are the same in all three.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from mpo_ray.benchmarks import positive_int, positive_int_list
from mpo_ray.config import PolicySpec
from mpo_ray.models.decoding import MixedPolicy
from mpo_ray.models.policies import load_policies, resolve_dtype, resolve_model
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
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=p.pad_token_id,
            )


def timed(fns, repeats: int) -> list[tuple[float, float]]:
    """(median wall time, median process CPU time) of each function. The functions
    alternate within each repeat so that drift in machine load hits them alike; CPU
    time is the steadier figure on a shared CPU machine (meaningless on GPU)."""
    times = [[] for _ in fns]
    for r in range(repeats + 1):  # the first round is a warm-up
        for fn, ts in zip(fns, times):
            _sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync()
            if r:
                ts.append((time.perf_counter() - t0, time.process_time() - c0))
    return [(statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for ts in times]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hardware(device: str, dtype: torch.dtype) -> dict:
    """What this device does at best: copy bandwidth (bytes read + written per second) and matmul peak."""
    size = (2 << 30) if device.startswith("cuda") else (256 << 20)
    x = torch.empty(size // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    (t_copy, _), (t_mm, _) = timed([lambda: y.copy_(x), lambda: a @ b], 3)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else _cpu_name()
    return {"name": name, "bandwidth": 2 * size / t_copy, "flops": 2 * n**3 / t_mm}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "CPU"


def model_cost(policies) -> tuple[int, int]:
    """(bytes a decode step reads: every distinct module's parameters; matmul parameters of one policy's
    forward: all but an untied input embedding, which is a lookup)."""
    modules = {id(p.model): p.model for p in policies}.values()
    read = sum(t.numel() * t.element_size() for m in modules for t in m.parameters())
    model = policies[0].model
    params = sum(t.numel() for t in model.parameters())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if embed.data_ptr() != head.data_ptr():
        params -= embed.numel()
    return read, params


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
        return load_policies(
            [PolicySpec(f"sys{i}", system_prompt=f"You are a {words[i]} assistant.", **base) for i in range(k)]
        )
    adapters = [build_lora_adapter(path, Path(root) / f"lora{i}", seed=i, scale=0.01) for i in range(k)]
    return load_policies([PolicySpec(f"lora{i}", adapter=str(a), **base) for i, a in enumerate(adapters)])


def random_llama_1b(path: Path, tokenizer_from: str) -> Path:
    """A randomly initialised Llama-3.2-1B-shaped model (≈1.2B parameters, bf16) with
    SmolLM2's tokenizer: the decode cost of a real 1B model, no download."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run(label, policies_for, ks, batches, args, hw):
    heading(
        f"{label}: T={args.max_new_tokens} new tokens, median of {args.repeats}",
        [("B", 4), ("mixed tok/s", 11), ("one gen tok/s", 13), ("t_mix/t_one", 11), ("(CPU)", 6)]
        + [("t_mix/t_K_sep", 13), ("(CPU)", 6), ("% bw bound", 10), ("% compute", 9)],
    )
    rows = []
    for kind, k, policies, mixed in mixtures(policies_for, ks, args):
        read, params = model_cost(policies)
        for b in batches:
            prompts = (PROMPTS * (b // len(PROMPTS) + 1))[:b]
            (t_mix, c_mix), (t_sep, c_sep), (t_one, c_one) = timed(
                [
                    lambda: mixed.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=0, ignore_eos=True),
                    lambda: separate_generate(policies, prompts, args.max_new_tokens),
                    lambda: separate_generate(policies[:1], prompts, args.max_new_tokens),
                ],
                args.repeats,
            )
            tokens = b * args.max_new_tokens
            bw_bound = hw["bandwidth"] / read * b  # mixed tok/s if a step cost only reading the weights
            compute_bound = hw["flops"] / (2 * params * k)
            row = dict(
                label=label,
                family=kind,
                k=k,
                batch=b,
                mixed_tok_s=tokens / t_mix,
                one_tok_s=tokens / t_one,
                mix_over_one=t_mix / t_one,
                mix_over_one_cpu=c_mix / c_one,
                mix_over_sep=t_mix / t_sep,
                mix_over_sep_cpu=c_mix / c_sep,
                bandwidth_fraction=tokens / t_mix / bw_bound,
                compute_fraction=tokens / t_mix / compute_bound,
            )
            print(
                f"{kind:8} {k:>2} {b:>4} {row['mixed_tok_s']:11.1f} {row['one_tok_s']:13.1f}"
                f" {row['mix_over_one']:10.2f}× {row['mix_over_one_cpu']:5.2f}× {row['mix_over_sep']:12.2f}×"
                f" {row['mix_over_sep_cpu']:5.2f}× {100 * row['bandwidth_fraction']:9.1f}%"
                f" {100 * row['compute_fraction']:8.1f}%",
                flush=True,
            )
            rows.append(row)
    return rows


def heading(title: str, columns: list[tuple[str, int]]) -> None:
    """A table's title and column names: "family" and "K", then each (name, width) of ``columns``, right-aligned."""
    print(f"\n{title}\n{'family':8} {'K':>2} " + " ".join(f"{name:>{width}}" for name, width in columns))


def mixtures(policies_for, ks, args):
    """(family, K, its K policies, their uniform MixedPolicy) for every family and K of the options."""
    for kind in args.families:
        policies = policies_for(kind, max(ks))
        for k in ks:
            yield kind, k, policies[:k], MixedPolicy(policies[:k], [1.0 / k] * k, compile=args.compile)


def refill(label, policies_for, ks, args):
    """Slot refill against fixed chunks and against all at once, on rows that end at their own EOS."""
    from mpo_ray.models.generator import QUEUED_BATCHES  # here: the generator needs pyarrow, a GPU check may not

    slots, t = args.refill, args.max_new_tokens
    n = slots * QUEUED_BATCHES
    prompts, seeds = (PROMPTS * (n // len(PROMPTS) + 1))[:n], list(range(n))
    heading(
        f"{label}: slot refill, {n} sampled rows (EOS allowed), at most T={t} new tokens, median of {args.repeats}",
        [("S", 4), ("mean len", 8), ("chunks tok/s", 12), ("refill tok/s", 12), ("at once tok/s", 13)]
        + [("refill/chunks", 13), ("(CPU)", 6), ("refill/at once", 14), ("(CPU)", 6)],
    )
    rows = []
    for kind, k, _, mixed in mixtures(policies_for, ks, args):
        out = {}

        def decode(how, at_most, size):
            out[how] = [
                g
                for lo in range(0, n, size)
                for g in mixed.generate(
                    prompts[lo : lo + size], max_new_tokens=t, seed=seeds[lo : lo + size], slots=at_most
                )
            ]

        ways = {"chunks": (None, slots), "refill": (slots, n), "once": (None, n)}  # (slots, rows a call)
        times = dict(zip(ways, timed([partial(decode, how, *ways[how]) for how in ways], args.repeats)))
        ids = {how: [g.token_ids for g in gens] for how, gens in out.items()}
        assert ids["chunks"] == ids["refill"] == ids["once"], "the rows depend on how they were batched"
        tokens = sum(g.num_tokens for g in out["refill"])
        row = dict(label=label, family=kind, k=k, slots=slots, mean_tokens=tokens / n)
        row.update({f"{how}_tok_s": tokens / wall for how, (wall, _) in times.items()})
        for how in ("chunks", "once"):  # > 1: refill is faster
            row[f"refill_over_{how}"] = times[how][0] / times["refill"][0]
            row[f"refill_over_{how}_cpu"] = times[how][1] / times["refill"][1]
        figures = [f"{row[f'{how}_tok_s']:{w}.1f}" for how, w in zip(ways, (12, 12, 13))]
        figures += [
            f"{row[f'refill_over_{how}']:{w}.2f}× {row[f'refill_over_{how}_cpu']:5.2f}×"
            for how, w in (("chunks", 12), ("once", 13))
        ]
        print(f"{kind:8} {k:>2} {slots:>4} {row['mean_tokens']:8.1f} " + " ".join(figures), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[tuple]:
    p = argparse.ArgumentParser(prog="mpo-ray bench decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=positive_int_list, default="1,2,3", help="policy counts to mix (default 1,2,3)")
    p.add_argument(
        "--families",
        default="seeds,system,lora",
        help="seeds = K separate models, system = K system prompts on one base, lora = K adapters on one base",
    )
    p.add_argument(
        "--batch",
        "--prompts",
        dest="batch",
        type=positive_int_list,
        default="8",
        help="batch sizes B to sweep, comma-separated (default 8)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument(
        "--compile",
        action="store_true",
        help="mixed decode step through torch.compile (CUDA graphs on a GPU); the warm-up round compiles",
    )
    p.add_argument(
        "--refill",
        type=positive_int,
        default=None,
        metavar="S",
        help="measure slot refill with S slots on QUEUED_BATCHES (4) × S sampled rows of mixed lengths instead",
    )
    add_model_options(p)
    args = p.parse_args(argv)
    ks = args.k
    args.families = args.families.split(",")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, torch.device(device))
    hw = hardware(device, dtype)
    print(
        f"device={device} ({hw['name']}) dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}"
        f"\nmeasured: copy bandwidth {hw['bandwidth'] / 1e9:.1f} GB/s (read + write), {dtype} matmul peak"
        f" {hw['flops'] / 1e12:.2f} TFLOP/s"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-") as root:
        for label, policies_for in model_families(args, root):
            if args.refill:
                rows += refill(label, policies_for, ks, args)
            else:
                rows += run(label, policies_for, ks, args.batch, args, hw)
    return rows


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The models a benchmark runs on and where (bench decode and bench score)."""
    p.add_argument("--hidden-size", type=positive_int, default=64, help="tiny model width")
    p.add_argument("--layers", type=positive_int, default=2, help="tiny model depth")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny models")
    p.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct (the embedded default)")
    p.add_argument("--model", default=None, help="also this model directory / hub id")
    p.add_argument("--random-1b", action="store_true", help="also a random Llama-1B-shaped model (for GPUs)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory of the random 1B model (default: SmolLM2's, which needs the default model)",
    )
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto / float32 / bfloat16 / float16")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (1 keeps figures steady on a busy shared machine)",
    )


def model_families(args, root: str) -> list[tuple[str, object]]:
    """(label, policies_for(kind, k)) for every model the options name; sets torch's threads."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = []
    if not args.no_tiny:
        label = f"tiny llama (hidden {args.hidden_size}, {args.layers} layers, vocab 384)"
        out.append((label, lambda kind, k: tiny_policies(kind, k, root, args)))
    models = (["default"] if args.smollm2 else []) + ([args.model] if args.model else [])
    if args.random_1b:
        models.append(str(random_llama_1b(Path(root) / "llama-1b", args.tokenizer or resolve_model("default"))))
    for model in models:
        label = {"default": "SmolLM2-135M-Instruct"}.get(model, Path(model).name)
        resolved = resolve_model(model)
        out.append((label, lambda kind, k, path=resolved: model_policies(kind, k, path, root, args)))
    return out


if __name__ == "__main__":
    main()
