"""`mpo-ray sweep`: generate with many fixed weight vectors and evaluate each, to draw the trade-off front.

One worker actor loads the reference and the K policies once and generates for
every weight vector in turn (a Ray Data pipeline per point would reload the
models each time). All points use the same per-prompt seeds as `generate`, so
two points differ by their weights only, not by sampling luck. The same actor
scores each response under π_ref and every policy (`logp_<name>` columns), so
every point is also measured on MPO's own objective (`core.yardstick`). With `generate.num_candidates` = n > 1
every mixture point resamples among n candidates; a point one model serves untempered draws one, the same
distribution at 1/n of the cost (`point_candidates`); sweep.json records each point's serving mode.

Resuming and whose files: `sweep_files` (a point's rows are reused only when made the way this run would
make them; only files the sweep wrote are replaced).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mpo_ray.config import Config, PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.core.grid import simplex_grid, step_divisions
from mpo_ray.core.seeds import derive_seed
from mpo_ray.core.serving import serving
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsRecord
from mpo_ray.io.corpus import read_prompts
from mpo_ray.io.ownership import check_ours, mark_ours
from mpo_ray.io.provenance import digest, tree_digest
from mpo_ray.models.preflight import check_models, check_prompt_lengths
from mpo_ray.runtime.actors import start_generator
from mpo_ray.runtime.session import ray_session
from mpo_ray.workflows.evaluate import evaluate_generations, objectives_from_config
from mpo_ray.workflows.sweep_files import (
    SUMMARY_FORMAT,
    check_fixed_files,
    point_files,
    point_fingerprints,
    slug,
    stale_points,
    write_outputs,
    write_point,
)

log = logging.getLogger(__name__)

REFERENCE = "reference"


@dataclass(frozen=True)
class Soup:
    """A sweep point: the Rewarded Soup of the config's LoRA adapters at λ (their parameters averaged,
    `soup_specs`), made under the sweep's soups/ and served alone."""

    weights: Sequence[float]


# A sweep point: None is π_ref alone; weights are the log-linear mixture of the K policies at that λ; a `Soup` is made
# and served alone; a PolicySpec (say, a soup made elsewhere) is served alone as it is.
Point = Sequence[float] | Soup | PolicySpec | None


def point_label(weights) -> str:
    return "w=" + ",".join(f"{w:.3g}" for w in weights)


