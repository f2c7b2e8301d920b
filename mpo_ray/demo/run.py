"""`mpo-ray demo`: MPO end to end on a real language model, on local Ray.

π_ref is SmolLM2-135M-Instruct; the three policies are LoRA adapters on it,
DPO-trained for being concise, relevant and enthusiastic (`demo.policies`).
The demo runs the real workflows in order:

1. reweight — sample from π_ref and each policy, score with every policy, solve for λ (score table + weights.json);
2. generate — the eval prompts through the MPO mixture, with Ray Data, to Parquet;
3. compare   — the same prompts and seeds through π_ref, each single policy, the uniform mix, MPO's λ,
               a Rewarded Soup (the adapters' parameters averaged) and a grid of fixed weights (`sweep`);
4. evaluate — every set on two yardsticks, each with paired bootstrap intervals over prompts:
               MPO's own objective J (`core.yardstick`) and the objectives' win rates against π_ref (`demo.findings`);
5. report   — report.md (`demo.report`) and PNG plots.

Every set is sampled untempered, so both yardsticks judge the very policies the theory is about; mixtures are
served by resampling among CANDIDATES token-level candidates (near the sequence-level π_λ the theory is about),
single models by one draw (the same distribution). Two comparisons on J are pre-registered (MPO − uniform, MPO −
soup), with their power against `bench protocol`'s effect stated before any number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from mpo_ray.core.errors import UserError
from mpo_ray.core.serving import serving
from mpo_ray.demo.findings import (
    best_grid,
    calibration,
    comparison_entry,
    generate_agreement,
    headlines,
    power_plan,
    primary_comparisons,
    shown_sets,
    solver_paths,
)
from mpo_ray.demo.policies import ADAPTER_DIR, OBJECTIVES, REWARDS, adapter_paths, demo_prompts
from mpo_ray.demo.report import demo_report, read_examples, serving_sentence
from mpo_ray.io import storage
from mpo_ray.io.ownership import META_DIR, OWNER_FILE, check_ours, mark_ours, owns_file, remove_ours_tree
from mpo_ray.runtime.session import ray_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSize:
    reweight_prompts: int
    samples_per_prompt: int
    sample_tokens: int
    eval_prompts: int
    generate_tokens: int
    sweep_step: float | None  # grid step over the simplex; None: only the vertices and the uniform mix
    serve: bool = True  # step 2, MPO through `generate` (Ray Data); the sweep's MPO point holds the same rows


# Budget on prompts (issue 19): bench protocol finds 48 × 4 brings λ̂ nearer λ* than 24 × 8 at the same cost. Wall on 2
# idle CPU cores, estimated from the measured CPU cost per kind of set (README): default about 10 min, quick about 1¼.
SIZES = {
    "default": DemoSize(
        reweight_prompts=48, samples_per_prompt=4, sample_tokens=32, eval_prompts=50, generate_tokens=32, sweep_step=0.5
    ),
    "quick": DemoSize(
        reweight_prompts=8,
        samples_per_prompt=4,
        sample_tokens=16,
        eval_prompts=8,
        generate_tokens=16,
        sweep_step=None,
        serve=False,
    ),
}
# Untempered: J(π) is a property of the policy itself, and a tempered π_λ* is no longer the MaxMin optimum.
# Mixtures (MPO, the uniform mix, the grid) are served by resampling one of CANDIDATES token-level candidates ∝ π_λ/q:
# at λ* that is within 0.026 nats of F(λ*) in `bench serving`'s hard world (0.115 for the token-level mixture), at
# 4× the decoding. Every mixture gets the same n, so the comparison between them is fair; a set one model serves
# (π_ref, a single policy, the soup) draws one candidate, which is the same distribution (`sweep.point_candidates`).
CANDIDATES = 4
GENERATION = {"temperature": 1.0, "num_candidates": CANDIDATES}
MARKER = "demo.json"


def demo_config(out: str, size: DemoSize, adapters: str | None = None, seed: int = 0):
    """The demo's mixture as a regular Config: what a user would write in YAML."""
    from mpo_ray.config import config_from_dict

    adapters = adapter_paths(adapters or ADAPTER_DIR)
    data = {
        "beta": 0.1,
        "reference": {"name": "ref", "model": "default"},
        "policies": [{"name": obj, "model": "default", "adapter": str(adapters[obj])} for obj in OBJECTIVES],
        "rewards": [
            {"name": REWARDS[obj], "function": f"mpo_ray.demo.objectives:{REWARDS[obj]}", "objective": obj}
            for obj in OBJECTIVES
        ],
        "reweight": {
            "prompts": os.path.join(out, "prompts", "reweight.jsonl"),
            "batch_prompts": 8,
            "seed": seed,
            "output": os.path.join(out, "reweight"),
            "min_median_ess": 1.5,
            # DPO moves the policies far from π_ref: samples from π_ref alone leave a median ESS near 1
            # (measured); drawing them from π_ref and every policy (balance heuristic) keeps the estimate sound.
            "sampling": {
                "samples_per_prompt": size.samples_per_prompt,
                "max_new_tokens": size.sample_tokens,
                "proposal": "mixture",
            },
        },
        "generate": {
            "prompts": os.path.join(out, "prompts", "eval.jsonl"),
            "output": os.path.join(out, "generations", "mpo"),
            "weights_uri": os.path.join(out, "reweight", "weights.json"),
            "max_new_tokens": size.generate_tokens,
            "batch_size": 32,
            "seed": seed,
            **GENERATION,
        },
    }
    return config_from_dict(data, source="mpo-ray demo")


