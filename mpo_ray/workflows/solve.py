"""From a score table to a weights artifact: the configured solve, and the record that makes λ trustworthy.

`reweight` and `nightly` share it, so both write the same artifact (docs/design.md §4):
λ, its certificate, the effective sample size, both estimates, the models it was
computed from, and how long each stage took.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mpo_ray import __version__
from mpo_ray.config import Config, SamplingConfig, SolverConfig
from mpo_ray.core.estimator import score_arrays, solve_table
from mpo_ray.io.artifact import WeightsArtifact
from mpo_ray.workflows.pipeline import model_identities, reward_columns_by_objective


def solve_scores(config: Config, table: pa.Table, solver: SolverConfig, *, seed: int, init=None) -> tuple[dict, dict]:
    """(arrays, estimates by name) for the whole table; the reward-normalised estimate when every policy has a reward."""
    arrays = score_arrays(table, config.policy_names, reward_columns_by_objective(config))
    estimates = solve_table(arrays, beta=config.beta, method=solver.method, tol=solver.tol, steps=solver.steps,
                            step_size=solver.step_size, batch_prompts=solver.batch_prompts, seed=seed, init=init)
    return arrays, estimates


def build_artifact(config: Config, *, version: str, estimate: str, estimates: dict, sampling: SamplingConfig,
                   solver: SolverConfig, seed: int, min_median_ess: float, score_table: dict, timings: dict,
                   placement: dict, created_at: str, **extra) -> WeightsArtifact:
    """The weights artifact of the ``estimate`` solve; ``extra`` keys (e.g. ``streaming_bsmd``, ``nightly``) go last."""
    chosen = estimates[estimate]
    names, ess, identities = config.policy_names, chosen.ess, model_identities(config)
    return WeightsArtifact.build(
        version=version, policies=names, weights=chosen.weights.tolist(), beta=config.beta,
        estimate=estimate,
        solver={**solver.model_dump(), "iterations": chosen.iterations, "converged": chosen.converged},
        certificate={"gap_nats": chosen.gap, "gap_reward_units": chosen.gap * config.beta},
        values=dict(zip(names, chosen.values.tolist())),
        dual=chosen.dual, maxmin_value=chosen.maxmin_value,
        free_riders=[names[k] for k in chosen.free_riders],
        ess={"min": float(ess.min()), "median": float(np.median(ess)), "mean": float(ess.mean()),
             "samples_per_prompt": sampling.samples_per_prompt, "low": bool(np.median(ess) < min_median_ess)},
        estimates={name: r.to_dict() for name, r in estimates.items()},
        score_table=score_table,
        sampling=sampling.model_dump(),
        models={"reference": identities[0], "policies": identities[1:]},
        rewards=[r.model_dump() for r in config.rewards],
        timings_s=timings, placement=placement, created_at=created_at, library_version=__version__, seed=seed,
        **extra,
    )

