"""`mpo-ray sweep`: generate with many fixed weight vectors and evaluate each, to draw the trade-off front.

One worker actor loads the reference and the K policies once and generates for
every weight vector in turn (a Ray Data pipeline per point would reload the
models each time). All points use the same per-prompt seeds as `generate`, so
two points differ by their weights only, not by sampling luck.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import numpy as np
import pyarrow as pa
import ray

from mpo_ray.io import storage
from mpo_ray.config import Config
from mpo_ray.workflows.evaluate import evaluate_generations, objectives_from_config
from mpo_ray.workflows.generate import plan_replicas
from mpo_ray.core.seeds import derive_seed
from mpo_ray.io.corpus import read_prompts
from mpo_ray.io.schemas import GENERATION_SCHEMA, check_weights_artifact

REFERENCE = "reference"


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector on the K-simplex whose entries are multiples of `step` (1/step an integer)."""
    if k not in (2, 3):
        raise ValueError(f"a sweep draws a front for K = 2 or 3 policies; this config has K = {k}")
    n = round(1 / step) if step > 0 else 0
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise ValueError(f"sweep step must be 1/n for a positive integer n (0.5, 0.25, 0.2, ...), got {step!r}")
    points = [c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n]
    return np.array(sorted(points, reverse=True), dtype=np.float64) / n


def point_label(weights) -> str:
    return "w=" + ",".join(f"{w:.3g}" for w in weights)


@ray.remote
class SweepWorker:
    """The reference and the K policies in one process (a shared base loads once)."""

    def __init__(self, reference, policies, threads: int):
        import torch

        from mpo_ray.models.policies import load_policies

        torch.set_num_threads(max(1, threads))
        loaded = load_policies([reference] + list(policies))
        self.reference, self.policies = loaded[0], loaded[1:]

    def generate(self, label: str, weights, ids, prompts, seeds, params: dict, batch_size: int) -> pa.Table:
        from mpo_ray.models.decoding import MixedPolicy

        mixed = MixedPolicy([self.reference], [1.0]) if weights is None else MixedPolicy(self.policies, weights)
        gens = []
        for i in range(0, len(prompts), batch_size):
            gens += mixed.generate(prompts[i : i + batch_size], seed=seeds[i : i + batch_size], **params)
        return pa.table({
            "prompt_id": ids, "prompt": prompts, "response": [g.text for g in gens],
            "finish_reason": [g.finish_reason for g in gens], "num_tokens": [g.num_tokens for g in gens],
            "log_normalizer": [g.log_normalizer for g in gens], "weights_version": [label] * len(ids),
            "seed": seeds, "error": [None] * len(ids),
        }, schema=GENERATION_SCHEMA)


def run_sweep(config: Config, *, output: str, points: dict[str, list[float] | None], max_prompts: int | None = None,
              progress: bool = True) -> dict:
    """Generate the `generate` corpus once per labelled weight vector (None = π_ref alone), evaluate every
    set against the reference with the config's rewards; write `output`/<label>.parquet and sweep.json."""
    g = config.section("generate")
    if not points:
        raise ValueError("run_sweep: no weight vectors to sweep")
    k = len(config.policies)
    for label, w in points.items():
        if w is not None and (len(w) != k or not np.all(np.isfinite(w))):
            raise ValueError(f"sweep point {label!r} has weights {w}; it needs {k} finite numbers, one per policy")
    objectives = objectives_from_config(config)
    ids, prompts = read_prompts(g.prompts, prompt_column=g.prompt_column, id_column=g.id_column, limit=max_prompts)
    storage.check_writable(output)
    seeds = [derive_seed(g.seed, pid) for pid in ids]
    params = dict(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                  stop=g.stop or None, num_candidates=g.num_candidates)
    points = {REFERENCE: None, **{label: w for label, w in points.items() if label != REFERENCE}}

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(log_to_driver=False)
    t0 = time.perf_counter()
    try:
        # resources as one replica of the generate workflow: the same GPU / CPU rules and config keys
        plan = plan_replicas(dataclasses.replace(g, concurrency=1))
        worker = SweepWorker.options(num_gpus=plan["num_gpus"], num_cpus=plan["num_cpus"]).remote(
            config.reference, config.policies, plan["threads"])
        from tqdm.auto import tqdm

        tables = {}
        for label, w in tqdm(points.items(), desc="sweep", unit="point", disable=not progress):
            uri = storage.join(output, f"{_slug(label)}.parquet")
            if storage.exists(uri):  # resume: a finished point is not generated again
                tables[label] = storage.read_parquet(uri)
                continue
            tables[label] = ray.get(worker.generate.remote(label, None if w is None else list(map(float, w)), ids,
                                                           prompts, seeds, params, g.batch_size))
            storage.write_parquet(uri, tables[label])
        ray.kill(worker)
    finally:
        if owns_ray:
            ray.shutdown()
    results = []
    for label, w in points.items():
        r = evaluate_generations(tables[label], objectives, reference=tables[REFERENCE], name=label)
        r["weights"] = None if w is None else list(map(float, w))
        results.append(r)
    summary = {"policies": config.policy_names, "prompts": len(ids), "generation": params,
               "seconds": round(time.perf_counter() - t0, 1), "points": results}
    storage.write_json(storage.join(output, "sweep.json"), summary)
    return summary


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in label)


def sweep_points(config: Config, step: float, weights_uri: str | None = None) -> dict[str, list[float]]:
    """The simplex grid, plus the MPO point from a weights artifact when one is given."""
    points = {point_label(w): w.tolist() for w in simplex_grid(len(config.policies), step)}
    if weights_uri:
        art = check_weights_artifact(storage.read_json(weights_uri), weights_uri)
        if art["policies"] != config.policy_names:
            raise ValueError(f"weights artifact {weights_uri} is for policies {art['policies']}, the config has "
                             f"{config.policy_names}; use the artifact reweighting wrote for this config")
        points["MPO"] = art["weights"]
    return points


def default_output(config: Config) -> str:
    g = config.section("generate")
    return (g.output or os.path.join("mpo-runs", "generate")).rstrip("/") + "-sweep"
