"""Nightly reweighting over fresh feedback (DESIGN.md §3 step 3).

    check tonight's prompts, feedback, models and the store              (bad input: ValueError, nothing written)
    a night already in the store: report its outcome, change nothing      (reruns are no-ops)
    finish a promotion that a crashed earlier run left half done
    score only the prompts the score cache lacks; score the feedback pairs (Ray actors)
    solve, warm-started from `latest` (a cold solve beside it, for the record)
    agreement with the feedback, per group: new λ, latest λ, each single policy
    gate: certificate gap, median ESS, agreement drop, λ drift
    under the store lock: write the version; move `latest` only if every check passed

The version id is the night id, so a night yields one version however often it
runs. Exit codes (`mpo-ray nightly`): 0 promoted (or a rerun of a promoted
night), 2 bad input or config, 3 gate failed and the old weights stay (or a
rerun of such a night), 4 another run holds the store or moved `latest`: retry.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time

import numpy as np
import pyarrow as pa

from mpo_ray import __version__
from mpo_ray.runtime.actors import gather_arrays
from mpo_ray.config import NIGHT_ID, Config, GateConfig, ReweightConfig
from mpo_ray.io.feedback import Feedback, agreement, read_feedback
from mpo_ray.workflows.reweight import (
    Plan, Timings, ensure_ray, log, sample_batch, score_batch, model_identity, plan_run,
    reward_columns_by_objective, score_arrays, solve_table, start_groups,
)
from mpo_ray.io.schemas import WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION
from mpo_ray.io.store import ScoreCache, StoreConflict, WeightsStore

EXIT_PROMOTED, EXIT_USER_ERROR, EXIT_KEPT, EXIT_CONFLICT = 0, 2, 3, 4
__all__ = ["run_night", "plan_night", "gate_checks", "evaluate_feedback", "NightResult", "StoreConflict"]


@dataclasses.dataclass
class NightPlan:
    config: Config  # with a `reweight` section made from `nightly`: reweight's batch functions read it
    night: str
    store: WeightsStore
    table: Plan  # tonight's prompt ids and texts, score-table schema and fingerprint
    feedback: Feedback | None
    inputs: dict  # everything tonight's weights depend on; a rerun must match it


@dataclasses.dataclass
class NightResult:
    night: str
    passed: bool
    rerun: bool  # the night was already in the store: nothing was computed or written
    latest: str | None  # `latest` after this run
    artifact: dict
    recovered: bool = False  # this run moved `latest` to a version an interrupted run had committed

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTED if self.passed else EXIT_KEPT

    def summary(self) -> str:
        gate = self.artifact["nightly"]["gate"]
        what = "promoted" if self.passed else f"kept {self.artifact['nightly']['previous']} (failed: {', '.join(gate['failed'])})"
        again = " (already done: finished its interrupted promotion)" if self.recovered else (
            " (already done: nothing changed)" if self.rerun else "")
        return f"night {self.night}: {what}{again}; latest = {self.latest}"


# --------------------------------------------------------------------------- #
# Before anything runs
# --------------------------------------------------------------------------- #


def plan_night(config: Config, *, night: str | None = None, prompts: str | None = None, feedback: str | None = None,
               store: str | None = None) -> NightPlan:
    """Read and check every input (cheapest first); ValueError on anything wrong, before any model loads or file is written."""
    nc = config.section("nightly")
    night = night or nc.night or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if not NIGHT_ID.match(night):
        raise ValueError(f"night id {night!r} must be a date such as 2025-06-01 (letters, digits, '.', '_', '-'); it names the version.")
    feedback_uri = (feedback or nc.feedback or "").replace("{night}", night) or None
    fb = read_feedback(feedback_uri, config.policy_names) if feedback_uri else None
    rw = ReweightConfig(prompts=(prompts or nc.prompts).replace("{night}", night), prompt_column=nc.prompt_column,
                        id_column=nc.id_column, max_prompts=nc.max_prompts, batch_prompts=nc.batch_prompts,
                        estimate=nc.estimate, min_median_ess=nc.gate.min_median_ess, seed=nc.seed,
                        sampling=nc.sampling, solver=nc.solver)
    config = dataclasses.replace(config, reweight=rw)
    st = WeightsStore(os.path.abspath(store) if store and "://" not in store else store or nc.store)
    table = plan_run(config, st.uri)  # prompts, models and vocabularies, a writable store
    pointer = st.latest()
    if pointer is not None:
        latest = st.read_version(pointer["version"]) or {}
        if sorted(latest.get("policies", [])) != sorted(config.policy_names):
            raise ValueError(f"weights store {st.uri!r} holds weights for policies {latest.get('policies')}, but "
                             f"{config.source} has {config.policy_names}; a new mixture needs a new `nightly.store`.")
    digest = hashlib.sha256(json.dumps([table.ids, table.prompts]).encode()).hexdigest()[:16]
    inputs = {"prompts": digest, "num_prompts": len(table.ids), "feedback": fb.digest if fb else None,
              "score_table": table.fingerprint, "estimate": nc.estimate,
              "solver": dataclasses.asdict(nc.solver), "gate": dataclasses.asdict(nc.gate)}
    return NightPlan(config, night, st, table, fb, inputs)


# --------------------------------------------------------------------------- #
# The workflow
# --------------------------------------------------------------------------- #


def run_night(config: Config, *, night: str | None = None, prompts: str | None = None, feedback: str | None = None,
              store: str | None = None, progress: bool = True) -> NightResult:
    """One night: new weights into the store as a version, promoted to `latest` only if the gate passes."""
    plan = plan_night(config, night=night, prompts=prompts, feedback=feedback, store=store)
    st, nc, names = plan.store, plan.config.nightly, plan.config.policy_names
    owner = f"nightly {plan.night}"
    done = st.read_version(plan.night)
    if done is not None:
        return _replay(plan, done)
    recovered = st.recover(owner=owner, timeout_s=nc.lock_timeout_s)
    if recovered:
        log(progress, f"nightly: finished promoting {recovered}, which an interrupted run had written")
    pointer = st.latest()
    base = pointer["version"] if pointer else None
    old = None
    if base is not None:
        latest = st.read_version(base)
        by_name = dict(zip(latest["policies"], latest["weights"]))
        old = np.array([by_name[n] for n in names], dtype=np.float64)

    timings = Timings()
    table, counts, fb_scores, placement = _score(plan, timings, progress)
    t0 = time.perf_counter()
    arrays = score_arrays(table, names, reward_columns_by_objective(plan.config))
    estimates = solve_table(plan.config, arrays, init=None if old is None else old / old.sum())
    cold = solve_table(plan.config, arrays)[nc.estimate] if old is not None else estimates[nc.estimate]
    chosen = estimates[nc.estimate]
    evaluation = evaluate_feedback(fb_scores["margins"], plan.feedback.groups, names, chosen.weights, old) if fb_scores else None
    timings.solver += time.perf_counter() - t0
    checks = gate_checks(nc.gate, chosen.weights, chosen.gap, float(np.median(chosen.ess)), old, evaluation)
    artifact = _artifact(plan, estimates, cold, old, base, evaluation, checks, table.num_rows, counts, timings, placement)
    files = {"report.md": night_report(artifact)}
    if fb_scores:
        files["feedback.parquet"] = _feedback_table(plan.feedback, fb_scores["margins"], names)

    passed = artifact["nightly"]["gate"]["passed"]
    with st.lock(owner=owner, timeout_s=nc.lock_timeout_s):
        done = st.read_version(plan.night)
        if done is None:
            if st.latest_version() != base:
                raise StoreConflict(f"{st.uri}: `latest` moved from {base!r} to {st.latest_version()!r} while night "
                                    f"{plan.night} ran; nothing was written. Rerun to gate against the new `latest`.")
            st.write_version(plan.night, artifact, files)
            if passed:
                st.promote(plan.night, expected=base)
    if done is not None:  # a concurrent run of this night committed first: its outcome stands (replayed outside the lock)
        return _replay(plan, done)
    return NightResult(plan.night, passed, False, st.latest_version(), artifact)


def _replay(plan: NightPlan, artifact: dict) -> NightResult:
    """A night already committed: the same inputs report its outcome (finishing its promotion if a crash cut it); others are refused."""
    recorded = artifact.get("nightly", {}).get("inputs", {})
    changed = sorted(k for k, v in plan.inputs.items() if recorded.get(k) != v)
    if changed:
        raise ValueError(f"night {plan.night} is already in {plan.store.uri} as version {plan.night}, made from other "
                         f"inputs (changed: {changed}); versions are never overwritten. Run it under another night id, "
                         f"e.g. --night {plan.night}.2.")
    recovered = plan.store.recover(owner=f"nightly {plan.night}", timeout_s=plan.config.nightly.lock_timeout_s, version=plan.night)
    return NightResult(plan.night, bool(artifact["nightly"]["gate"]["passed"]), True, plan.store.latest_version(), artifact,
                       recovered=recovered == plan.night)


def _score(plan: NightPlan, timings: Timings, progress: bool):
    """Score-table rows for tonight's prompts (cached ones reused, the rest scored and cached) and the feedback's log-ratios."""
    config, night = plan.config, plan.night
    cache = ScoreCache(plan.store, plan.table.fingerprint)
    t0 = time.perf_counter()
    cached, hits = cache.lookup(plan.table.ids, plan.table.prompts)
    timings.io += time.perf_counter() - t0
    todo = [(i, p) for i, p in zip(plan.table.ids, plan.table.prompts) if i not in hits]
    counts = {"reused": len(hits), "scored": len(todo)}
    log(progress, f"nightly {night}: {len(plan.table.ids)} prompts ({len(hits)} already scored, {len(todo)} new), "
                   f"{len(plan.feedback) if plan.feedback else 0} feedback pairs")
    parts, fb_scores, placement = ([cached] if cached is not None else []), None, {}
    if todo or plan.feedback is not None:
        owns_ray, groups, rewards = ensure_ray(), {}, {}
        try:
            t0 = time.perf_counter()
            groups, rewards = start_groups(config if todo else dataclasses.replace(config, rewards=[]))  # feedback needs no rewards
            placement = {n: g.info(config.resources.startup_timeout_s) for n, g in {**groups, **rewards}.items()}
            timings.startup = time.perf_counter() - t0
            step = config.reweight.batch_prompts
            for b, start in enumerate(range(0, len(todo), step)):
                ids, prompts = map(list, zip(*todo[start : start + step]))
                rows, sample_counts = sample_batch(config, groups, ids, prompts, timings)
                table = score_batch(config, plan.table, groups, rewards, rows, sample_counts, timings)
                t0 = time.perf_counter()
                digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
                cache.add(f"part-{night}-{b:05d}-{digest}.parquet", table.replace_schema_metadata({"mpo_ray": json.dumps(
                    {"fingerprint": plan.table.fingerprint, "version": __version__, "night": night})}))
                timings.io += time.perf_counter() - t0
                parts.append(table.replace_schema_metadata(None))
            if plan.feedback is not None:
                fb_scores = _score_feedback(config, groups, plan.feedback, timings)
        finally:
            for g in {**groups, **rewards}.values():
                g.kill()
            if owns_ray:
                import ray

                ray.shutdown()
    return pa.concat_tables([p.cast(plan.table.schema) for p in parts]), counts, fb_scores, placement


def _score_feedback(config: Config, groups: dict, fb: Feedback, timings: Timings) -> dict:
    """``margins[n, k] = ℓ_k(x, chosen) − ℓ_k(x, rejected)``: responses tokenized by the (shared) reference tokenizer, EOS-terminated."""
    from transformers import AutoTokenizer

    from mpo_ray.models.policies import resolve_model

    ref = config.reference
    tok = AutoTokenizer.from_pretrained(resolve_model(ref.model), revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    token_ids = [ids + eos for ids in tok(fb.chosen + fb.rejected, add_special_tokens=False)["input_ids"]]
    t0 = time.perf_counter()
    models = [ref.name, *config.policy_names]
    refs = {n: groups[n].submit("score", fb.prompts * 2, token_ids) for n in models}
    logp = {n: gather_arrays(r) for n, r in refs.items()}
    timings.scoring += time.perf_counter() - t0
    ell = np.stack([logp[p] - logp[ref.name] for p in config.policy_names], axis=1)
    return {"margins": ell[: len(fb)] - ell[len(fb) :]}


# --------------------------------------------------------------------------- #
# Evaluation and the gate (pure)
# --------------------------------------------------------------------------- #


def evaluate_feedback(margins: np.ndarray, groups: list[str], names: list[str], weights, previous=None) -> dict:
    """Agreement per group (and the minimum) of the new λ, the previous λ and each single policy."""
    out = {"pairs": {g: groups.count(g) for g in dict.fromkeys(groups)}, "mixed": agreement(margins, groups, weights)}
    out["previous"] = agreement(margins, groups, previous) if previous is not None else None
    out["single"] = {name: agreement(margins, groups, np.eye(len(names))[k]) for k, name in enumerate(names)}
    return out


def gate_checks(gate: GateConfig, weights, gap: float, median_ess: float, previous=None, evaluation: dict | None = None) -> list[dict]:
    """Every promotion check with its value, limit and verdict; the first night (no previous λ) skips the comparisons."""

    def check(name, passed, value, limit, detail):
        return {"check": name, "passed": bool(passed), "value": value, "limit": limit, "detail": detail}

    checks = [
        check("gap", gap <= gate.max_gap, gap, f"<= {gate.max_gap:g}", "certificate gap of the new λ (nats)"),
        check("ess", median_ess >= gate.min_median_ess, median_ess, f">= {gate.min_median_ess:g}", "median effective sample size"),
    ]
    if evaluation is None:
        checks.append(check("agreement", True, None, f"drop <= {gate.max_agreement_drop:g}", "no feedback tonight: not checked"))
    elif previous is None:
        checks.append(check("agreement", True, evaluation["mixed"]["min"], f"drop <= {gate.max_agreement_drop:g}",
                            "min-group agreement; no previous weights to compare with"))
    else:
        new, old = evaluation["mixed"]["min"], evaluation["previous"]["min"]
        checks.append(check("agreement", old - new <= gate.max_agreement_drop + 1e-12, new, f">= {old:.3g} − {gate.max_agreement_drop:g}",
                            f"min-group agreement on tonight's pairs: new λ {new:.3g}, latest λ {old:.3g}"))
    if previous is None:
        checks.append(check("drift", True, None, f"<= {gate.max_drift:g}", "no previous weights (first night)"))
    else:
        drift = 0.5 * float(np.abs(np.asarray(weights) - np.asarray(previous)).sum())
        checks.append(check("drift", drift <= gate.max_drift, drift, f"<= {gate.max_drift:g}", "total variation ½‖λ − λ_latest‖₁"))
    return checks


# --------------------------------------------------------------------------- #
# What a night leaves behind
# --------------------------------------------------------------------------- #


def _artifact(plan, estimates, cold, old, base, evaluation, checks, rows, counts, timings, placement) -> dict:
    config, nc = plan.config, plan.config.nightly
    chosen, ess = estimates[nc.estimate], estimates[nc.estimate].ess
    return {
        "format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION, "version": plan.night,
        "policies": config.policy_names, "weights": chosen.weights.tolist(), "beta": config.beta,
        "objective": "maxmin", "estimate": nc.estimate,
        "solver": {**dataclasses.asdict(nc.solver), "iterations": chosen.iterations, "converged": chosen.converged},
        "certificate": {"gap_nats": chosen.gap, "gap_reward_units": chosen.gap * config.beta},
        "values": dict(zip(config.policy_names, chosen.values.tolist())),
        "dual": chosen.dual, "maxmin_value": chosen.maxmin_value,
        "free_riders": [config.policy_names[k] for k in chosen.free_riders],
        "ess": {"min": float(ess.min()), "median": float(np.median(ess)), "mean": float(ess.mean()),
                "samples_per_prompt": nc.sampling.samples_per_prompt, "low": bool(np.median(ess) < nc.gate.min_median_ess)},
        "estimates": {name: r.to_dict() for name, r in estimates.items()},
        "score_table": {"uri": ScoreCache(plan.store, plan.table.fingerprint).uri, "rows": rows, "prompts": len(plan.table.ids),
                        "reused_prompts": counts["reused"], "scored_prompts": counts["scored"], "fingerprint": plan.table.fingerprint},
        "sampling": dataclasses.asdict(nc.sampling),
        "models": {"reference": model_identity(config.reference), "policies": [model_identity(p) for p in config.policies]},
        "rewards": [dataclasses.asdict(r) for r in config.rewards],
        "timings_s": timings.as_dict(), "placement": placement,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "library_version": __version__, "seed": nc.seed,
        "nightly": {
            "night": plan.night, "store": plan.store.uri, "previous": base, "previous_weights": None if old is None else old.tolist(),
            "prompts_uri": config.reweight.prompts, "feedback_uri": plan.feedback.uri if plan.feedback else None,
            "inputs": plan.inputs,
            "warm_start": {"from": base, "iterations": chosen.iterations, "cold_iterations": cold.iterations,
                           "initial_gap": float(chosen.history.gap[0]), "cold_initial_gap": float(cold.history.gap[0])},
            "feedback": evaluation,
            "gate": {"passed": all(c["passed"] for c in checks), "failed": [c["check"] for c in checks if not c["passed"]],
                     "checks": checks},
        },
    }


def _feedback_table(fb: Feedback, margins: np.ndarray, names: list[str]) -> pa.Table:
    """The pairs with each policy's margin ℓ_k(chosen) − ℓ_k(rejected): agreement under any λ can be recomputed."""
    columns = {"prompt": fb.prompts, "chosen": fb.chosen, "rejected": fb.rejected, "group": fb.groups}
    return pa.table({**columns, **{f"margin_{n}": margins[:, k] for k, n in enumerate(names)}})


