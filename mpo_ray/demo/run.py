"""`mpo-ray demo`: MPO end to end on a real language model, on local Ray.

π_ref is SmolLM2-135M-Instruct; the three policies are LoRA adapters on it,
DPO-trained for being concise, relevant and enthusiastic (`demo.policies`).
The demo runs the real workflows in order:

1. reweight — sample from π_ref and each policy, score with every policy, solve for λ (score table + weights.json);
2. generate — the eval prompts through the MPO mixture, with Ray Data, to Parquet;
3. compare   — the same prompts and seeds through π_ref, each single policy, the uniform mix, MPO's λ,
               a Rewarded Soup (the adapters' parameters averaged) and a grid of fixed weights (`sweep`);
4. evaluate — every set on two yardsticks, each with paired bootstrap intervals over prompts:
               MPO's own objective J (`core.yardstick`) and the objectives' win rates against π_ref;
5. report   — report.md and PNG plots.

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
from mpo_ray.demo.policies import ADAPTER_DIR, OBJECTIVES, REWARDS, adapter_paths, demo_prompts
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
# Pre-registered (issue 19): the primary comparisons, stated before any number is seen; every other comparison (the
# best other set, the single policies, the weight grid, the min win rate) is secondary.
PRIMARY = ("uniform", "soup")
# The effect the power statement is computed against: `mpo-ray bench protocol` (100 replicas; hard world, policies
# ≈ 4 nats from π_ref, mixtures resampled among 4 candidates, λ̂ from 48 × 4): exact ΔJ(MPO − uniform) and the
# per-prompt SD of the paired ΔĴ. Their ratio d is what transfers (an assumption: the demo's own d is unknown).
PROTOCOL_EFFECT = {
    "effect": 0.330,
    "sd": 3.31,
    "measured_power": "0.09 [0.05, 0.16] at 48×4, 50×1",
    "source": "mpo-ray bench protocol (100 replicas): 48×4, SD at 1000×1 (the SD measured at 50 prompts, "
    "2.69, understates it: the per-prompt terms are heavy-tailed)",
}
YARDSTICKS = {"implicit_min": "MPO's own objective J (nats)", "min_win_rate": "the worst objective's win rate vs π_ref"}
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
    """The fixed-weight sets of step 3 (each single policy, the uniform mix, the grid) and MPO's λ, by label. Labels
    use only the characters a sweep keeps in file names, so each set's file is `<label>.parquet`."""
    from mpo_ray.workflows.sweep import point_label, simplex_grid

    k = len(policies)
    points = {name: np.eye(k)[i].tolist() for i, name in enumerate(policies)}
    points["uniform"] = [1 / k] * k
    if size.sweep_step:
        for w in simplex_grid(k, size.sweep_step):  # vertices and centre are there already
            if not any(np.allclose(w, v) for v in points.values()):
                points[point_label(w)] = w.tolist()
    points["MPO"] = mpo  # its own set even where it falls on a grid point
    return points


def _write_prompts(out: str, size: DemoSize) -> None:
    for split, n in (("reweight", size.reweight_prompts), ("eval", size.eval_prompts)):
        rows = demo_prompts(split)[:n]
        storage.write_text(
            os.path.join(out, "prompts", f"{split}.jsonl"),
            "".join(json.dumps({"prompt_id": r["prompt_id"], "prompt": r["prompt"]}) + "\n" for r in rows),
        )


