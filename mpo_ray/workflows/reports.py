"""Short human-readable reports that sit beside the machine-readable artifacts."""

from __future__ import annotations


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def reweight_report(artifact: dict, estimates: dict) -> str:
    """Markdown: λ, per-objective values, certificate, ESS, free riders, warnings, timings."""
    names = artifact["policies"]
    beta = artifact["beta"]
    lines = [
        f"# MPO weights {artifact['version']}",
        "",
        f"Score table: {artifact['score_table']['prompts']} prompts, {artifact['score_table']['rows']} rows "
        f"({artifact['score_table']['uri']}). β = {beta}. Estimate driving the solver: **{artifact['estimate']}**.",
        "",
        "| policy | λ | value (nats) |" + "".join(f" λ ({e}) |" for e in estimates),
        "|---|---|---|" + "---|" * len(estimates),
    ]
    for k, name in enumerate(names):
        extra = "".join(f" {_fmt(r.weights[k])} |" for r in estimates.values())
        lines.append(f"| {name} | {_fmt(artifact['weights'][k])} | {_fmt(artifact['values'][name])} |{extra}")
    cert = artifact["certificate"]
    ess = artifact["ess"]
    lines += [
        "",
        f"* Certificate gap: {cert['gap_nats']:.3g} nats = {cert['gap_reward_units']:.3g} in reward units (× β); "
        f"0 at the optimum. Solver: {artifact['solver']['method']}, {artifact['solver']['iterations']} iterations, "
        f"converged: {artifact['solver']['converged']}.",
        f"* MaxMin value attained by π_λ: {_fmt(artifact['maxmin_value'])} nats (dual F̂(λ) = {_fmt(artifact['dual'])}).",
        f"* Streaming BSMD (one step per prompt, as batches arrived): λ = "
        f"{[round(x, 4) for x in artifact['streaming_bsmd']['weights']]}, gap {artifact['streaming_bsmd']['gap']:.3g}.",
        f"* Effective sample size per prompt: median {ess['median']:.2f}, min {ess['min']:.2f}, "
        f"of {ess['samples_per_prompt']} samples.",
        f"* Free riders (λ = 0, already served by the others): {', '.join(artifact['free_riders']) or 'none'}.",
    ]
    if ess["low"]:
        lines.append(
            "* **Warning: low ESS.** The policies are far from the proposal for this many samples; the weights are noisy. "
            "Raise `samples_per_prompt` or use `proposal: mixture`."
        )
    if not artifact["solver"]["converged"]:
        lines.append("* **Warning: the solver did not reach its tolerance**; raise `solver.steps` or use `method: full`.")
    t = artifact["timings_s"]
    total = sum(t.values()) or 1.0
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in t.items()), ""]
    return "\n".join(lines)
