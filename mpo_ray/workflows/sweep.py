"""`mpo-ray sweep`: generate with many fixed weight vectors and evaluate each, to draw the trade-off front.

One worker actor loads the reference and the K policies once and generates for
every weight vector in turn (a Ray Data pipeline per point would reload the
models each time). All points use the same per-prompt seeds as `generate`, so
two points differ by their weights only, not by sampling luck. The same actor
scores each response under π_ref and every policy (`logp_<name>` columns), so
every point is also measured on MPO's own objective (`core.yardstick`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import numpy as np

from mpo_ray.config import Config, PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.core.seeds import derive_seed
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsArtifact
from mpo_ray.io.corpus import read_prompts
from mpo_ray.io.ownership import check_ours, mark_ours
from mpo_ray.runtime.actors import start_generator
from mpo_ray.runtime.session import ray_session
from mpo_ray.workflows.evaluate import evaluate_generations, objectives_from_config

log = logging.getLogger(__name__)

REFERENCE = "reference"


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector on the K-simplex whose entries are multiples of `step` (1/step an integer)."""
    if k not in (2, 3):
        raise UserError(f"a sweep draws a front for K = 2 or 3 policies; this config has K = {k}")
    n = round(1 / step) if step > 0 else 0
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise UserError(f"sweep step must be 1/n for a positive integer n (0.5, 0.25, 0.2, ...), got {step!r}")
    points = [c for c in itertools.product(range(n + 1), repeat=k) if sum(c) == n]
    return np.array(sorted(points, reverse=True), dtype=np.float64) / n


def point_label(weights) -> str:
    return "w=" + ",".join(f"{w:.3g}" for w in weights)


def run_sweep(config: Config, *, output: str, points: dict[str, list[float] | None], max_prompts: int | None = None,
              extra: dict[str, PolicySpec] | None = None, soups: dict[str, list[float]] | None = None,
              progress: bool = True) -> dict:
    """Generate the `generate` corpus once per labelled weight vector (None = π_ref alone), and once per ``extra``
    policy on its own, and per ``soups`` label a Rewarded Soup of the policies at that λ (`soup_specs`,
    under `output`/soups/); evaluate every set against the reference with the config's rewards;
    write `output`/<label>.parquet and sweep.json."""
    from tqdm.auto import tqdm

    g = config.section("generate")
    if not points:
        raise UserError("run_sweep: no weight vectors to sweep")
    k = len(config.policies)
    for label, w in points.items():
        if w is not None and (len(w) != k or not np.all(np.isfinite(w)) or np.any(np.asarray(w) < 0) or not np.any(w)):
            raise UserError(f"sweep point {label!r} has weights {w}; it needs {k} finite non-negative numbers, not all zero")
    objectives = objectives_from_config(config)
    ids, prompts = read_prompts(g.prompts, prompt_column=g.prompt_column, id_column=g.id_column, limit=max_prompts)
    check_ours(output, "sweep")
    storage.check_writable(output)
    seeds = [derive_seed(g.seed, pid) for pid in ids]
    params = {**g.params(), "stop": list(g.stop) or None, "num_candidates": g.num_candidates}
    points = {REFERENCE: None, **{label: w for label, w in points.items() if label != REFERENCE}}
    extra = dict(extra or {})
    if soups:  # written inside the sweep's own directory, so it is marked first
        mark_ours(output, "sweep")
        extra.update(soup_specs(config, storage.join(output, "soups"), soups))
    specs = [config.reference, *config.policies, *extra.values()]  # one generator: a shared base loads once
    vectors = {label: [1.0] + [0.0] * (k + len(extra)) if w is None else [0.0] + [float(x) for x in w] + [0.0] * len(extra)
               for label, w in points.items()}
    vectors.update({label: [0.0] * (1 + k + i) + [1.0] + [0.0] * (len(extra) - i - 1) for i, label in enumerate(extra)})

    t0 = time.perf_counter()
    tables = {}
    mark_ours(output, "sweep")
    with ray_session(log_to_driver=False):
        worker = None
        try:
            for label, weights in tqdm(vectors.items(), desc="sweep", unit="point", disable=not progress):
                uri = storage.join(output, f"{_slug(label)}.parquet")
                if storage.exists(uri):  # resume: a finished point is not generated again, if it reads back intact
                    try:
                        tables[label] = storage.read_parquet(uri, verify=True)
                        continue
                    except storage.CorruptFile as exc:
                        log.warning("%s Generating that point again.", exc)
                worker = worker or start_generator(config, specs)  # models: [π_ref, π_1..π_K, extras...]
                tables[label] = worker.generate(label, weights, ids, prompts, seeds, params, g.batch_size,
                                                score=(config.reference.name, *config.policy_names))
                storage.write_parquet(uri, tables[label])
        finally:
            if worker is not None:
                worker.kill()
    results = []
    for label in vectors:
        r = evaluate_generations(tables[label], objectives, reference=tables[REFERENCE], name=label,
                                 models=(config.reference.name, config.policy_names), seed=g.seed)
        w = points.get(label)
        r["weights"] = None if w is None else list(map(float, w))
        results.append(r)
    summary = {"policies": config.policy_names, "prompts": len(ids), "generation": params,
               "seconds": round(time.perf_counter() - t0, 1), "points": results}
    storage.write_json(storage.join(output, "sweep.json"), summary)
    return summary


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in label)