def _solver_paths(config, out: str):
    """Re-solve the written score table with history, both ways, for the solver plot."""
    from mpo_ray.core.estimator import score_arrays
    from mpo_ray.core.solver import evaluate_weights, solve_weights

    # only the files reweight wrote: a user's Parquet beside them cannot change the plot
    table = storage.read_parquet_files(
        [u for u in storage.list_files(os.path.join(out, "reweight", "scores")) if owns_file(u)]
    )
    a = score_arrays(table, config.policy_names)
    kw = dict(mask=a.mask, log_importance=a.log_importance)
    full = solve_weights(a.log_ratios, **kw)
    n = a.mask.shape[0]
    bsmd = solve_weights(a.log_ratios, method="bsmd", steps=50 * n, batch_prompts=1, seed=0, **kw)
    avg = np.cumsum(bsmd.history.weights, axis=0) / np.arange(1, len(bsmd.history.weights) + 1)[:, None]
    at = np.unique(np.linspace(0, len(avg) - 1, 40).astype(int))
    gaps = np.array([evaluate_weights(a.log_ratios, avg[t], **kw).gap for t in at])
    return full, bsmd, (at, gaps)


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
    from mpo_ray.demo.plots import plot_front, plot_objectives, plot_solver
    from mpo_ray.workflows.generate import generate
    from mpo_ray.workflows.reweight import reweight
    from mpo_ray.workflows.sweep import REFERENCE, run_sweep, soup_specs

    size = SIZES["quick" if quick else "default"]
    if eval_prompts is not None:
        available = len(demo_prompts("eval"))
        if not 1 <= eval_prompts <= available:
            raise UserError(
                f"--eval-prompts must be between 1 and {available} (the demo corpus's held-out prompts), "
                f"got {eval_prompts}."
            )
        size = dataclasses.replace(size, eval_prompts=eval_prompts)
    out = os.path.abspath(output or "mpo-demo")
    config = demo_config(out, size, adapters, seed)  # checks the shipped adapters before anything runs
    sets = [REFERENCE, *sweep_points(config.policy_names, size, None), "soup"]  # the sweep's files, by label
    _prepare_output(out, sweep_files=tuple(f"{label}.parquet" for label in sets))
    storage.write_json(os.path.join(out, MARKER), {"size": asdict(size), "status": "running"})
    # Rewarded Soups (the paper's weight-space baseline): the adapters' parameters averaged uniformly; made
    # first, so that adapters which cannot be averaged fail before any model runs
    k = len(config.policies)
    soups = soup_specs(config, os.path.join(out, "soup"), {"soup": [1 / k] * k})
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
    log.info("serving: %s", serving_sentence())
    plan = power_plan(size.eval_prompts)
    log.info("pre-registered: %s", plan["sentence"])
    t0, times = time.perf_counter(), {}

    def step(i: int, key: str, what: str):
        times[key] = time.perf_counter()
        log.info("[%d/5] %s", i, what)

    with ray_session(address="local", log_to_driver=False):
        step(1, "reweight", "reweight: sample from π_ref and each policy, score with every policy, solve for λ")
        # implicit DPO rewards drive the solver; the programmatic rewards are for evaluation only,
        # so reweighting skips their actors (three fewer processes to start on a small machine)
        artifact = reweight(config.model_copy(update={"rewards": []}), progress=progress)
        lam = dict(zip(config.policy_names, artifact["weights"]))

        if size.serve:
            step(2, "generate MPO", "generate with the MPO weights (Ray Data → Parquet)")
            generate(config, progress=progress)
        else:
            log.info("[2/5] generate: skipped in --quick (the sweep's MPO point below holds the same rows)")

        step(
            3,
            "compare (sweep)",
            "generate with π_ref, each single policy, the uniform mix, MPO, a Rewarded Soup"
            + (" and a weight grid" if size.sweep_step else "")
            + "; score every response with every model",
        )
        points = sweep_points(config.policy_names, size, list(artifact["weights"]))
        sweep = run_sweep(
            config, output=os.path.join(out, "generations", "sweep"), points=points, extra=soups, progress=progress
        )

    step(4, "evaluate", "both yardsticks for every set, and MPO against the best other set on each")
    by_name = {p["name"]: p for p in sweep["points"]}
    mpo = by_name["MPO"]
    shown = [by_name[n] for n in (REFERENCE, *config.policy_names, "uniform", "soup", "MPO")]
    headline = headlines(sweep["points"], seed)
    primary = primary_comparisons(sweep["points"], seed)
    agreement = _generate_agreement(out) if size.serve else None
    storage.write_json(
        os.path.join(out, "evaluation.json"), {"points": sweep["points"], "policies": config.policy_names}
    )

    step(5, "report", "report and plots")
    full, bsmd, gaps = _solver_paths(config, out)
    plot_solver(os.path.join(out, "solver.png"), config.policy_names, full, bsmd, gaps)
    plot_objectives(os.path.join(out, "objectives.png"), shown)
    plot_front(os.path.join(out, "front.png"), sweep)
    times["end"] = time.perf_counter()
    marks = list(times.items())
    seconds = {key: round(marks[i + 1][1] - t, 1) for i, (key, t) in enumerate(marks[:-1])}
    seconds["total"] = round(time.perf_counter() - t0, 1)
    summary = {
        "size": asdict(size),
        "generation": GENERATION,
        "weights": lam,
        "artifact_version": artifact["version"],
        "certificate_gap": artifact["certificate"]["gap_nats"],
        "median_ess": artifact["ess"]["median"],
        "median_ess_at_uniform": artifact["ess"].get("median_at_uniform"),
        "weights_ci": artifact.get("weights_ci"),
        "min_win_rate": {r["name"]: r["min_win_rate"] for r in shown},
        "comparison": [comparison_entry(r, config.policy_names, soup_weights=[1 / k] * k) for r in sweep["points"]],
        "serving": {"mixtures": serving(CANDIDATES), "single models": serving(1, one_model=True)},
        "power": plan,
        "primary": primary,
        "headline": headline,
        "best_grid": best_grid(sweep["points"], config.policy_names),
        "calibration": calibration(artifact, mpo),
        "generate_matches_sweep": agreement,
        "seconds": seconds,
        "seed": seed,
        "report": os.path.join(out, "report.md"),
        "status": "done",
    }
    report = demo_report(config, artifact, shown, summary, _examples(out, config.policy_names))
    storage.write_text(os.path.join(out, "report.md"), report)
    storage.write_json(os.path.join(out, MARKER), summary)
    log.info(
        "artifacts in %s: report.md, reweight/weights.json, reweight/scores/, generations/, "
        "solver.png, objectives.png, front.png (%.0f s)",
        out,
        seconds["total"],
    )
    return summary


