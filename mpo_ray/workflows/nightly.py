"""Nightly reweighting over fresh feedback (docs/design.md §3 step 3).

    check tonight's prompts, feedback, models and the store              (bad input: UserError, nothing written)
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
import logging
import time

import numpy as np
import pyarrow as pa

from mpo_ray.config import NIGHT_ID, Config
from mpo_ray.core.errors import UserError
from mpo_ray.core.gate import evaluate_feedback, gate_checks
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsArtifact
from mpo_ray.io.corpus import read_prompts
from mpo_ray.io.feedback import Feedback, read_feedback
from mpo_ray.io.provenance import digest
from mpo_ray.io.store import ScoreCache, StoreConflict, WeightsStore
from mpo_ray.models.preflight import check_models, check_prompt_lengths
from mpo_ray.runtime.actors import gather_arrays
from mpo_ray.workflows.pipeline import Batch, plan_batches, run_pipeline, score_fingerprint
from mpo_ray.workflows.reports import night_report
from mpo_ray.workflows.solve import build_artifact, ci_width, solve_scores, uncertainty

log = logging.getLogger(__name__)

EXIT_PROMOTED, EXIT_USER_ERROR, EXIT_KEPT, EXIT_CONFLICT = 0, 2, 3, 4
__all__ = ["run_night", "plan_night", "gate_checks", "evaluate_feedback", "NightResult", "StoreConflict"]


@dataclasses.dataclass
class NightPlan:
    config: Config
    night: str
    store: WeightsStore
    prompts_uri: str
    ids: list[str]
    prompts: list[str]
    fingerprint: str  # of the score rows: models, sampling, seed, reward sources
    feedback: Feedback | None
    inputs: dict  # everything tonight's weights depend on; a rerun must match it


@dataclasses.dataclass
class NightResult:
    night: str
    passed: bool
    rerun: bool  # the night was already in the store: nothing was computed or written
    latest: str | None  # `latest` after this run
    artifact: WeightsArtifact
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


def plan_night(config: Config) -> NightPlan:
    """Read and check every input (cheapest first); UserError on anything wrong, before any model loads or file is written."""
    nc = config.section("nightly")
    night = nc.night or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if not NIGHT_ID.match(night):
        raise UserError(f"night id {night!r} must be a date such as 2025-06-01 (letters, digits, '.', '_', '-'); it names the version.")
    feedback_uri = (nc.feedback or "").replace("{night}", night) or None
    fb = read_feedback(feedback_uri, config.policy_names) if feedback_uri else None
    prompts_uri = nc.prompts.replace("{night}", night)
    ids, prompts = read_prompts(prompts_uri, prompt_column=nc.prompt_column, id_column=nc.id_column, limit=nc.max_prompts)
    check_prompt_lengths(check_models(config), ids, prompts, nc.sampling.max_new_tokens, prompts_uri)
    st = WeightsStore(nc.store)
    st.check_ours()
    storage.check_writable(st.uri)
    latest = st.read_version(st.latest_version()) if st.latest_version() else None
    if latest is not None and sorted(latest.policies) != sorted(config.policy_names):
        raise UserError(f"weights store {st.uri!r} holds weights for policies {latest.policies}, but "
                        f"{config.source} has {config.policy_names}; a new mixture needs a new `nightly.store`.")
    fingerprint = score_fingerprint(config, nc.sampling, nc.seed)
    inputs = {"prompts": digest([ids, prompts]), "num_prompts": len(ids), "feedback": fb.digest if fb else None,
              "score_table": fingerprint, "estimate": nc.estimate,
              "solver": nc.solver.model_dump(), "gate": nc.gate.model_dump()}
    return NightPlan(config, night, st, prompts_uri, ids, prompts, fingerprint, fb, inputs)


# --------------------------------------------------------------------------- #
# The workflow
# --------------------------------------------------------------------------- #


def run_night(config: Config, *, progress: bool = True) -> NightResult:
    """One night: new weights into the store as a version, promoted to `latest` only if the gate passes."""
    plan = plan_night(config)
    st, nc, names = plan.store, config.nightly, config.policy_names
    owner = f"nightly {plan.night}"
    done = st.read_version(plan.night)
    if done is not None:
        return _replay(plan, done)
    recovered = st.recover(owner=owner, timeout_s=nc.lock_timeout_s)
    if recovered:
        log.info("nightly: finished promoting %s, which an interrupted run had written", recovered)
    base = st.latest_version()
    old = np.array(st.read_version(base).weights_for(names, config.source)) if base is not None else None

    st.claim()
    cache = ScoreCache(st, plan.fingerprint)
    t0 = time.perf_counter()
    cached, hits = cache.lookup(plan.ids, plan.prompts)
    lookup_s = time.perf_counter() - t0
    todo = [(i, p) for i, p in zip(plan.ids, plan.prompts) if i not in hits]
    log.info("nightly %s: %d prompts (%d already scored, %d new), %d feedback pairs", plan.night, len(plan.ids), len(hits),
             len(todo), len(plan.feedback) if plan.feedback else 0)
    batches = [Batch(cache.uri, sorted(hits), [], rows=cached)] if cached is not None else []
    if todo:
        todo_ids, todo_prompts = map(list, zip(*todo))
        batches += plan_batches(cache.uri, todo_ids, todo_prompts, nc.batch_prompts, plan.fingerprint, prefix=f"part-{plan.night}")
    score_feedback = (lambda groups: _score_feedback(config, groups, plan.feedback)) if plan.feedback else None
    run = run_pipeline(config, batches, sampling=nc.sampling, seed=nc.seed, rewards=True,
                       metadata={"fingerprint": plan.fingerprint, "night": plan.night},
                       with_models=score_feedback, progress=progress)
    run.timings.io += lookup_s

    t0 = time.perf_counter()
    arrays, estimates = solve_scores(config, run.table, nc.solver, seed=nc.seed, init=None if old is None else old / old.sum())
    cold = solve_scores(config, run.table, nc.solver, seed=nc.seed)[1][nc.estimate] if old is not None else estimates[nc.estimate]
    chosen = estimates[nc.estimate]
    margins = run.extra
    evaluation = evaluate_feedback(margins, plan.feedback.groups, names, chosen.weights, old) if plan.feedback else None
    spread = uncertainty(config, arrays, nc.estimate, resamples=nc.bootstrap_resamples, seed=nc.seed)
    run.timings.solver += time.perf_counter() - t0
    checks = gate_checks(nc.gate, chosen.weights, chosen.gap, float(np.median(chosen.ess)), old, evaluation,
                         ci_width=ci_width(spread))
    artifact = build_artifact(
        config, version=plan.night, estimate=nc.estimate, estimates=estimates, sampling=nc.sampling, solver=nc.solver,
        seed=nc.seed, min_median_ess=nc.gate.min_median_ess, spread=spread,
        score_table={"uri": cache.uri, "rows": run.table.num_rows, "prompts": len(plan.ids), "reused_prompts": len(hits),
                     "scored_prompts": len(todo), "fingerprint": plan.fingerprint},
        timings=run.timings.as_dict(), placement=run.placement,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        nightly={
            "night": plan.night, "store": st.uri, "previous": base, "previous_weights": None if old is None else old.tolist(),
            "prompts_uri": plan.prompts_uri, "feedback_uri": plan.feedback.uri if plan.feedback else None,
            "inputs": plan.inputs,
            "warm_start": {"from": base, "iterations": chosen.iterations, "cold_iterations": cold.iterations,
                           "initial_gap": float(chosen.history.gap[0]), "cold_initial_gap": float(cold.history.gap[0])},
            "feedback": evaluation,
            "gate": {"passed": all(c["passed"] for c in checks), "failed": [c["check"] for c in checks if not c["passed"]],
                     "checks": checks},
        })
    files = {"report.md": night_report(artifact)}
    if plan.feedback:
        files["feedback.parquet"] = _feedback_table(plan.feedback, margins, names)

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


def _replay(plan: NightPlan, artifact: WeightsArtifact) -> NightResult:
    """A night already committed: the same inputs report its outcome (finishing its promotion if a crash cut it); others are refused."""
    recorded = artifact.get("nightly", {}).get("inputs", {})
    changed = sorted(k for k, v in plan.inputs.items() if recorded.get(k) != v)
    if changed:
        raise UserError(f"night {plan.night} is already in {plan.store.uri} as version {plan.night}, made from other "
                        f"inputs (changed: {changed}); versions are never overwritten. Run it under another night id, "
                        f"e.g. --night {plan.night}.2.")
    recovered = plan.store.recover(owner=f"nightly {plan.night}", timeout_s=plan.config.nightly.lock_timeout_s, version=plan.night)
    return NightResult(plan.night, bool(artifact["nightly"]["gate"]["passed"]), True, plan.store.latest_version(), artifact,
                       recovered=recovered == plan.night)


def _score_feedback(config: Config, groups: dict, fb: Feedback) -> np.ndarray:
    """``margins[n, k] = ℓ_k(x, chosen) − ℓ_k(x, rejected)``: responses tokenized by the (shared) reference tokenizer, EOS-terminated."""
    from transformers import AutoTokenizer

    from mpo_ray.models.policies import resolve_model

    ref = config.reference
    tok = AutoTokenizer.from_pretrained(resolve_model(ref.model), revision=ref.revision, trust_remote_code=ref.trust_remote_code)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    token_ids = [ids + eos for ids in tok(fb.chosen + fb.rejected, add_special_tokens=False)["input_ids"]]
    models = [ref.name, *config.policy_names]
    refs = {n: groups[n].submit("score", fb.prompts * 2, token_ids) for n in models}
    logp = {n: gather_arrays(r) for n, r in refs.items()}
    ell = np.stack([logp[p] - logp[ref.name] for p in config.policy_names], axis=1)
    return ell[: len(fb)] - ell[len(fb) :]


def _feedback_table(fb: Feedback, margins: np.ndarray, names: list[str]) -> pa.Table:
    """The pairs with each policy's margin ℓ_k(chosen) − ℓ_k(rejected): agreement under any λ can be recomputed."""
    columns = {"prompt": fb.prompts, "chosen": fb.chosen, "rejected": fb.rejected, "group": fb.groups}
    return pa.table({**columns, **{f"margin_{n}": margins[:, k] for k, n in enumerate(names)}})
