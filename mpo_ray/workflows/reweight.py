"""The reweighting workflow: prompts → score table → solver → weights.json + report.md.

    check everything (config, prompts, models, output) before any actor starts
    run the score pipeline over the prompts' batches (files already in scores/ are reused: a resume)
    full-batch solve over the whole table, beside the streaming BSMD average
    write weights.json (a WeightsRecord) and report.md

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
from mpo_ray.core.solver import evaluate_weights
from mpo_ray.core.streaming import StreamingBSMD
from mpo_ray.io import storage
from mpo_ray.io.artifact import ScoreTable, StreamingBsmd, WeightsRecord
from mpo_ray.io.ownership import check_ours, mark_ours, remove_ours
from mpo_ray.io.provenance import digest
from mpo_ray.runtime.groups import ModelGroups
from mpo_ray.workflows.pipeline import plan_batches, prepare_scoring, run_pipeline
from mpo_ray.workflows.reports import reweight_report
from mpo_ray.workflows.solve import build_artifact, solve

log = logging.getLogger(__name__)


def reweight(config: Config, *, progress: bool = True) -> WeightsRecord:
    """Run the reweighting workflow into ``reweight.output``; returns the weights artifact (also written there)."""
    rw = config.section("reweight")
    output = rw.output
    if not output:
        raise UserError(f"{config.source}: no output location; set `reweight.output` or pass --output.")
    t_start = time.perf_counter()
    inputs = prepare_scoring(config, rw)
    check_ours(output, "reweight", subdirs=("scores",))
    storage.check_writable(output)
    scores_dir = storage.join(output, "scores")
    stored = set(storage.list_files(scores_dir))
    batches = plan_batches(scores_dir, inputs.ids, inputs.prompts, rw.batch_prompts, inputs.fingerprint, stored=stored)
    log.info(
        "reweight: %d prompts × %d samples, K=%d policies, %d batches (%d already in %s)",
        len(inputs.ids),
        rw.sampling.samples_per_prompt,
        len(config.policies),
        len(batches),
        sum(b.stored for b in batches),
        scores_dir,
    )

    mark_ours(output, "reweight", score_fingerprint=inputs.fingerprint)
    for uri in sorted(stored - {b.uri for b in batches}):  # the table holds exactly this run's rows: earlier runs' go
        remove_ours(uri, output, why="scores of other prompts, texts, models or settings")
    stream = (
        StreamingBSMD(len(config.policies), total_steps=len(inputs.ids), step_size=rw.solver.step_size)
        if rw.stream_bsmd
        else None
    )
    with ModelGroups(config, mixture=rw.sampling.proposal == "geometric", progress=progress) as models:
        run = run_pipeline(
            models, rw, batches, metadata={"fingerprint": inputs.fingerprint}, stream=stream, progress=progress
        )

    with run.timings.stage("solver"):
        solution, streamed = solve(config, run.table, rw), None
        if stream is not None:
            a = solution.arrays
            result = evaluate_weights(a.log_ratios, stream.average, mask=a.mask, log_importance=a.log_importance)
            streamed = StreamingBsmd(weights=result.weights.tolist(), gap=result.gap)
    created, chosen = datetime.datetime.now(datetime.timezone.utc), solution.chosen
    artifact = build_artifact(
        config,
        rw,
        solution,
        run,
        created=created,
        version=f"{created:%Y%m%dT%H%M%SZ}-{digest([inputs.fingerprint, chosen.weights.tolist()], 8)}",
        score_table=ScoreTable(
            uri=scores_dir, rows=run.table.num_rows, prompts=len(inputs.ids), fingerprint=inputs.fingerprint
        ),
        streaming_bsmd=streamed,
    )
    with run.timings.stage("io"):
        artifact.write(storage.join(output, "weights.json"))
        storage.write_text(storage.join(output, "report.md"), reweight_report(artifact, solution.estimates))
    log.info(
        "λ = %s, gap = %.2e nats; wrote %s in %.1fs",
        dict(zip(config.policy_names, np.round(chosen.weights, 4).tolist())),
        chosen.gap,
        storage.join(output, "weights.json"),
        time.perf_counter() - t_start,
    )
    return artifact