def _kind(name: str, policies: list[str]) -> str:
    from mpo_ray.workflows.sweep import REFERENCE

    special = {"MPO": "mpo", "uniform": "uniform", "soup": "soup", REFERENCE: "reference"}
    return special.get(name) or ("single" if name in policies else "grid")


def comparison_entry(r: dict, policies: list[str], soup_weights: list[float]) -> dict:
    """One generation set in demo.json: its weights (for the soup: of the averaged adapters) and both
    yardsticks with their 95% intervals."""
    j, kind = r.get("implicit", {}), _kind(r["name"], policies)
    return {
        "name": r["name"],
        "kind": kind,
        "weights": soup_weights if kind == "soup" else r.get("weights"),
        "candidates": r.get("serving", {}).get("num_candidates"),
        "implicit_min": j.get("implicit_min"),
        "implicit_min_ci95": j.get("implicit_min_ci95"),
        "implicit_min_corrected": j.get("implicit_min_corrected"),
        "implicit_min_corrected_ci95": j.get("implicit_min_corrected_ci95"),
        "kl": j.get("kl"),
        "kl_estimate": j.get("kl_estimate"),
        "min_win_rate": r["min_win_rate"],
        "min_win_rate_ci95": r["min_win_rate_ci95"],
    }


def serving_sentence() -> str:
    """What each set serves and what it costs, for the log and the report."""
    return (
        f"mixtures (MPO, uniform, grid) resample one of {CANDIDATES} token-level candidates ∝ π_λ/q "
        f"(cost: {CANDIDATES}× the decoding of the token-level mixture; nearer the sequence-level π_λ, not equal "
        f"to it); π_ref, each single policy and the soup draw one sample (cost 1×: for one model, resampling "
        "would serve the same distribution)"
    )