def _num(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def night_report(a: dict) -> str:
    """Markdown beside the weights: the decision and every check first, then the numbers behind them."""
    n, names = a["nightly"], a["policies"]
    gate, warm, st = n["gate"], n["warm_start"], a["score_table"]
    verdict = "promoted to `latest`" if gate["passed"] else f"**not promoted**: `latest` stays {n['previous']} (failed: {', '.join(gate['failed'])})"
    lines = [f"# Night {n['night']}: {verdict}", "", f"Store: {n['store']}. Gated against `latest` = {n['previous']}.", "",
             "| check | passed | value | limit | what |", "|---|---|---|---|---|"]
    lines += [f"| {c['check']} | {'yes' if c['passed'] else '**NO**'} | {_num(c['value'])} | {c['limit']} | {c['detail']} |" for c in gate["checks"]]
    prev = n["previous_weights"]
    lines += ["", "| policy | λ tonight | λ latest | value (nats) |", "|---|---|---|---|"]
    lines += [f"| {p} | {a['weights'][k]:.4g} | {_num(prev[k] if prev else None)} | {a['values'][p]:.4g} |" for k, p in enumerate(names)]
    fb = n["feedback"]
    if fb:
        groups = list(fb["pairs"])
        lines += ["", "Agreement with tonight's preference pairs (share ranked as labelled, ties count half):", "",
                  "| weights | " + " | ".join(f"{g} (n={fb['pairs'][g]})" for g in groups) + " | min |", "|---" * (len(groups) + 2) + "|"]
        rows = [("λ tonight", fb["mixed"]), ("λ latest", fb["previous"])] + [(f"{p} alone", fb["single"][p]) for p in names]
        lines += [f"| {label} | " + " | ".join(_num(r[g]) for g in groups) + f" | {_num(r['min'])} |" for label, r in rows if r]
    else:
        lines += ["", "No preference feedback tonight: agreement not evaluated."]
    lines += [
        "",
        f"* Solver: {a['solver']['method']}, {warm['iterations']} iterations warm-started from {warm['from']} "
        f"(cold start: {warm['cold_iterations']}); initial gap {warm['initial_gap']:.3g} vs {warm['cold_initial_gap']:.3g} cold; "
        f"final gap {a['certificate']['gap_nats']:.3g} nats.",
        f"* Score table: {st['prompts']} prompts, {st['rows']} rows ({st['reused_prompts']} prompts reused from earlier nights, "
        f"{st['scored_prompts']} scored tonight) in {st['uri']}.",
        f"* ESS per prompt: median {a['ess']['median']:.3g}, min {a['ess']['min']:.3g}, of {a['ess']['samples_per_prompt']} samples.",
        f"* Free riders: {', '.join(a['free_riders']) or 'none'}. Timings (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in a["timings_s"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
