"""`mpo-ray bench score`: teacher-forced scoring against the compute bound.

Reweight's scoring (a policy actor's `score_sequences`) and the mixture's teacher-forced log-prob
(`MixedPolicy.sequence_logprob`, K policies of one base in one batched-LoRA forward) process every
prompt and response token once: 2 × params flops a token. Each is printed in tokens/s and as a
fraction of a matmul peak measured here (the compute bound; scoring is not bandwidth bound at these
batch sizes). Figures, not asserts.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from mpo_ray.benchmarks import positive_int, positive_int_list
from mpo_ray.benchmarks.decode import PROMPTS, add_model_options, hardware, model_cost, model_families, timed
from mpo_ray.models.decoding import MixedPolicy
from mpo_ray.models.policies import resolve_dtype
from mpo_ray.models.scoring import score_sequences


def run(label, policies, batches, args, hw) -> list[dict]:
    print(f"\n{label}: responses of {args.response_tokens} tokens, median of {args.repeats}")
    print(f"{'what':22} {'B':>4} {'tokens/s':>10} {'% compute bound':>15}")
    rows = []
    tokenizer = policies[0].tokenizer
    _, params = model_cost(policies[:1])
    mixed = MixedPolicy(policies, [1.0 / len(policies)] * len(policies))
    for b in batches:
        prompts = (PROMPTS * (b // len(PROMPTS) + 1))[:b]
        g = torch.Generator().manual_seed(b)
        responses = torch.randint(0, len(tokenizer), (b, args.response_tokens), generator=g).tolist()
        prompt_tokens = sum(len(ids) for ids in policies[0].encode_prompts(prompts))
        tokens = prompt_tokens + b * args.response_tokens  # every position is computed, per policy
        (t_one, _), (t_mix, _) = timed(
            [
                lambda: score_sequences(policies[0], prompts, responses, batch_size=b),
                lambda: mixed.sequence_logprob(prompts, responses, batch_size=b),
            ],
            args.repeats,
        )
        for what, rate in (
            ("one policy", tokens / t_one),
            (f"mixture of K={len(policies)}", len(policies) * tokens / t_mix),
        ):
            row = {
                "label": label,
                "what": what,
                "batch": b,
                "tokens_s": rate,
                "compute_fraction": rate * 2 * params / hw["flops"],
            }
            print(f"{what:22} {b:>4} {rate:10.0f} {100 * row['compute_fraction']:14.1f}%", flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="mpo-ray bench score", description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=positive_int, default=3, help="LoRA policies of one base in the mixture (default 3)")
    p.add_argument("--batch", type=positive_int_list, default="8", help="batch sizes, comma-separated (default 8)")
    p.add_argument("--response-tokens", type=positive_int, default=64)
    p.add_argument("--repeats", type=positive_int, default=3)
    add_model_options(p)
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    hw = hardware(device, resolve_dtype(args.dtype, torch.device(device)))
    print(
        f"device={device} ({hw['name']}) dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}"
        f"\nmeasured matmul peak {hw['flops'] / 1e12:.2f} TFLOP/s"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-") as root:
        for label, policies_for in model_families(args, root):
            rows += run(label, policies_for("lora", args.k), args.batch, args, hw)
    return rows


if __name__ == "__main__":
    main()