def grid_points(k: int, step: float | None, named: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Fixed weight vectors by label: the ``named`` ones first, then the simplex grid at ``step`` (`core.grid`; None:
    no grid) where no earlier vector holds the same weights, labelled by `point_label`, then the uniform mix unless
    one is there. Labels use only the characters a sweep keeps in file names: each point's file is
    `<label>.parquet`."""
    points = dict(named or {})
    if step is not None:
        if k not in (2, 3):
            raise UserError(f"a sweep draws a front for K = 2 or 3 policies; this config has K = {k}")
        for w in simplex_grid(k, step_divisions(step)):
            if not any(np.allclose(w, v) for v in points.values()):
                points[point_label(w)] = w.tolist()
    if not any(np.allclose(v, 1 / k) for v in points.values()):
        points["uniform"] = [1 / k] * k
    return points


def run_sweep(
    config: Config,
    *,
    output: str,
    points: dict[str, Point],
    max_prompts: int | None = None,
    progress: bool = True,
    figure: Callable[[str, dict], None] | None = None,
) -> dict:
    """Generate the `generate` corpus once per labelled `Point` (π_ref is always one) and evaluate every set
    against π_ref with the config's rewards; write `output`/<label>.parquet and sweep.json, and with
    ``figure(uri, summary)`` (`demo.plots.plot_front`) front.png. A point whose file holds rows of the same
    fingerprint is reused, any other generated again."""
    g = config.section("generate")
    if not points:
        raise UserError("run_sweep: no weight vectors to sweep")
    points = {REFERENCE: None, **{label: p for label, p in points.items() if label != REFERENCE}}
    check_points(points, len(config.policies))
    objectives = objectives_from_config(config)
    ids, prompts = read_prompts(g.prompts, prompt_column=g.prompt_column, id_column=g.id_column, limit=max_prompts)
    check_prompt_lengths(
        check_models(config), ids, prompts, g.max_new_tokens, g.prompts
    )  # before Ray, as every workflow
    check_ours(output, "sweep", subdirs=("soups",))
    storage.check_writable(output)
    files = point_files(output, list(points))  # refused here, before anything is written
    figure_digests = check_fixed_files(output)
    mark_ours(output, "sweep")  # before its first file: the soups are made inside it
    specs, vectors = served_models(config, output, points)
    params = {**g.params(), "stop": list(g.stop) or None, "num_candidates": g.candidates}
    candidates = {label: point_candidates(vectors[label], params) for label in vectors}
    decoding = {label: {**params, "num_candidates": n} for label, n in candidates.items()}
    seeded = {label: {**d, "seed": g.seed} for label, d in decoding.items()}
    parts = point_fingerprints(specs, len(config.policies), vectors, ids, prompts, seeded)

    t0 = time.perf_counter()
    tables = _generate_points(
        config,
        specs,
        vectors,
        params=decoding,
        corpus=(ids, prompts, [derive_seed(g.seed, pid) for pid in ids]),
        files=files,
        parts=parts,
        progress=progress,
    )
    results = []
    for label, vector in vectors.items():
        r = evaluate_generations(
            tables[label],
            objectives,
            reference=tables[REFERENCE],
            name=label,
            models=(config.reference.name, config.policy_names),
            seed=g.seed,
        )
        p = points[label]
        r["weights"] = list(map(float, p)) if _is_mixture(p) else None
        r["fingerprint"] = digest(parts[label])
        r["serving"] = serving(candidates[label], one_model=sum(1 for w in vector if w != 0) == 1)
        results.append(r)
    summary = {
        "format": SUMMARY_FORMAT,
        "policies": config.policy_names,
        "prompts": len(ids),
        "generation": params,
        "serving": serving(g.candidates),
        "seconds": round(time.perf_counter() - t0, 1),
        "points": results,
    }
    write_outputs(output, summary, figure, figure_digests)
    return summary


def _is_mixture(point: Point) -> bool:
    return point is not None and not isinstance(point, (Soup, PolicySpec))


def check_points(points: dict[str, Point], k: int) -> None:
    """UserError naming the point whose λ (a mixture's or a soup's) is not K finite non-negative numbers, not all 0."""
    for label, p in points.items():
        w = p.weights if isinstance(p, Soup) else (p if _is_mixture(p) else None)
        if w is not None and (len(w) != k or not np.all(np.isfinite(w)) or np.any(np.asarray(w) < 0) or not np.any(w)):
            raise UserError(
                f"sweep point {label!r} has weights {list(w)}; it needs {k} finite non-negative numbers, not all zero"
            )


def served_models(config: Config, output: str, points: dict[str, Point]) -> tuple[list[PolicySpec], dict]:
    """(specs, label → vector): the models one generator hosts, [π_ref, π_1..π_K, then each model a point serves
    alone], and each point's weights over them. The `Soup` points' soups are made (or reused) here, under
    `output`/soups/."""
    soups = {label: p.weights for label, p in points.items() if isinstance(p, Soup)}
    soups = soup_specs(config, storage.join(output, "soups"), soups) if soups else {}
    alone = {label: soups.get(label, p) for label, p in points.items() if isinstance(p, (Soup, PolicySpec))}
    specs = [config.reference, *config.policies, *alone.values()]  # one generator: a shared base loads once
    k = len(config.policies)
    slots = {label: 1 + k + i for i, label in enumerate(alone)}
    vectors = {}
    for label, p in points.items():
        v = np.zeros(len(specs))
        if _is_mixture(p):
            v[1 : 1 + k] = p
        else:
            v[slots.get(label, 0)] = 1.0  # π_ref, or the model served alone
        vectors[label] = v.tolist()
    return specs, vectors


def point_candidates(vector, decoding: dict) -> int:
    """Candidates a point decodes per response: the configured ``num_candidates`` for a mixture of two or more models;
    1 for a point one model serves (π_ref, a single policy, a soup) when decoding is untempered and untruncated, since
    its candidates' importance weights π/q are then all equal and keeping one of n i.i.d. draws is the same
    distribution as drawing one, at 1/n of the cost. Tempered or truncated, resampling moves even one model back
    towards its untempered self, so the configured number stays."""
    n = int(decoding.get("num_candidates", 1))
    untempered = (
        decoding.get("temperature", 1.0) == 1.0 and not decoding.get("top_k") and decoding.get("top_p") in (None, 1.0)
    )
    return 1 if untempered and sum(1 for w in vector if w != 0) == 1 else n


def _generate_points(
    config: Config,
    specs: list[PolicySpec],
    vectors: dict[str, list[float]],
    *,
    params: dict[str, dict],
    corpus: tuple[list[str], list[str], list[int]],
    files: dict[str, str],
    parts: dict[str, dict[str, str]],
    progress: bool,
) -> dict[str, pa.Table]:
    """label → its rows: read back from its file where `stale_points` finds the same fingerprint and the rows
    verify, else generated from ``corpus`` (ids, prompts, seeds) with the point's decoding ``params``, by one worker
    hosting ``specs`` (started at the first point generated), and written with their fingerprint."""
    from tqdm.auto import tqdm

    g, (ids, texts, seeds), todo = config.section("generate"), corpus, stale_points(files, parts)
    tables, worker = {}, None
    with ray_session(log_to_driver=False):
        try:
            for label, weights in tqdm(vectors.items(), desc="sweep", unit="point", disable=not progress):
                uri = files[label]
                if todo[label] is None:  # resume: the same fingerprint; reused if the file reads back intact
                    try:
                        tables[label] = storage.read_parquet(uri, verify=True)
                        continue
                    except storage.CorruptFile as exc:
                        log.warning("%s Generating that point again.", exc)
                else:
                    log.info("sweep: generating point %r (%s)", label, todo[label])
                worker = worker or start_generator(config, specs)  # [π_ref, π_1..π_K, models served alone]
                tables[label] = worker.generate(
                    label,
                    weights,
                    ids,
                    texts,
                    seeds,
                    params[label],
                    g.batch_size,
                    score=(config.reference.name, *config.policy_names),
                )
                write_point(uri, tables[label], parts[label])
        finally:
            if worker is not None:
                worker.kill()
    return tables


def sweep_points(config: Config, step: float, weights_uri: str | None = None) -> dict[str, list[float]]:
    """The simplex grid and the uniform mix (`grid_points`), plus the MPO point from a weights artifact (a file, run
    directory or store) when one is given: with the grid's vertices, every baseline of the paper but the soups."""
    points = grid_points(len(config.policies), step)
    if weights_uri:
        points["MPO"] = WeightsRecord.read(weights_uri).weights_for(config.policy_names, config.source)
    return points


SOUP_RECORD = "soup.json"


def soup_specs(config: Config, directory: str, weights: dict[str, list[float]]) -> dict[str, PolicySpec]:
    """Rewarded Soups of the config's LoRA adapters (`models/soup.py`), one per labelled λ, as extra sweep
    policies. A soup already in ``directory`` is reused only when it was made from the same adapters, by content
    (an adapter retrained in place would otherwise be served as its old soup), and the same λ; a soup made
    otherwise is refused, never silently replaced."""
    from mpo_ray.models.policies import resolve_model
    from mpo_ray.models.soup import rewarded_soup

    plain = [p.name for p in config.policies if not p.adapter]
    bases = {(p.model, p.revision) for p in config.policies}
    if plain or len(bases) != 1:
        raise UserError(
            f"{config.source}: a Rewarded Soup averages LoRA adapters of one base model; "
            + (f"policies {plain} have no `adapter`" if plain else f"the policies sit on {len(bases)} bases")
        )
    if "://" in directory:
        raise UserError(
            f"Rewarded Soups are written next to the sweep; {directory!r} is not a local directory. "
            "Pass a local --output."
        )
    adapters = [resolve_model(p.adapter) for p in config.policies]
    contents = [tree_digest(a) for a in adapters]
    out = {}
    for label, w in weights.items():
        path = os.path.join(directory, slug(label))
        wanted = {"adapters": adapters, "weights": list(w), "contents": contents}
        if os.path.lexists(path):
            _check_soup(path, wanted)
        else:
            rewarded_soup(adapters, list(w), path)
            storage.write_json(os.path.join(path, SOUP_RECORD), wanted)  # with the adapters' contents
        out[label] = PolicySpec(
            name=label, model=config.policies[0].model, revision=config.policies[0].revision, adapter=path
        )
    return out


def _check_soup(path: str, wanted: dict) -> None:
    """UserError, saying what differs, unless the soup at ``path`` was made as ``wanted``."""
    record = os.path.join(path, SOUP_RECORD)
    try:
        made = None if os.path.islink(path) or os.path.islink(record) else json.loads(storage.read_text(record))
    except (OSError, ValueError):
        made = None
    if made == wanted:
        return
    if not isinstance(made, dict):
        why = f"is not a soup mpo-ray made (no readable {SOUP_RECORD}, or a link)"
    elif made.get("weights") != wanted["weights"]:
        why = f"was made with λ = {made.get('weights')}, not {wanted['weights']}"
    elif "contents" not in made:
        why = "was made by an older mpo-ray, which did not record its adapters' contents"
    else:
        why = "was made from other adapters (other paths, or retrained since)"
    raise UserError(f"soup {path} exists and {why}; delete it to make it again, or choose another --output.")


def default_output(config: Config) -> str:
    g = config.section("generate")
    return (g.output or os.path.join("mpo-runs", "generate")).rstrip("/") + "-sweep"