# What a demo run and its workflows write, and so all that a rerun in the same directory may remove (file by file).
_SOUP_FILES = ("adapter_config.json", "adapter_model.safetensors", "soup.json")  # `models.soup.rewarded_soup`
OWN_FILES = (
    "report.md",
    MARKER,
    "evaluation.json",
    "solver.png",
    "objectives.png",
    "front.png",
    "prompts/reweight.jsonl",
    "prompts/eval.jsonl",
    "reweight/weights.json",
    "reweight/report.md",
    f"reweight/{OWNER_FILE}",
    *(f"generations/mpo/{META_DIR}/{name}" for name in ("owner.json", "manifest.json", "summary.json")),
    f"generations/mpo/{META_DIR}/staging/*/*",  # Ray Data's files, inside generate's own metadata directory
    f"generations/sweep/{OWNER_FILE}",
    "generations/sweep/sweep.json",
    *(f"soup/{d}/{name}" for d in ("soup", ".soup.tmp") for name in _SOUP_FILES),
)
OWN_PARQUET = ("reweight/scores/*.parquet", "generations/mpo/*.parquet", "generations/sweep/*.parquet")
# The workflows' own directories: each must still be theirs (its marker, or nothing there yet) after a cleanup.
WORKFLOW_DIRS = {
    "reweight": ("reweight", ("scores",)),
    "generations/mpo": ("generate", ()),
    "generations/sweep": ("sweep", ("soups",)),
}  # the subdirectories each workflow checks for links


def _prepare_output(out: str, sweep_files: tuple[str, ...] = ()) -> None:
    """A fresh demo directory. In one an earlier demo made, remove the files that demo and its workflows wrote, one
    by one (Parquet only if `owns_file`; never through a link), and the directories that leaves empty: a user's
    files stay where they are, named in a warning. Refuse any other non-empty directory or a file, and, before
    removing anything, what the demo could not then write without touching a user's file: a workflow directory it
    would not accept, a link where the demo writes, a user's file in the soup (made anew) or at the name of a
    sweep output (``sweep_files``)."""
    reuse = check_ours(out, "demo", what="--output")
    storage.check_writable(out)
    if reuse:
        for sub, (kind, subdirs) in WORKFLOW_DIRS.items():
            check_ours(os.path.join(out, sub), kind, what=f"--output's {sub}/", subdirs=subdirs)
        for name in sweep_files:
            path = os.path.join(out, "generations", "sweep", name)
            if os.path.isfile(path) and not os.path.islink(path) and not owns_file(path):
                raise UserError(
                    f"--output {out!r}: generations/sweep/{name} is not a file mpo-ray wrote, and the demo "
                    "writes that name; move it out of the directory, then rerun."
                )
        remove_ours_tree(
            out, OWN_FILES, parquet=OWN_PARQUET, fresh=("soup/soup",), why="an earlier demo's output", what="--output"
        )
    os.makedirs(out, exist_ok=True)
    mark_ours(out, "demo")