def sweep_points(config: Config, step: float, weights_uri: str | None = None) -> dict[str, list[float]]:
    """The simplex grid and the uniform mix, plus the MPO point from a weights artifact (a file, run directory or
    store) when one is given: with the grid's vertices, every baseline of the paper but the soups (`soup_specs`)."""
    k = len(config.policies)
    points = {point_label(w): w.tolist() for w in simplex_grid(k, step)}
    if not any(np.allclose(w, 1 / k) for w in points.values()):
        points["uniform"] = [1 / k] * k
    if weights_uri:
        points["MPO"] = WeightsArtifact.read(weights_uri).weights_for(config.policy_names, config.source)
    return points


def soup_specs(config: Config, directory: str, weights: dict[str, list[float]]) -> dict[str, PolicySpec]:
    """Rewarded Soups of the config's LoRA adapters (`models/soup.py`), one per labelled λ, as extra sweep
    policies; a soup already in ``directory`` from the same adapters and λ is reused (a resumed sweep)."""
    import json

    from mpo_ray.models.policies import resolve_model
    from mpo_ray.models.soup import rewarded_soup

    plain = [p.name for p in config.policies if not p.adapter]
    bases = {(p.model, p.revision) for p in config.policies}
    if plain or len(bases) != 1:
        raise UserError(f"{config.source}: a Rewarded Soup averages LoRA adapters of one base model; "
                        + (f"policies {plain} have no `adapter`" if plain else f"the policies sit on {len(bases)} bases"))
    if "://" in directory:
        raise UserError(f"Rewarded Soups are written next to the sweep; {directory!r} is not a local directory. "
                        "Pass a local --output.")
    adapters = [resolve_model(p.adapter) for p in config.policies]
    out = {}
    for label, w in weights.items():
        path = os.path.join(directory, _slug(label))
        record = os.path.join(path, "soup.json")
        same = os.path.exists(record) and json.loads(storage.read_text(record)) == {"adapters": adapters, "weights": list(w)}
        if not same:
            rewarded_soup(adapters, list(w), path)
        out[label] = PolicySpec(name=label, model=config.policies[0].model, revision=config.policies[0].revision,
                                adapter=path)
    return out


def default_output(config: Config) -> str:
    g = config.section("generate")
    return (g.output or os.path.join("mpo-runs", "generate")).rstrip("/") + "-sweep"
