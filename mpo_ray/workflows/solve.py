"""From a score table to a weights artifact: the configured solve, and the record that makes λ trustworthy.

`reweight` and `nightly` share it, so both write the same record (io/artifact.py, docs/design.md §4):
λ, its certificate, the effective sample size, both estimates, the models it was
computed from, and how long each stage took.
"""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np
import pyarrow as pa

from mpo_ray import __version__
from mpo_ray.config import Config, ScoringSection
from mpo_ray.config.schema import DEFAULT_CANDIDATES
from mpo_ray.core.estimator import ScoreArrays, bootstrap_weights, estimate_tables, score_arrays, solve_table
from mpo_ray.core.serving import serving
from mpo_ray.core.solver import WeightsResult, evaluate_weights
from mpo_ray.io.artifact import (
    Certificate,
    Ess,
    IntervalMethod,
    ModelIdentity,
    Models,
    NightRecord,
    ScoreTable,
    Serving,
    SolverRecord,
    StreamingBsmd,
    WeightsRecord,
)
from mpo_ray.workflows.pipeline import ScoreRun, model_identities, reward_columns_by_objective


@dataclasses.dataclass(frozen=True)
class Spread:
    """How far to trust λ̂ (:func:`uncertainty`): the median ESS at uniform λ, and λ's bootstrap intervals (None
    without resamples)."""

    ess_median_at_uniform: float
    weights_ci: dict[str, tuple[float, float]] | None = None
    weights_ci_method: IntervalMethod | None = None

    @property
    def ci_width(self) -> float | None:
        """The widest λ_k interval (None without intervals)."""
        return max(hi - lo for lo, hi in self.weights_ci.values()) if self.weights_ci else None


@dataclasses.dataclass(frozen=True)
class Solution:
    """The solves of a score table: every estimate, the configured one (``chosen``) and how far to trust it."""

    arrays: ScoreArrays
    estimates: dict[str, WeightsResult]
    estimate: str
    spread: Spread

    @property
    def chosen(self) -> WeightsResult:
        return self.estimates[self.estimate]


def solve_scores(config: Config, table: pa.Table, section: ScoringSection, *, init=None) -> tuple[ScoreArrays, dict]:
    """(arrays, estimates by name) for the whole table; the reward-normalised estimate when every policy has
    a reward."""
    arrays = score_arrays(table, config.policy_names, reward_columns_by_objective(config))
    s = section.solver
    estimates = solve_table(
        arrays,
        beta=config.beta,
        method=s.method,
        tol=s.tol,
        steps=s.steps,
        step_size=s.step_size,
        batch_prompts=s.batch_prompts,
        seed=section.seed,
        init=init,
    )
    return arrays, estimates


def solve(config: Config, table: pa.Table, section: ScoringSection, *, init=None) -> Solution:
    """The section's solve of ``table`` (warm-started at ``init``), with λ's bootstrap interval and ESS at uniform λ."""
    arrays, estimates = solve_scores(config, table, section, init=init)
    spread = uncertainty(config, arrays, section.estimate, resamples=section.bootstrap_resamples, seed=section.seed)
    return Solution(arrays, estimates, section.estimate, spread)


def uncertainty(config: Config, arrays: ScoreArrays, estimate: str, *, resamples: int, seed: int) -> Spread:
    """How far to trust λ̂: its 90% bootstrap interval over prompts, and the median ESS at uniform λ.

    The ESS at λ̂ alone can be fooled: it looks healthy exactly when λ̂ drifted to where the samples
    happen to be. The ESS at uniform λ does not depend on the estimate.
    """
    L, mask, log_imp = estimate_tables(arrays, config.beta)[estimate], arrays.mask, arrays.log_importance
    k = L.shape[2]
    at_uniform = evaluate_weights(L, np.full(k, 1.0 / k), mask=mask, log_importance=log_imp).ess
    if not resamples:
        return Spread(float(np.median(at_uniform)))
    boot, names = bootstrap_weights(L, mask, log_imp, resamples=resamples, seed=seed), config.policy_names
    return Spread(
        float(np.median(at_uniform)),
        {n: (float(lo), float(hi)) for n, lo, hi in zip(names, boot["lower"], boot["upper"])},
        IntervalMethod(
            level=float(boot["level"]), resamples=resamples, unit="prompt", std=dict(zip(names, boot["std"].tolist()))
        ),
    )


def build_artifact(
    config: Config,
    section: ScoringSection,
    solution: Solution,
    run: ScoreRun,
    *,
    version: str,
    score_table: ScoreTable,
    created: datetime.datetime | None = None,
    streaming_bsmd: StreamingBsmd | None = None,
    nightly: NightRecord | None = None,
) -> WeightsRecord:
    """The weights record of the section's chosen solve, made at ``created`` (default: now)."""
    chosen, spread, sampling = solution.chosen, solution.spread, section.sampling
    names, ess, identities = config.policy_names, chosen.ess, model_identities(config)
    worst_ess = min(float(np.median(ess)), spread.ess_median_at_uniform)
    return WeightsRecord(
        version=version,
        policies=names,
        weights=chosen.weights.tolist(),
        beta=config.beta,
        estimate=solution.estimate,
        solver=SolverRecord(**section.solver.model_dump(), iterations=chosen.iterations, converged=chosen.converged),
        certificate=Certificate(gap_nats=chosen.gap, gap_reward_units=chosen.gap * config.beta),
        values=dict(zip(names, chosen.values.tolist())),
        dual=chosen.dual,
        maxmin_value=chosen.maxmin_value,
        free_riders=[names[k] for k in chosen.free_riders],
        weights_ci=spread.weights_ci,
        weights_ci_method=spread.weights_ci_method,
        ess=Ess(
            min=float(ess.min()),
            median=float(np.median(ess)),
            mean=float(ess.mean()),
            median_at_uniform=spread.ess_median_at_uniform,
            samples_per_prompt=sampling.samples_per_prompt,
            low=bool(worst_ess < section.ess_floor),
        ),
        estimates={name: r.to_dict() for name, r in solution.estimates.items()},
        score_table=score_table,
        sampling=sampling.model_dump(),
        models=Models(reference=ModelIdentity(**identities[0]), policies=[ModelIdentity(**i) for i in identities[1:]]),
        rewards=[r.model_dump() for r in config.rewards],
        timings_s=run.timings.as_dict(),
        placement=run.placement,
        created_at=(created or datetime.datetime.now(datetime.timezone.utc)).isoformat(),
        library_version=__version__,
        seed=section.seed,
        serving=Serving(
            **serving(DEFAULT_CANDIDATES),
            note="λ is solved for the sequence-level π_λ; generate serves it by resampling among "
            f"generate.num_candidates (default {DEFAULT_CANDIDATES} when sampling) token-level candidates, nearer π_λ "
            "as n grows (mpo-ray bench serving measures the gap)",
        ),
        streaming_bsmd=streaming_bsmd,
        nightly=nightly,
    )