def sweep_points(policies: list[str], size: DemoSize, mpo: list[float] | None) -> dict[str, list[float] | None]:
    """The fixed-weight sets of step 3 (each single policy, the uniform mix, the grid; `sweep.grid_points`) and
    MPO's λ, by label; each set's file is `<label>.parquet`."""
    from mpo_ray.workflows.sweep import grid_points

    k = len(policies)
    named = {name: np.eye(k)[i].tolist() for i, name in enumerate(policies)}
    points = grid_points(k, size.sweep_step, named={**named, "uniform": [1 / k] * k})  # the grid after them
    return {**points, "MPO": mpo}  # its own set even where it falls on a grid point


def _write_prompts(out: str, size: DemoSize) -> None:
    for split, n in (("reweight", size.reweight_prompts), ("eval", size.eval_prompts)):
        rows = demo_prompts(split)[:n]
        storage.write_text(
            os.path.join(out, "prompts", f"{split}.jsonl"),
            "".join(json.dumps({"prompt_id": r["prompt_id"], "prompt": r["prompt"]}) + "\n" for r in rows),
        )


def run_demo(
    output: str | None = None,
    quick: bool = False,
    adapters: str | None = None,
    progress: bool = True,
    seed: int = 0,
    eval_prompts: int | None = None,
) -> dict:
    """Run the five steps; returns the summary also written to `output`/demo.json. ``eval_prompts`` evaluates on
    fewer (or, in --quick, more) held-out prompts than the size's default: wider or tighter intervals."""
    size = demo_size(quick, eval_prompts)
    out = os.path.abspath(output or "mpo-demo")
    config = demo_config(out, size, adapters, seed)  # checks the shipped adapters before anything runs
    soup = _start(out, config, size)
    plan = power_plan(size.eval_prompts)
    log.info("pre-registered: %s", plan["sentence"])
    steps = _Steps()
    with ray_session(address="local", log_to_driver=False):
        artifact, sweep = _workflows(out, config, size, soup, steps, progress)

    steps.start(4, "evaluate", "both yardsticks for every set, and MPO against the best other set on each")
    points = sweep["points"]
    shown = shown_sets(points, config.policy_names)
    headline, primary = headlines(points, seed), primary_comparisons(points, seed)
    agreement = generate_agreement(out) if size.serve else None
    storage.write_json(os.path.join(out, "evaluation.json"), {"points": points, "policies": config.policy_names})

    steps.start(5, "report", "report and plots")
    _plot(out, config, shown, sweep)
    seconds = steps.seconds()
    k = len(config.policies)
    summary = {
        "size": asdict(size),
        "generation": GENERATION,
        "weights": dict(zip(config.policy_names, artifact.weights)),
        "artifact_version": artifact.version,
        "certificate_gap": artifact.certificate.gap_nats,
        "median_ess": artifact.ess.median,
        "median_ess_at_uniform": artifact.ess.median_at_uniform,
        "weights_ci": artifact.weights_ci,
        "min_win_rate": {r["name"]: r["min_win_rate"] for r in shown},
        "comparison": [comparison_entry(r, config.policy_names, soup_weights=[1 / k] * k) for r in points],
        "serving": {"mixtures": serving(CANDIDATES), "single models": serving(1, one_model=True)},
        "power": plan,
        "primary": primary,
        "headline": headline,
        "best_grid": best_grid(points, config.policy_names),
        "calibration": calibration(artifact, shown[-1]),
        "generate_matches_sweep": agreement,
        "seconds": seconds,
        "seed": seed,
        "report": os.path.join(out, "report.md"),
        "status": "done",
    }
    report = demo_report(config, artifact, shown, summary, read_examples(out, config.policy_names))
    storage.write_text(os.path.join(out, "report.md"), report)
    storage.write_json(os.path.join(out, MARKER), summary)
    log.info(
        "artifacts in %s: report.md, reweight/weights.json, reweight/scores/, generations/, "
        "solver.png, objectives.png, front.png (%.0f s)",
        out,
        seconds["total"],
    )
    return summary


def demo_size(quick: bool, eval_prompts: int | None) -> DemoSize:
    """The size to run: quick or default, with ``eval_prompts`` held-out prompts when given (1 to the corpus's)."""
    size = SIZES["quick" if quick else "default"]
    if eval_prompts is None:
        return size
    available = len(demo_prompts("eval"))
    if not 1 <= eval_prompts <= available:
        raise UserError(
            f"--eval-prompts must be between 1 and {available} (the demo corpus's held-out prompts), "
            f"got {eval_prompts}."
        )
    return dataclasses.replace(size, eval_prompts=eval_prompts)


