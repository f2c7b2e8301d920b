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
from mpo_ray.io.artifact import Gate, NightRecord, ScoreTable, WarmStart, WeightsRecord
from mpo_ray.io.feedback import Feedback, read_feedback
from mpo_ray.io.provenance import digest
from mpo_ray.io.store import ScoreCache, StoreConflict, WeightsStore
from mpo_ray.runtime.groups import ModelGroups
from mpo_ray.workflows.pipeline import Batch, ScoringInputs, plan_batches, prepare_scoring, run_pipeline
from mpo_ray.workflows.reports import night_report
from mpo_ray.workflows.solve import build_artifact, solve, solve_scores

log = logging.getLogger(__name__)

EXIT_PROMOTED, EXIT_KEPT, EXIT_CONFLICT = 0, 3, 4  # bad input (2) is the CLI's, for every workflow
__all__ = ["run_night", "plan_night", "gate_checks", "evaluate_feedback", "NightResult", "StoreConflict"]


@dataclasses.dataclass
class NightPlan:
    config: Config
    night: str
    store: WeightsStore
    scoring: ScoringInputs  # tonight's prompts and the fingerprint of their rows (models, sampling, seed, rewards)
    feedback: Feedback | None
    inputs: dict  # everything tonight's weights depend on; a rerun must match it


@dataclasses.dataclass
class NightResult:
    night: str
    passed: bool
    rerun: bool  # the night was already in the store: nothing was computed or written
    latest: str | None  # `latest` after this run
    artifact: WeightsRecord
    recovered: bool = False  # this run moved `latest` to a version an interrupted run had committed

    @property
    def exit_code(self) -> int:
        return EXIT_PROMOTED if self.passed else EXIT_KEPT

    def summary(self) -> str:
        night = self.artifact.nightly
        what = "promoted" if self.passed else f"kept {night.previous} (failed: {', '.join(night.failed)})"
        again = (
            " (already done: finished its interrupted promotion)"
            if self.recovered
            else (" (already done: nothing changed)" if self.rerun else "")
        )
        return f"night {self.night}: {what}{again}; latest = {self.latest}"


# --------------------------------------------------------------------------- #
# Before anything runs
# --------------------------------------------------------------------------- #


def plan_night(config: Config) -> NightPlan:
    """Read and check every input (cheapest first); UserError on anything wrong, before any model loads or
    file is written."""
    nc = config.section("nightly")
    night = nc.night or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if not NIGHT_ID.match(night):
        raise UserError(
            f"night id {night!r} must be a date such as 2025-06-01 (letters, digits, '.', '_', '-'); "
            "it names the version."
        )
    feedback_uri = (nc.feedback or "").replace("{night}", night) or None
    fb = read_feedback(feedback_uri, config.policy_names) if feedback_uri else None
    scoring = prepare_scoring(config, nc, nc.prompts.replace("{night}", night))
    st = WeightsStore(nc.store)
    st.check_ours()
    storage.check_writable(st.uri)
    latest = st.read_version(st.latest_version()) if st.latest_version() else None
    if latest is not None and sorted(latest.policies) != sorted(config.policy_names):
        raise UserError(
            f"weights store {st.uri!r} holds weights for policies {latest.policies}, but "
            f"{config.source} has {config.policy_names}; a new mixture needs a new `nightly.store`."
        )
    inputs = {
        "prompts": digest([scoring.ids, scoring.prompts]),
        "num_prompts": len(scoring.ids),
        "feedback": fb.digest if fb else None,
        "score_table": scoring.fingerprint,
        "estimate": nc.estimate,
        "solver": nc.solver.model_dump(),
        "gate": nc.gate.model_dump(),
    }
    return NightPlan(config, night, st, scoring, fb, inputs)


# --------------------------------------------------------------------------- #
# The workflow
# --------------------------------------------------------------------------- #


def run_night(config: Config, *, progress: bool = True) -> NightResult:
    """One night: new weights into the store as a version, promoted to `latest` only if the gate passes."""
    plan = plan_night(config)
    st, nc, names = plan.store, config.nightly, config.policy_names
    done = st.read_version(plan.night)
    if done is not None:
        return _replay(plan, done)
    recovered = st.recover(owner=f"nightly {plan.night}", timeout_s=nc.lock_timeout_s)
    if recovered:
        log.info("nightly: finished promoting %s, which an interrupted run had written", recovered)
    base = st.latest_version()
    old = np.array(st.read_version(base).weights_for(names, config.source)) if base is not None else None

    st.claim()
    batches, cached, lookup_s = _batches(plan)
    with ModelGroups(config, mixture=nc.sampling.proposal == "geometric", progress=progress) as models:
        run = run_pipeline(
            models,
            nc,
            batches,
            metadata={"fingerprint": plan.scoring.fingerprint, "night": plan.night},
            progress=progress,
        )
        margins = _score_feedback(models, plan.feedback) if plan.feedback else None
    run.timings.io += lookup_s

    with run.timings.stage("solver"):
        solution = solve(config, run.table, nc, init=None if old is None else old / old.sum())
        chosen = solution.chosen
        cold = solve_scores(config, run.table, nc)[1][nc.estimate] if old is not None else chosen
        evaluation = (
            evaluate_feedback(margins, plan.feedback.groups, names, chosen.weights, old) if plan.feedback else None
        )
    checks = gate_checks(
        nc.gate,
        chosen.weights,
        chosen.gap,
        float(np.median(chosen.ess)),
        old,
        evaluation,
        ci_width=solution.spread.ci_width,
    )
    fb = plan.feedback
    artifact = build_artifact(
        config,
        nc,
        solution,
        run,
        version=plan.night,
        score_table=ScoreTable(
            **cached, rows=run.table.num_rows, prompts=len(plan.scoring.ids), fingerprint=plan.scoring.fingerprint
        ),
        nightly=NightRecord(
            night=plan.night,
            store=st.uri,
            previous=base,
            previous_weights=None if old is None else old.tolist(),
            prompts_uri=plan.scoring.prompts_uri,
            feedback_uri=fb.uri if fb else None,
            inputs=plan.inputs,
            warm_start=WarmStart(
                start=base,
                iterations=chosen.iterations,
                cold_iterations=cold.iterations,
                initial_gap=float(chosen.history.gap[0]),
                cold_initial_gap=float(cold.history.gap[0]),
            ),
            feedback=evaluation,
            gate=Gate(
                passed=all(c.passed for c in checks), failed=[c.check for c in checks if not c.passed], checks=checks
            ),
        ),
    )
    files = {"report.md": night_report(artifact)}
    if plan.feedback:
        files["feedback.parquet"] = _feedback_table(plan.feedback, margins, names)
    return _commit(plan, artifact, files, base)