def power_plan(eval_prompts: int) -> dict:
    """The power of the primary test at this size, against the effect `bench protocol` measured, stated before any
    number of this run is seen (normal approximation, `core.stats.normal_power`)."""
    from mpo_ray.core.stats import detectable_effect, normal_power

    effect, sd = PROTOCOL_EFFECT["effect"], PROTOCOL_EFFECT["sd"]
    power = normal_power(effect, sd, eval_prompts)
    needed = int(np.ceil((detectable_effect(sd, 1) / effect) ** 2))  # the n at which the detectable effect is this one
    sentence = (
        f"MPO − uniform and MPO − soup on J (paired bootstrap 95%, over {eval_prompts} prompts); power "
        f"against the MPO − uniform effect bench protocol measured in its exact world (ΔJ = {effect:.3f} nats at "
        f"per-prompt SD {sd:.2f}, "
        f"d = {effect / sd:.3f}) is {power:.2f} by the normal approximation (the benchmark measured "
        f"{PROTOCOL_EFFECT['measured_power']}); 80% power would take about {needed} prompts. A 'within noise' "
        "verdict at this power is the expected outcome even if MPO is ahead by that much: it does not mean the "
        "sets are equal, only that differences outside the interval are unlikely."
    )
    return {
        "effect": effect,
        "sd": sd,
        "d": effect / sd,
        "eval_prompts": eval_prompts,
        "power": power,
        "prompts_for_80": needed,
        "detectable_80_at_sd": detectable_effect(sd, eval_prompts),
        "source": PROTOCOL_EFFECT["source"],
        "sentence": sentence,
    }


def primary_comparisons(points: list[dict], seed: int) -> dict:
    """The pre-registered comparisons on J: MPO − uniform and MPO − soup, paired over prompts, raw and bootstrap
    bias-corrected (J is a minimum of means, biased low, more for the balanced set), with the difference this run
    could detect with 80% power at its own measured noise."""
    from mpo_ray.core.stats import detectable_effect
    from mpo_ray.core.yardstick import compare_implicit

    by = {p["name"]: p for p in points}
    out = {}
    for other in PRIMARY:
        c = compare_implicit(by["MPO"]["implicit"], by[other]["implicit"], seed=seed)
        sd = c["se"] * c["prompts"] ** 0.5
        out[other] = {
            "mpo_minus": c["difference"],
            "ci95": c["ci95"],
            "within_noise": c["within_noise"],
            "corrected": c["corrected"],
            "prompts": c["prompts"],
            "sd_per_prompt": sd,
            "detectable_80": detectable_effect(sd, c["prompts"]),
        }
    return out


def headlines(points: list[dict], seed: int) -> dict:
    """Per yardstick: MPO − the best other set (picked on this same data, which favours the other set),
    paired over prompts, with a bootstrap 95% interval."""
    from mpo_ray.core.yardstick import compare_implicit
    from mpo_ray.workflows.evaluate import compare_min_win_rates

    mpo = next(p for p in points if p["name"] == "MPO")
    others = [p for p in points if p["name"] != "MPO"]
    value = {"implicit_min": lambda p: p["implicit"]["implicit_min"], "min_win_rate": lambda p: p["min_win_rate"]}
    compare = {
        "implicit_min": lambda a, b: compare_implicit(a["implicit"], b["implicit"], seed=seed),
        "min_win_rate": lambda a, b: compare_min_win_rates(a, b, seed=seed),
    }
    out = {}
    for key in YARDSTICKS:
        best = max(others, key=value[key])
        c = compare[key](mpo, best)
        out[key] = {
            "best_other": best["name"],
            "mpo": value[key](mpo),
            "best_other_value": value[key](best),
            "mpo_minus_best_other": c["difference"],
            "ci95": c["ci95"],
            "prompts": c["prompts"],
            "within_noise": c["within_noise"],
        }
    return out


