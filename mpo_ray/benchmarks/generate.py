"""`mpo-ray bench generate`: the Ray Data pipeline against a plain in-process loop.

Both sides run the same MixedPolicy (the config's policies, uniform weights) on
the same prompts with the same batch size and per-row seeds, so they produce
the same texts: the work is identical. The loop calls `MixedPolicy.generate`
batch by batch in this process; the pipeline is `mpo-ray generate` end to end
(read, replica start-up and model loading, decode, write, promote) with 1 and 2
replicas when the cluster has the cores. Prints rows/s, tokens/s and the ratio
pipeline / loop (DESIGN.md §5), and the machine's load average, since a shared
machine moves the figures. Figures, not asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from mpo_ray.benchmarks.decode import PROMPTS
from mpo_ray.config import load_config
from mpo_ray.prompts import derive_seed

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "workflows", "configs", "tiny.yaml")


def in_process_loop(config, ids: list[str], prompts: list[str]) -> dict:
    """MixedPolicy.generate over the prompts, one batch at a time, as a plain script would."""
    from mpo_ray.decoding import MixedPolicy
    from mpo_ray.generate import resolve_weights
    from mpo_ray.policies import load_policies

    g = config.generate
    t0 = time.perf_counter()
    mixed = MixedPolicy(load_policies(config.policies), resolve_weights(config)[0])
    load_s = time.perf_counter() - t0
    params = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                  stop=g.stop, num_candidates=g.num_candidates)
    tokens, t0 = 0, time.perf_counter()
    for start in range(0, len(prompts), g.batch_size):
        batch = slice(start, start + g.batch_size)
        seeds = [derive_seed(g.seed, i) for i in ids[batch]]
        tokens += sum(x.num_tokens for x in mixed.generate(prompts[batch], seed=seeds, **params))
    return {"rows": len(prompts), "generated_tokens": tokens, "seconds": time.perf_counter() - t0, "load_s": load_s}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="mpo-ray bench generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.normpath(TINY), help="YAML config whose policies to mix (default: tiny.yaml)")
    p.add_argument("--prompts", type=int, default=256, help="corpus size")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--replicas", default="1,2", help="pipeline replica counts to run (skipped when the CPUs/GPUs are short)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    args = p.parse_args(argv)

    import ray
    import torch

    from mpo_ray.generate import generate

    rows = []
    with tempfile.TemporaryDirectory(prefix="mpo-bench-gen-") as root:
        ids = [f"b{i:06d}" for i in range(args.prompts)]
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} (#{i})" for i in range(args.prompts)]
        corpus = os.path.join(root, "corpus.jsonl")
        with open(corpus, "w") as f:
            f.writelines(json.dumps({"prompt_id": i, "prompt": t}) + "\n" for i, t in zip(ids, prompts))
        k = len(load_config(args.config).policies)
        overrides = {"generate.prompts": corpus, "generate.weights_uri": None, "generate.weights": [1.0 / k] * k,
                     "generate.max_new_tokens": args.max_new_tokens, "generate.batch_size": args.batch_size}
        config = load_config(args.config, overrides=overrides)
        print(f"device={'cuda' if torch.cuda.is_available() else 'cpu'} torch threads={torch.get_num_threads()} "
              f"cores={os.cpu_count()} load average={os.getloadavg()[0]:.1f}; K={k} policies, {args.prompts} prompts, "
              f"batch {args.batch_size}, up to {args.max_new_tokens} new tokens", flush=True)
        loop = in_process_loop(config, ids, prompts)
        base = {"rows/s": loop["rows"] / loop["seconds"], "tok/s": loop["generated_tokens"] / loop["seconds"]}
        rows.append({"mode": "in-process loop", **base, "seconds": loop["seconds"], "tokens": loop["generated_tokens"]})
        print(f"  (loop model loading {loop['load_s']:.1f}s, not counted)", flush=True)

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            res = ray.cluster_resources()
            for n in [int(r) for r in args.replicas.split(",")]:
                if (res.get("GPU", 0) or res.get("CPU", 0)) < n:
                    print(f"  skipping {n} replicas: the cluster has {res}", flush=True)
                    continue
                cfg = load_config(args.config, overrides={**overrides, "generate.concurrency": n})
                s = generate(cfg, output=os.path.join(root, f"out-{n}"), progress=False)
                rows.append({"mode": f"Ray Data, {n} replica(s)", "rows/s": s["rows_per_s"], "tok/s": s["tokens_per_s"],
                             "seconds": s["generation_s"], "tokens": s["generated_tokens"]})
        finally:
            ray.shutdown()
    print(f"\n{'mode':26} {'rows/s':>8} {'tok/s':>9} {'seconds':>8} {'tokens':>7} {'vs loop':>8}")
    for r in rows:
        print(f"{r['mode']:26} {r['rows/s']:8.2f} {r['tok/s']:9.1f} {r['seconds']:8.1f} {r['tokens']:7d} "
              f"{r['tok/s'] / base['tok/s']:7.2f}×")
    if any(r["tokens"] != loop["generated_tokens"] for r in rows):
        print("note: token counts differ between modes; the outputs were not identical")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