def _commit(plan: NightPlan, artifact: WeightsRecord, files: dict, base: str | None) -> NightResult:
    """Under the store lock: write the version, and move `latest` only if the gate passed and `latest` is still
    ``base``; a concurrent run of this night that committed first wins (its outcome is replayed outside the lock)."""
    st, passed = plan.store, artifact.nightly.passed
    with st.lock(owner=f"nightly {plan.night}", timeout_s=plan.config.nightly.lock_timeout_s):
        done = st.read_version(plan.night)
        if done is None:
            if st.latest_version() != base:
                raise StoreConflict(
                    f"{st.uri}: `latest` moved from {base!r} to {st.latest_version()!r} while night "
                    f"{plan.night} ran; nothing was written. Rerun to gate against the new `latest`."
                )
            st.write_version(plan.night, artifact, files)
            if passed:
                st.promote(plan.night, expected=base)
    if done is not None:
        return _replay(plan, done)
    return NightResult(plan.night, passed, False, st.latest_version(), artifact)


def _replay(plan: NightPlan, artifact: WeightsRecord) -> NightResult:
    """A night already committed: the same inputs report its outcome (finishing its promotion if a crash
    cut it); others are refused."""
    recorded = artifact.nightly.inputs if artifact.nightly else {}
    changed = sorted(k for k, v in plan.inputs.items() if recorded.get(k) != v)
    if changed:
        raise UserError(
            f"night {plan.night} is already in {plan.store.uri} as version {plan.night}, made from other "
            f"inputs (changed: {changed}); versions are never overwritten. Run it under another night id, "
            f"e.g. --night {plan.night}.2."
        )
    recovered = plan.store.recover(
        owner=f"nightly {plan.night}", timeout_s=plan.config.nightly.lock_timeout_s, version=plan.night
    )
    return NightResult(
        plan.night,
        bool(artifact.nightly and artifact.nightly.passed),
        True,
        plan.store.latest_version(),
        artifact,
        recovered=recovered == plan.night,
    )


def _batches(plan: NightPlan) -> tuple[list[Batch], dict, float]:
    """Tonight's batches: one of the rows the store's score cache holds, then the new prompts'; where the cache
    is and how many prompts it served; and how long the lookup took."""
    scoring, nc = plan.scoring, plan.config.nightly
    cache = ScoreCache(plan.store, scoring.fingerprint)
    t0 = time.perf_counter()
    cached, hits = cache.lookup(scoring.ids, scoring.prompts)
    lookup_s = time.perf_counter() - t0
    todo = [(i, p) for i, p in zip(scoring.ids, scoring.prompts) if i not in hits]
    log.info(
        "nightly %s: %d prompts (%d already scored, %d new), %d feedback pairs",
        plan.night,
        len(scoring.ids),
        len(hits),
        len(todo),
        len(plan.feedback) if plan.feedback else 0,
    )
    batches = [Batch(cache.uri, sorted(hits), [], rows=cached)] if cached is not None else []
    if todo:
        todo_ids, todo_prompts = map(list, zip(*todo))
        batches += plan_batches(
            cache.uri, todo_ids, todo_prompts, nc.batch_prompts, scoring.fingerprint, prefix=f"part-{plan.night}"
        )
    return batches, {"uri": cache.uri, "reused_prompts": len(hits), "scored_prompts": len(todo)}, lookup_s


def _score_feedback(models: ModelGroups, fb: Feedback) -> np.ndarray:
    """``margins[n, k] = ℓ_k(x, chosen) − ℓ_k(x, rejected)``: responses tokenized by the (shared) reference
    tokenizer, EOS-terminated."""
    from mpo_ray.models.policies import load_weightless

    config, ref = models.config, models.config.reference
    token_ids = load_weightless(ref, config.source).encode_responses(fb.chosen + fb.rejected)
    logp = models.log_probs(fb.prompts * 2, token_ids)
    ell = np.stack([logp[p] - logp[ref.name] for p in config.policy_names], axis=1)
    return ell[: len(fb)] - ell[len(fb) :]


def _feedback_table(fb: Feedback, margins: np.ndarray, names: list[str]) -> pa.Table:
    """The pairs with each policy's margin ℓ_k(chosen) − ℓ_k(rejected): agreement under any λ can be recomputed."""
    columns = {"prompt": fb.prompts, "chosen": fb.chosen, "rejected": fb.rejected, "group": fb.groups}
    return pa.table({**columns, **{f"margin_{n}": margins[:, k] for k, n in enumerate(names)}})