def calibration(artifact, mpo: dict) -> dict:
    """Does λ̂ balance the objectives on MPO's own samples? At the MaxMin optimum every objective with
    λ_k > 0 has the same value E[ℓ_k]; the solver says so of its estimate. ``measured`` is each E[ℓ_k]
    on fresh samples of the served mixture (resampled among CANDIDATES), with 95% intervals; ``gap`` is best − worst
    served objective with a paired bootstrap 95% interval, and ``apart`` says it excludes 0: λ̂ under-serves
    the worst (picked on the same data, so ``apart`` leans towards yes)."""
    from mpo_ray.core.stats import paired_bootstrap

    measured, names = mpo["implicit"]["values"], list(mpo["implicit"]["values"])
    served = [n for n, w in zip(artifact["policies"], artifact["weights"]) if w > 0]
    worst = min(served, key=lambda n: measured[n]["mean"])
    best = max(served, key=lambda n: measured[n]["mean"])
    ell = np.asarray(mpo["implicit"]["per_prompt"]["ell"])
    gap, lo, hi = paired_bootstrap(
        lambda a, b: float(a.mean() - b.mean()), ell[:, names.index(best)], ell[:, names.index(worst)]
    )
    return {
        "predicted": artifact["values"],
        "measured": measured,
        "worst": worst,
        "best": best,
        "gap": gap,
        "gap_ci95": [lo, hi],
        "apart": lo > 0,
    }


def _calibration_sentence(c: dict) -> str:
    values = ", ".join(
        f"{n} {v['mean']:.1f} [{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}]" for n, v in c["measured"].items()
    )
    predicted = ", ".join(f"{n} {v:.1f}" for n, v in c["predicted"].items())
    lo, hi = c["gap_ci95"]
    gap = f"`{c['best']}` − `{c['worst']}` = {c['gap']:.1f} [{lo:.1f}, {hi:.1f}]"
    verdict = (
        f"{gap}, so λ̂ under-serves `{c['worst']}` beyond noise (a low ESS biases the estimate, and the decoder "
        f"serves {CANDIDATES}-candidate resampling, near but not equal to the sequence-level π_λ̂ the solver models)"
        if c["apart"]
        else f"{gap}, within noise"
    )
    return (
        f"Calibration: the solver predicts E[ℓ_k] under λ̂ of {predicted} (nats); on MPO's own samples they are "
        f"{values}: {verdict}."
    )


def best_grid(points: list[dict], policies: list[str]) -> dict:
    """The fixed-weight log-linear set (a vertex, the uniform mix or a grid point) with the best min win rate:
    whether some mixture serves every objective better than π_ref."""
    grid = [p for p in points if _kind(p["name"], policies) in ("single", "uniform", "grid")]
    best = max(grid, key=lambda p: p["min_win_rate"])
    return {
        "name": best["name"],
        "weights": best["weights"],
        "min_win_rate": best["min_win_rate"],
        "min_win_rate_ci95": best["min_win_rate_ci95"],
    }


def _generate_agreement(out: str) -> float:
    """Share of prompts where `generate` (Ray Data) wrote the same text as the sweep's MPO point: both use
    the same seeds and weights, so anything below 1 is floating-point drift between batch layouts."""
    served = storage.read_parquet_files(
        [u for u in storage.list_files(os.path.join(out, "generations", "mpo")) if owns_file(u)]
    )  # generate's files, not a user's beside them
    swept = storage.read_parquet(os.path.join(out, "generations", "sweep", "MPO.parquet"))
    a = dict(zip(served["prompt_id"].to_pylist(), served["response"].to_pylist()))
    b = dict(zip(swept["prompt_id"].to_pylist(), swept["response"].to_pylist()))
    common = set(a) & set(b)
    return round(sum(a[p] == b[p] for p in common) / max(len(common), 1), 3)


def _examples(out: str, names: list[str], n: int = 2) -> list[dict]:
    """The first n eval prompts as answered by π_ref, each single policy, and MPO."""
    sources = {"π_ref": "reference", **{name: name for name in names}, "MPO": "MPO"}
    texts = {}
    for who, label in sources.items():
        t = storage.read_parquet(os.path.join(out, "generations", "sweep", f"{label}.parquet"))
        texts[who] = dict(zip(t["prompt_id"].to_pylist(), t["response"].to_pylist()))
    rows = [json.loads(line) for line in storage.read_text(os.path.join(out, "prompts", "eval.jsonl")).splitlines()][:n]
    return [
        {"prompt": r["prompt"], "answers": {who: t.get(r["prompt_id"], "") for who, t in texts.items()}} for r in rows
    ]


