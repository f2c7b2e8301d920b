"""The reweighting workflow: prompts → score table → solver → weights.json + report.md.

    check everything (config, prompts, models, output) before any actor starts
    run the score pipeline over the prompts' batches (files already in scores/ are reused: a resume)
    full-batch solve over the whole table, beside the streaming BSMD average
    write weights.json (a WeightsArtifact) and report.md

Seeds derive from (run seed, prompt id, sample index), never from order, so a
rerun that resumes from a half-written table gives the same weights.
"""

from __future__ import annotations

import datetime
import logging
import time

import numpy as np

from mpo_ray.config import Config
from mpo_ray.core.errors import UserError
from mpo_ray.core.solver import StreamingBSMD, evaluate_weights
from mpo_ray.io import storage
from mpo_ray.io.artifact import WeightsArtifact
from mpo_ray.io.corpus import read_prompts
from mpo_ray.io.ownership import check_ours, mark_ours, remove_ours
from mpo_ray.io.provenance import digest
from mpo_ray.models.preflight import check_models, check_prompt_lengths
from mpo_ray.workflows.pipeline import plan_batches, run_pipeline, score_fingerprint
from mpo_ray.workflows.reports import reweight_report
from mpo_ray.workflows.solve import build_artifact, solve_scores, uncertainty

log = logging.getLogger(__name__)


def reweight(config: Config, *, progress: bool = True) -> WeightsArtifact:
    """Run the reweighting workflow into ``reweight.output``; returns the weights artifact (also written there)."""
    rw = config.section("reweight")
    output = rw.output
    if not output:
        raise UserError(f"{config.source}: no output location; set `reweight.output` or pass --output.")
    t_start = time.perf_counter()
    ids, prompts = read_prompts(rw.prompts, prompt_column=rw.prompt_column, id_column=rw.id_column, limit=rw.max_prompts)
    check_prompt_lengths(check_models(config), ids, prompts, rw.sampling.max_new_tokens, rw.prompts)
    check_ours(output, "reweight", subdirs=("scores",))
    storage.check_writable(output)
    fingerprint = score_fingerprint(config, rw.sampling, rw.seed)
    scores_dir = storage.join(output, "scores")
    stored = set(storage.list_files(scores_dir))
    batches = plan_batches(scores_dir, ids, prompts, rw.batch_prompts, fingerprint, stored=stored)
    stale = sorted(stored - {b.uri for b in batches})  # rows of other prompts, texts, models or settings
    resumed = sum(b.stored for b in batches)
    log.info("reweight: %d prompts × %d samples, K=%d policies, %d batches (%d already in %s)", len(ids),
             rw.sampling.samples_per_prompt, len(config.policies), len(batches), resumed, scores_dir)

    mark_ours(output, "reweight", score_fingerprint=fingerprint)
    for uri in stale:  # the table must hold exactly this run's rows: earlier runs' files go, anything else stays
        remove_ours(uri, output, why="scores of other prompts, texts, models or settings")
    stream = StreamingBSMD(len(config.policies), total_steps=len(ids), step_size=rw.solver.step_size) if rw.stream_bsmd else None
    run = run_pipeline(config, batches, sampling=rw.sampling, seed=rw.seed, metadata={"fingerprint": fingerprint},
                       stream=stream, progress=progress)

    t0 = time.perf_counter()
    arrays, estimates = solve_scores(config, run.table, rw.solver, seed=rw.seed)
    extra = {}
    if stream is not None:
        streamed = evaluate_weights(arrays["log_ratios"], stream.average, mask=arrays["mask"],
                                    log_importance=arrays["log_importance"])
        extra["streaming_bsmd"] = {"weights": streamed.weights.tolist(), "gap": streamed.gap}
    run.timings.solver += time.perf_counter() - t0
    created = datetime.datetime.now(datetime.timezone.utc)
    chosen = estimates[rw.estimate]
    artifact = build_artifact(
        config, version=f"{created:%Y%m%dT%H%M%SZ}-{digest([fingerprint, chosen.weights.tolist()], 8)}",
        estimate=rw.estimate, estimates=estimates, sampling=rw.sampling, solver=rw.solver, seed=rw.seed,
        min_median_ess=rw.min_median_ess,
        spread=uncertainty(config, arrays, rw.estimate, resamples=rw.bootstrap_resamples, seed=rw.seed),
        score_table={"uri": scores_dir, "rows": run.table.num_rows, "prompts": len(ids), "fingerprint": fingerprint},
        timings=run.timings.as_dict(), placement=run.placement, created_at=created.isoformat(), **extra)
    t0 = time.perf_counter()
    artifact.write(storage.join(output, "weights.json"))
    storage.write_text(storage.join(output, "report.md"), reweight_report(artifact, estimates))
    run.timings.io += time.perf_counter() - t0
    log.info("λ = %s, gap = %.2e nats; wrote %s in %.1fs", dict(zip(config.policy_names, np.round(chosen.weights, 4).tolist())),
             chosen.gap, storage.join(output, "weights.json"), time.perf_counter() - t_start)
    return artifact
