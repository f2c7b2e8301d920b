"""Short human-readable reports that sit beside the machine-readable artifacts."""

from __future__ import annotations

from mpo_ray.io.artifact import WeightsRecord


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def reweight_report(r: WeightsRecord, estimates: dict) -> str:
    """Markdown: λ, per-objective values, certificate, ESS, free riders, warnings, timings."""
    st, ci, cert, ess, solver = r.score_table, r.weights_ci or {}, r.certificate, r.ess, r.solver
    lines = [
        f"# MPO weights {r.version}",
        "",
        f"Score table: {st.prompts} prompts, {st.rows} rows ({st.uri}). β = {r.beta}. "
        f"Estimate driving the solver: **{r.estimate}**.",
        "",
        "| policy | λ | 90% interval | value (nats) |" + "".join(f" λ ({e}) |" for e in estimates),
        "|---|---|---|---|" + "---|" * len(estimates),
    ]
    for k, name in enumerate(r.policies):
        extra = "".join(f" {_fmt(e.weights[k])} |" for e in estimates.values())
        interval = f"[{ci[name][0]:.3f}, {ci[name][1]:.3f}]" if name in ci else "—"
        lines.append(f"| {name} | {_fmt(r.weights[k])} | {interval} | {_fmt(r.values[name])} |{extra}")
    if ci:
        method = r.weights_ci_method
        lines += [
            "",
            f"Intervals: {method.resamples} bootstrap resamples of the prompts, each solved in full "
            f"(percentile, {method.level:.0%}). They cover the sampling noise of the score table, not a "
            "change of models or prompt distribution.",
        ]
    streamed = r.streaming_bsmd
    lines += [
        "",
        f"* Certificate gap: {cert.gap_nats:.3g} nats = {cert.gap_reward_units:.3g} in reward units (× β); "
        f"0 at the optimum. Solver: {solver.method}, {solver.iterations} iterations, converged: {solver.converged}.",
        f"* MaxMin value attained by π_λ: {_fmt(r.maxmin_value)} nats (dual F̂(λ) = {_fmt(r.dual)}).",
        *(
            [
                f"* Streaming BSMD (one step per prompt, as batches arrived): λ = "
                f"{[round(x, 4) for x in streamed.weights]}, gap {streamed.gap:.3g}."
            ]
            if streamed
            else []
        ),
        f"* Effective sample size per prompt: median {ess.median:.2f} at λ (min {ess.min:.2f}), "
        + (f"median {ess.median_at_uniform:.2f} at uniform λ, " if ess.median_at_uniform is not None else "")
        + f"of {ess.samples_per_prompt} samples.",
        f"* Free riders (λ = 0, already served by the others): {', '.join(r.free_riders) or 'none'}.",
    ]
    if ess.low:
        lines.append(
            "* **Warning: low ESS** (at λ or at uniform λ). "
            "The policies are far from the proposal for this many samples; "
            "the weights are noisy (see their intervals). Raise `samples_per_prompt` or use `proposal: mixture`."
        )
    if not solver.converged:
        lines.append(
            "* **Warning: the solver did not reach its tolerance**; raise `solver.steps` or use `method: full`."
        )
    t = r.timings_s
    total = sum(t.values()) or 1.0
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in t.items()), ""]
    return "\n".join(lines)


def _num(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def night_report(r: WeightsRecord) -> str:
    """Markdown beside the weights: the decision and every check first, then the numbers behind them."""
    n, names = r.nightly, r.policies
    gate, warm, st = n.gate, n.warm_start, r.score_table
    verdict = (
        "promoted to `latest`"
        if gate.passed
        else f"**not promoted**: `latest` stays {n.previous} (failed: {', '.join(gate.failed)})"
    )
    lines = [
        f"# Night {n.night}: {verdict}",
        "",
        f"Store: {n.store}. Gated against `latest` = {n.previous}.",
        "",
        "| check | passed | value | limit | what |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.check} | {'yes' if c.passed else '**NO**'} | {_num(c.value)} | {c.limit} | {c.detail} |"
        for c in gate.checks
    ]
    prev = n.previous_weights
    lines += ["", "| policy | λ tonight | λ latest | value (nats) |", "|---|---|---|---|"]
    lines += [
        f"| {p} | {r.weights[k]:.4g} | {_num(prev[k] if prev else None)} | {r.values[p]:.4g} |"
        for k, p in enumerate(names)
    ]
    fb = n.feedback
    if fb:
        groups = list(fb.pairs)
        lines += [
            "",
            "Agreement with tonight's preference pairs (share ranked as labelled, ties count half):",
            "",
            "| weights | " + " | ".join(f"{g} (n={fb.pairs[g]})" for g in groups) + " | min |",
            "|---" * (len(groups) + 2) + "|",
        ]
        rows = [("λ tonight", fb.mixed), ("λ latest", fb.previous)] + [(f"{p} alone", fb.single[p]) for p in names]
        lines += [
            f"| {label} | " + " | ".join(_num(a[g]) for g in groups) + f" | {_num(a['min'])} |"
            for label, a in rows
            if a
        ]
    else:
        lines += ["", "No preference feedback tonight: agreement not evaluated."]
    lines += [
        "",
        f"* Solver: {r.solver.method}, {warm.iterations} iterations warm-started from {warm.start} "
        f"(cold start: {warm.cold_iterations}); "
        f"initial gap {warm.initial_gap:.3g} vs {warm.cold_initial_gap:.3g} cold; "
        f"final gap {r.certificate.gap_nats:.3g} nats.",
        f"* Score table: {st.prompts} prompts, {st.rows} rows "
        f"({st.reused_prompts} prompts reused from earlier nights, "
        f"{st.scored_prompts} scored tonight) in {st.uri}.",
        f"* ESS per prompt: median {r.ess.median:.3g}, min {r.ess.min:.3g}, of {r.ess.samples_per_prompt} samples.",
        f"* Free riders: {', '.join(r.free_riders) or 'none'}. Timings (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in r.timings_s.items())
        + ".",
        "",
    ]
    return "\n".join(lines)