def _headline_sentence(key: str, h: dict) -> str:
    """MPO against the best other generation set, with its interval; no more claimed than the interval shows."""
    lo, hi = h["ci95"]
    verdict = (
        "within noise: the interval holds 0, so this run cannot tell them apart"
        if h["within_noise"]
        else "MPO ahead beyond noise"
        if lo > 0
        else "MPO behind beyond noise"
    )
    digits = 1 if key == "implicit_min" else 2
    f = lambda x: f"{x:+.{digits}f}"  # noqa: E731
    return (
        f"**MPO − best other set (`{h['best_other']}`) on {YARDSTICKS[key]}: {f(h['mpo_minus_best_other'])} "
        f"(95% CI [{f(lo)}, {f(hi)}], paired bootstrap over {h['prompts']} prompts): {verdict}.**"
    )


def _primary_sentence(other: str, c: dict) -> str:
    """One pre-registered comparison: raw and bias-corrected, what the interval does and does not say."""
    lo, hi = c["ci95"]
    bc, (blo, bhi) = c["corrected"]["difference"], c["corrected"]["ci95"]
    verdict = (
        "within noise: the interval holds 0; this run cannot tell them apart, which is not evidence that they "
        f"are equal (it could detect a difference of about {c['detectable_80']:.1f} nats with 80% power)"
        if c["within_noise"]
        else "MPO ahead beyond noise"
        if lo > 0
        else "MPO behind beyond noise"
    )
    if c["corrected"]["within_noise"] != c["within_noise"]:
        verdict += (
            "; the bias-corrected interval "
            + ("holds 0" if c["corrected"]["within_noise"] else f"excludes 0 (MPO {'ahead' if blo > 0 else 'behind'})")
            + ": raw and corrected disagree, a borderline result"
        )
    return (
        f"**MPO − `{other}` on J: {c['mpo_minus']:+.2f} nats (95% CI [{lo:+.2f}, {hi:+.2f}]; bias-corrected "
        f"{bc:+.2f} [{blo:+.2f}, {bhi:+.2f}]; {c['prompts']} prompts): {verdict}.**"
    )


def _best_grid_sentence(b: dict) -> str:
    lo, hi = b["min_win_rate_ci95"]
    where = (
        "above ½ beyond noise: one mixture serves every objective better than π_ref"
        if lo > 0.5
        else "above ½, within noise"
        if b["min_win_rate"] > 0.5
        else "not above ½"
    )
    return (
        f"Best fixed-weight mixture on the worst objective: `{b['name']}`, min win rate {b['min_win_rate']:.2f} "
        f"(95% CI [{lo:.2f}, {hi:.2f}]): {where}."
    )


