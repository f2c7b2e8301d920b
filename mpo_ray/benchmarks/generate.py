"""`mpo-ray bench generate`: the Ray Data pipeline against a plain in-process loop.

Both sides run the same MixedPolicy (the config's policies, uniform weights) on
the same prompts with the same batch size and per-row seeds, so they produce
the same texts: the work is identical. The loop calls `MixedPolicy.generate`
batch by batch in this process; the pipeline is `mpo-ray generate` end to end
(read, replica start-up and model loading, decode, write, promote) with 1 and 2
replicas when the cluster has the cores. Prints rows/s, tokens/s and the ratio
pipeline / loop (docs/design.md §5), end to end and in steady state (the time of a
one-batch run, i.e. the fixed start-up, subtracted), and the machine's load
average, since a shared machine moves the figures. Figures, not asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from mpo_ray.benchmarks import positive_int, positive_int_list
from mpo_ray.benchmarks.decode import PROMPTS
from mpo_ray.config import load_config
from mpo_ray.core.seeds import derive_seed

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "workflows", "configs", "tiny.yaml")


def in_process_loop(config, ids: list[str], prompts: list[str]) -> dict:
    """MixedPolicy.generate over the prompts, one batch at a time, as a plain script would."""
    from mpo_ray.models.decoding import MixedPolicy
    from mpo_ray.models.policies import load_policies
    from mpo_ray.workflows.generate import resolve_weights

    g = config.generate
    t0 = time.perf_counter()
    mixed = MixedPolicy(load_policies(config.policies), resolve_weights(config)[0])
    load_s = time.perf_counter() - t0
    params = {**g.params(), "stop": g.stop, "num_candidates": g.candidates}
    tokens, t0 = 0, time.perf_counter()
    for start in range(0, len(prompts), g.batch_size):
        batch = slice(start, start + g.batch_size)
        seeds = [derive_seed(g.seed, i) for i in ids[batch]]
        tokens += sum(x.num_tokens for x in mixed.generate(prompts[batch], seed=seeds, **params))
    return {"rows": len(prompts), "generated_tokens": tokens, "seconds": time.perf_counter() - t0, "load_s": load_s}


def pipeline(args, overrides: dict, corpus: str, out: str, n: int) -> dict:
    from mpo_ray.workflows.generate import generate

    cfg = load_config(
        args.config,
        overrides={**overrides, "generate.prompts": corpus, "generate.concurrency": n, "generate.output": out},
    )
    return generate(cfg, progress=False)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="mpo-ray bench generate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", default=os.path.normpath(TINY), help="YAML config whose policies to mix (default: tiny.yaml)"
    )
    p.add_argument("--prompts", type=positive_int, default=1024, help="corpus size")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument(
        "--replicas",
        type=positive_int_list,
        default="1,2",
        help="pipeline replica counts to run (skipped when the CPUs/GPUs are short)",
    )
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument(
        "--loop-threads",
        type=positive_int,
        default=None,
        help="torch threads of the loop (default: what one replica gets, max(1, CPUs - 1); the torch default "
        "oversubscribes a busy small machine)",
    )
    args = p.parse_args(argv)

    import ray
    import torch

    with tempfile.TemporaryDirectory(prefix="mpo-bench-gen-") as root:
        ids = [f"b{i:06d}" for i in range(args.prompts)]
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} (#{i})" for i in range(args.prompts)]
        corpora = {}
        for name, n in [("full", args.prompts), ("one-batch", args.batch_size)]:  # one batch: the fixed start-up cost
            corpora[name] = os.path.join(root, f"{name}.jsonl")
            with open(corpora[name], "w") as f:
                f.writelines(json.dumps({"prompt_id": i, "prompt": t}) + "\n" for i, t in zip(ids[:n], prompts[:n]))
        k = len(load_config(args.config).policies)
        overrides = {
            "generate.weights_uri": None,
            "generate.weights": [1.0 / k] * k,
            "generate.max_new_tokens": args.max_new_tokens,
            "generate.batch_size": args.batch_size,
        }
        config = load_config(args.config, overrides={**overrides, "generate.prompts": corpora["full"]})
        cores = args.num_cpus or os.cpu_count()
        torch.set_num_threads(args.loop_threads or max(1, cores - 1))
        print(
            f"device={'cuda' if torch.cuda.is_available() else 'cpu'} cores={os.cpu_count()} load average="
            f"{os.getloadavg()[0]:.1f}; K={k} policies, {args.prompts} prompts, batch {args.batch_size}, up to "
            f"{args.max_new_tokens} new tokens",
            flush=True,
        )
        loops = [in_process_loop(config, ids, prompts)]  # one before and one after every pipeline run: load drifts
        print(f"  loop: model loading {loops[0]['load_s']:.1f}s (not counted), {loops[0]['seconds']:.1f}s", flush=True)
        rows = []
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            res = ray.cluster_resources()
            for n in args.replicas:
                if (res.get("GPU", 0) or res.get("CPU", 0)) < n:
                    print(f"  skipping {n} replicas: the cluster has {res}", flush=True)
                    continue
                small = pipeline(args, overrides, corpora["one-batch"], os.path.join(root, f"one-{n}"), n)
                full = pipeline(args, overrides, corpora["full"], os.path.join(root, f"full-{n}"), n)
                loops.append(in_process_loop(config, ids, prompts))
                base = sum(x["generated_tokens"] / x["seconds"] for x in loops[-2:]) / 2
                extra_s = full["generation_s"] - small["generation_s"]
                steady = (
                    (full["generated_tokens"] - small["generated_tokens"]) / extra_s if extra_s > 0 else float("nan")
                )
                rows.append(
                    {
                        "mode": f"Ray Data, {n} replica(s) x {full['placement']['threads']} thr",
                        "rows/s": full["rows_per_s"],
                        "tok/s": full["tokens_per_s"],
                        "steady tok/s": steady,
                        "seconds": full["generation_s"],
                        "tokens": full["generated_tokens"],
                        "base": base,
                    }
                )
                print(
                    f"  {n} replica(s): start-up + one batch {small['generation_s']:.1f}s, "
                    f"all {full['generation_s']:.1f}s; "
                    f"loop after {loops[-1]['seconds']:.1f}s",
                    flush=True,
                )
        finally:
            ray.shutdown()
    rows = [
        {
            "mode": f"in-process loop x {torch.get_num_threads()} thr, run {i + 1}",
            "rows/s": x["rows"] / x["seconds"],
            "tok/s": x["generated_tokens"] / x["seconds"],
            "steady tok/s": x["generated_tokens"] / x["seconds"],
            "seconds": x["seconds"],
            "tokens": x["generated_tokens"],
        }
        for i, x in enumerate(loops)
    ] + rows
    print(
        f"\n{'mode':36} {'rows/s':>7} {'tok/s':>7} {'ratio':>6} "
        f"{'steady tok/s':>13} {'ratio':>6} {'seconds':>8} {'tokens':>7}"
    )
    for r in rows:
        base = r.get("base", r["tok/s"])
        print(
            f"{r['mode']:36} {r['rows/s']:7.1f} {r['tok/s']:7.1f} {r['tok/s'] / base:5.2f}x "
            f"{r['steady tok/s']:13.1f} {r['steady tok/s'] / base:5.2f}x {r['seconds']:8.1f} {r['tokens']:7d}"
        )
    print(
        "ratio: pipeline tok/s / the mean of the loop runs just before and after it; end to end (replica start-up\n"
        "included), and steady (the time of a one-batch run, i.e. start-up, subtracted). Loop rows: their own run."
    )
    if len({r["tokens"] for r in rows}) > 1:
        print("note: token counts differ between modes; the outputs were not identical")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