def _start(out: str, config, size: DemoSize):
    """Before any model runs: the output directory made ready and marked running, the Rewarded Soup (the paper's
    weight-space baseline: the adapters' parameters averaged uniformly) made first, so that adapters which cannot
    be averaged fail early, and the prompt files written. Returns the soup, served as the sweep's set `soup`."""
    from mpo_ray.workflows.sweep import REFERENCE, soup_specs

    sets = [REFERENCE, *sweep_points(config.policy_names, size, None), "soup"]  # the sweep's files, by label
    _prepare_output(out, sweep_files=tuple(f"{label}.parquet" for label in sets))
    storage.write_json(os.path.join(out, MARKER), {"size": asdict(size), "status": "running"})
    k = len(config.policies)
    soup = soup_specs(config, os.path.join(out, "soup"), {"soup": [1 / k] * k})["soup"]
    _write_prompts(out, size)
    log.info(
        "sizes: %d reweight prompts × %d samples of ≤ %d tokens; %d held-out prompts per set, ≤ %d tokens%s "
        "(--eval-prompts N changes it, 1 to %d)",
        size.reweight_prompts,
        size.samples_per_prompt,
        size.sample_tokens,
        size.eval_prompts,
        size.generate_tokens,
        f"; weight grid step {size.sweep_step}" if size.sweep_step else "",
        len(demo_prompts("eval")),
    )
    log.info("serving: %s", serving_sentence(CANDIDATES))
    return soup


def _workflows(out: str, config, size: DemoSize, soup, steps: _Steps, progress: bool) -> tuple[dict, dict]:
    """Steps 1–3, the real workflows in one Ray session: (the weights artifact, the sweep's summary)."""
    from mpo_ray.workflows.generate import generate
    from mpo_ray.workflows.reweight import reweight
    from mpo_ray.workflows.sweep import run_sweep

    steps.start(1, "reweight", "reweight: sample from π_ref and each policy, score with every policy, solve for λ")
    # implicit DPO rewards drive the solver; the programmatic rewards are for evaluation only,
    # so reweighting skips their actors (three fewer processes to start on a small machine)
    artifact = reweight(config.model_copy(update={"rewards": []}), progress=progress)
    if size.serve:
        steps.start(2, "generate MPO", "generate with the MPO weights (Ray Data → Parquet)")
        generate(config, progress=progress)
    else:
        log.info("[2/5] generate: skipped in --quick (the sweep's MPO point below holds the same rows)")
    steps.start(
        3,
        "compare (sweep)",
        "generate with π_ref, each single policy, the uniform mix, MPO, a Rewarded Soup"
        + (" and a weight grid" if size.sweep_step else "")
        + "; score every response with every model",
    )
    points = {**sweep_points(config.policy_names, size, list(artifact.weights)), "soup": soup}
    sweep = run_sweep(config, output=os.path.join(out, "generations", "sweep"), points=points, progress=progress)
    return artifact, sweep


def _plot(out: str, config, shown: list[dict], sweep: dict) -> None:
    """solver.png (the score table re-solved both ways), objectives.png and front.png."""
    from mpo_ray.demo.plots import plot_front, plot_objectives, plot_solver

    full, bsmd, gaps = solver_paths(config, out)
    plot_solver(os.path.join(out, "solver.png"), config.policy_names, full, bsmd, gaps)
    plot_objectives(os.path.join(out, "objectives.png"), shown)
    plot_front(os.path.join(out, "front.png"), sweep)


class _Steps:
    """The five steps' log lines and the seconds each took, from its start to the next one's (the last to the end)."""

    def __init__(self):
        self.t0, self.starts = time.perf_counter(), {}

    def start(self, i: int, key: str, what: str) -> None:
        self.starts[key] = time.perf_counter()
        log.info("[%d/5] %s", i, what)

    def seconds(self) -> dict[str, float]:
        marks = [*self.starts.values(), time.perf_counter()]
        out = {key: round(marks[i + 1] - t, 1) for i, (key, t) in enumerate(self.starts.items())}
        return {**out, "total": round(time.perf_counter() - self.t0, 1)}