def demo_report(config, artifact: dict, shown: list[dict], summary: dict, examples: list[dict] = ()) -> str:
    """report.md: what ran, λ and its certificate, the objectives per policy, examples, plots, times."""
    from mpo_ray.workflows.evaluate import format_evaluations

    size, names = summary["size"], config.policy_names
    singles = [r for r in shown if r["name"] in names]
    worst_single = min(singles, key=lambda r: r["min_win_rate"])
    best_single = max(singles, key=lambda r: r["min_win_rate"])
    mpo = shown[-1]
    lines = [
        "# mpo-ray demo",
        "",
        "π_ref = SmolLM2-135M-Instruct; policies = LoRA adapters DPO-trained for "
        + ", ".join(f"`{n}`" for n in names)
        + " (see `mpo_ray/demo/data/adapters/README.md`).",
        f"Reweighting: {size['reweight_prompts']} prompts × {size['samples_per_prompt']} untempered samples of up to "
        f"{size['sample_tokens']} tokens, drawn evenly from π_ref and each policy (the mixture proposal). "
        f"Generation: {size['eval_prompts']} held-out prompts, up to {size['generate_tokens']} tokens, untempered "
        "(the policies themselves, which is what both yardsticks judge), the same seed per prompt for every set.",
        f"Serving: {serving_sentence()}.",
        "",
        "## Pre-registered comparisons and their power (stated before the numbers)",
        "",
        f"Primary: {summary['power']['sentence']} Secondary: MPO against the best other set, the single policies, the "
        "weight grid, and the min win rate.",
        "",
        "## Mixing weights λ (MaxMin over the implicit DPO rewards)",
        "",
        "| " + " | ".join(names) + " | certificate gap (nats) | median ESS | free riders |",
        "|" + "---|" * (len(names) + 3),
        "| " + " | ".join(f"{w:.3f}" for w in artifact["weights"]) + f" | {artifact['certificate']['gap_nats']:.1e} | "
        f"{artifact['ess']['median']:.2f} / {artifact['ess']['samples_per_prompt']} | "
        f"{', '.join(artifact['free_riders']) or 'none'} |",
        "",
        *(
            [
                (
                    "90% intervals (bootstrap over prompts): "
                    + ", ".join(
                        f"{n} [{artifact['weights_ci'][n][0]:.2f}, {artifact['weights_ci'][n][1]:.2f}]" for n in names
                    )
                    + f"; median ESS at uniform λ {artifact['ess']['median_at_uniform']:.2f}."
                ),
                "",
            ]
            if "weights_ci" in artifact
            else []
        ),
        "The gap certifies the solve (0 at the optimum). ESS is how many of each prompt's samples carry the "
        "mixture's weight; a low ESS means the estimate rests on few samples and λ is noisy (see its intervals).",
        "",
        "## Two yardsticks, per generation set",
        "",
        "Win rate = share of prompts where the response scores higher on that objective than π_ref's response "
        "to the same prompt (ties count ½); the min win rate is the MaxMin view of the measurable objectives. "
        "J = min_k E[log π_k/π_ref] − KL(π‖π_ref), in nats, measured on the set's own samples: the objective MPO "
        "maximises over all policies. Only the sequence-level π_λ* (at the true λ*) is guaranteed best on it; MPO here "
        f"is the estimated λ̂ served by resampling among {CANDIDATES} candidates, which comes near π_λ̂ but not onto it, "
        "so a set beating MPO beyond noise says λ̂ or its serving is off. For resampled sets the KL term uses π_λ's "
        "log-prob at the served samples with its normaliser estimated from the candidates (the served distribution "
        "has none in closed form; in bench serving's exact worlds this biases J by −0.001 to −0.015 nats at n = 4). "
        "J (a minimum of means) is biased low, more for balanced sets such as MPO's: the bootstrap bias-corrected J "
        "is shown beside it. Intervals: 95%, bootstrap over prompts.",
        "",
        format_evaluations(shown),
        "",
        f"MPO's worst objective wins {mpo['min_win_rate']:.2f} of the time "
        f"(95% CI [{mpo['min_win_rate_ci95'][0]:.2f}, {mpo['min_win_rate_ci95'][1]:.2f}]); the single policies' worst "
        f"objectives win between {worst_single['min_win_rate']:.2f} (`{worst_single['name']}`) and "
        f"{best_single['min_win_rate']:.2f} (`{best_single['name']}`).",
        "",
        "Primary (pre-registered):",
        "",
        *[line for other, c in summary["primary"].items() for line in (_primary_sentence(other, c), "")],
        "Secondary:",
        "",
        *[line for key in YARDSTICKS for line in (_headline_sentence(key, summary["headline"][key]), "")],
        "The best other set is picked on these same prompts, which flatters it: a difference in MPO's favour "
        "is, if anything, understated.",
        "",
        _best_grid_sentence(summary["best_grid"]),
        "",
        _calibration_sentence(summary["calibration"]),
        "",
        "![objectives](objectives.png)",
        "",
        "## Examples",
        "",
        *[
            line
            for ex in examples
            for line in (
                f"**{ex['prompt']}**",
                "",
                *[f"- *{who}*: {' '.join(text.split()) or '(empty)'}" for who, text in ex["answers"].items()],
                "",
            )
        ],
        "## The solver",
        "",
        "![solver](solver.png)",
        "",
        "## The trade-off front",
        "",
        "![front](front.png)",
        "",
        "## Time",
        "",
        "| step | seconds |",
        "|---|---|",
    ]
    lines += [f"| {what} | {sec} |" for what, sec in summary["seconds"].items()]
    return "\n".join(lines) + "\n"
