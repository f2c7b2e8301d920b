"""The reweighting workflow: prompts → samples → score table → solver → weights.

    for each batch of prompts (skipped if its file is already in the table):
        sample m responses per prompt (from π_ref, or a mixture of all models)
        every policy, the reference and each reward source score them, in parallel
        write the batch's rows to the score table (one atomic Parquet file)
        one streaming-BSMD step per prompt (the paper's way)
    full-batch solve over the whole table → weights.json + report.md

Seeds derive from (run seed, prompt id, sample index), never from order, so a
rerun that resumes from a half-written table gives the same weights.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
import uuid
from collections import defaultdict

import numpy as np
import pyarrow as pa
import ray

from mpo_ray import __version__
from mpo_ray.io import storage
from mpo_ray.runtime.actors import (
    ModelGroup, PolicyActor, RewardActor, gather_arrays, gather_samples, log_mixture,
    plan_resources, split_counts,
)
from mpo_ray.config import Config
from mpo_ray.config import PolicySpec
from mpo_ray.core.seeds import derive_seed
from mpo_ray.io.corpus import read_prompts
from mpo_ray.workflows.reports import reweight_report
from mpo_ray.models.rewards import import_function
from mpo_ray.io.schemas import WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION, score_table_schema
from mpo_ray.core.solver import StreamingBSMD, evaluate_weights, normalize_rewards, solve_weights


@dataclasses.dataclass
class Timings:
    sampling: float = 0.0
    scoring: float = 0.0
    solver: float = 0.0
    io: float = 0.0
    startup: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- #
# Before any actor starts: read, check, plan
# --------------------------------------------------------------------------- #


def model_identity(spec: PolicySpec) -> dict:
    """What the artifact records about a model: path or hub id, revision, and a content fingerprint of local files."""
    ident = {"name": spec.name, "model": spec.model, "adapter": spec.adapter, "revision": spec.revision,
             "system_prompt": spec.system_prompt}
    h = hashlib.sha256()
    for path in filter(None, [spec.model, spec.adapter]):
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    h.update(f"{name}:{os.path.getsize(full)}".encode())
                    if name.endswith(".json"):
                        with open(full, "rb") as f:
                            h.update(f.read())
    ident["fingerprint"] = h.hexdigest()[:16]
    return ident


def _check_models(config: Config) -> None:
    """Every model loads its tokenizer, adapters exist, reward functions import, and all share one vocabulary.

    Tokenizers are cheap to load on the driver, and a shared vocabulary is what
    makes one response's token ids meaningful to every policy.
    """
    from mpo_ray.models.policies import tokenizer_vocabulary

    def vocab(spec: PolicySpec):
        if spec.adapter and spec.adapter.startswith((".", "/", "~")) and not os.path.exists(spec.adapter):
            raise ValueError(f"{config.source}: adapter of {spec.name!r}, {spec.adapter!r}, does not exist; fix the path.")
        return tokenizer_vocabulary(spec, config.source)

    ref_vocab = vocab(config.reference)
    for spec in config.policies:
        if vocab(spec) != ref_vocab:
            raise ValueError(
                f"{config.source}: policy {spec.name!r} ({spec.model}) does not share the vocabulary of the reference "
                f"{config.reference.name!r} ({config.reference.model}); all policies must be aligned from one reference model."
            )
    for r in config.rewards:
        if r.function:
            import_function(r.function)


@dataclasses.dataclass
class Plan:
    output: str
    ids: list[str]
    prompts: list[str]
    batches: list[tuple[str, int, int]]  # (file name, start, stop)
    schema: pa.Schema
    reward_names: list[str]
    fingerprint: str


def plan_run(config: Config, output: str) -> Plan:
    """Everything that can fail on bad input, checked before any actor starts or any file is written."""
    rw = config.section("reweight")
    ids, prompts = read_prompts(rw.prompts, prompt_column=rw.prompt_column, id_column=rw.id_column, limit=rw.max_prompts)
    _check_models(config)
    storage.check_writable(output)
    reward_names = [r.name for r in config.rewards]
    settings = {
        "sampling": dataclasses.asdict(rw.sampling), "seed": rw.seed,
        "models": [model_identity(s) for s in (config.reference, *config.policies)],
        "rewards": [dataclasses.asdict(r) for r in config.rewards],
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    batches = []
    for start in range(0, len(ids), rw.batch_prompts):
        stop = min(start + rw.batch_prompts, len(ids))
        digest = hashlib.sha256(("\n".join(ids[start:stop]) + fingerprint).encode()).hexdigest()[:12]
        batches.append((f"part-{len(batches):05d}-{digest}.parquet", start, stop))
    schema = score_table_schema(config.policy_names, reward_names)
    return Plan(output, ids, prompts, batches, schema, reward_names, fingerprint)


# --------------------------------------------------------------------------- #
# One batch
# --------------------------------------------------------------------------- #


def sample_batch(config: Config, groups: dict, ids: list[str], prompts: list[str], timings: Timings) -> dict:
    rw = config.reweight
    s = rw.sampling
    params = {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p}
    samplers = [config.reference.name] + (config.policy_names if s.proposal == "mixture" else [])
    counts = split_counts(s.samples_per_prompt, len(samplers))
    rows = defaultdict(list)
    refs = []
    for c, (name, n) in enumerate(zip(samplers, counts)):
        offset = sum(counts[:c])
        r_ids = [pid for pid in ids for _ in range(n)]
        r_idx = [offset + j for _ in ids for j in range(n)]
        r_prompts = [p for p in prompts for _ in range(n)]
        if not r_ids:
            continue
        seeds = [derive_seed(rw.seed, pid, j) for pid, j in zip(r_ids, r_idx)]
        refs.append((name, r_ids, r_idx, r_prompts, groups[name].submit("sample", r_prompts, seeds, params=params)))
    t0 = time.perf_counter()
    for name, r_ids, r_idx, r_prompts, part_refs in refs:
        out = gather_samples(part_refs)
        rows["prompt_id"] += r_ids
        rows["sample_idx"] += r_idx
        rows["prompt"] += r_prompts
        rows["sampler"] += [name] * len(r_ids)
        rows["response_token_ids"] += out["token_ids"]
        rows["response"] += out["text"]
        rows["sampler_logq"] += list(out["logp_proposal"])
    timings.sampling += time.perf_counter() - t0
    return rows, counts


def score_batch(config: Config, plan: Plan, groups: dict, rewards: dict, rows: dict, counts: list[int], timings: Timings) -> pa.Table:
    t0 = time.perf_counter()
    model_names = [config.reference.name, *config.policy_names]
    model_refs = {n: groups[n].submit("score", rows["prompt"], rows["response_token_ids"]) for n in model_names}
    reward_refs = {n: rewards[n].submit("score", rows["prompt"], rows["response"]) for n in rewards}
    logp = {n: gather_arrays(r) for n, r in model_refs.items()}
    reward = {n: gather_arrays(r) for n, r in reward_refs.items()}
    timings.scoring += time.perf_counter() - t0

    s = config.reweight.sampling
    if s.proposal == "mixture":
        logq = log_mixture(np.stack([logp[n] for n in model_names], axis=1), counts)
    elif s.temperature == 1.0 and not s.top_k and not s.top_p:
        logq = logp[config.reference.name]  # the proposal is π_ref itself: importance weights are exactly 1
    else:
        logq = np.asarray(rows["sampler_logq"], dtype=np.float64)
    columns = {
        "prompt_id": rows["prompt_id"], "sample_idx": rows["sample_idx"], "prompt": rows["prompt"],
        "response": rows["response"], "response_token_ids": rows["response_token_ids"], "sampler": rows["sampler"],
        "logp_ref": logp[config.reference.name], "logp_proposal": logq,
        **{f"logp_{n}": logp[n] for n in config.policy_names},
        **{f"reward_{n}": reward[n] for n in reward},
    }
    position = {pid: i for i, pid in enumerate(dict.fromkeys(rows["prompt_id"]))}
    order = np.lexsort((np.asarray(rows["sample_idx"]), np.array([position[p] for p in rows["prompt_id"]])))
    return pa.table(columns, schema=plan.schema).take(pa.array(order))  # prompt-major, samples in order


# --------------------------------------------------------------------------- #
# Table → solver inputs
# --------------------------------------------------------------------------- #


def score_arrays(table: pa.Table, policy_names: list[str], reward_columns: list[str] = ()) -> dict:
    """(N, m, K) log-ratios, mask, log-importance and rewards from score-table rows, prompts in first-seen order."""
    ids = table.column("prompt_id").to_pylist()
    idx = np.asarray(table.column("sample_idx").to_numpy(), dtype=np.int64)
    order = {pid: i for i, pid in enumerate(dict.fromkeys(ids))}
    rows = np.array([order[p] for p in ids], dtype=np.int64)
    n, m = len(order), int(idx.max()) + 1 if len(idx) else 0
    mask = np.zeros((n, m), dtype=bool)
    mask[rows, idx] = True

    def cube(columns):
        out = np.zeros((n, m, len(columns)))
        for k, c in enumerate(columns):
            out[rows, idx, k] = table.column(c).to_numpy()
        return out

    ref = table.column("logp_ref").to_numpy()
    log_imp = np.zeros((n, m))
    log_imp[rows, idx] = ref - table.column("logp_proposal").to_numpy()
    L = cube([f"logp_{p}" for p in policy_names])
    L[rows, idx, :] -= ref[:, None]
    return {"prompt_ids": list(order), "log_ratios": L, "mask": mask, "log_importance": log_imp,
            "rewards": cube(list(reward_columns)) if reward_columns else None}


def solve_table(config: Config, arrays: dict, *, init=None):
    """The configured final solve; with reward sources also the reward-normalised estimate."""
    sv = config.reweight.solver
    kwargs = dict(mask=arrays["mask"], log_importance=arrays["log_importance"], method=sv.method, tol=sv.tol,
                  steps=sv.steps, step_size=sv.step_size, init=init, seed=config.reweight.seed)
    if sv.method == "bsmd":
        kwargs["batch_prompts"] = min(sv.batch_prompts, arrays["mask"].shape[0])
    estimates = {"implicit": solve_weights(arrays["log_ratios"], **kwargs)}
    if arrays["rewards"] is not None:  # one reward source per objective
        L_rewards = normalize_rewards(arrays["rewards"], config.beta, mask=arrays["mask"],
                                      log_importance=arrays["log_importance"])
        estimates["rewards"] = solve_weights(L_rewards, **kwargs)
    return estimates


def reward_columns_by_objective(config: Config) -> list[str]:
    """reward_<name> columns ordered like the policies (only when every policy has one)."""
    by_objective = {r.objective: r.name for r in config.rewards if r.objective}
    if all(p in by_objective for p in config.policy_names):
        return [f"reward_{by_objective[p]}" for p in config.policy_names]
    return []


# --------------------------------------------------------------------------- #
# The workflow
# --------------------------------------------------------------------------- #


def ensure_ray() -> bool:
    """Connect to the cluster this job runs on (or start a local one); True when we started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True,
             configure_logging=False, ignore_reinit_error=True)
    return True


def start_groups(config: Config) -> tuple[dict, dict]:
    specs = [config.reference, *config.policies]
    plan = plan_resources(config.resources, len(specs) + len(config.rewards))
    run_id = uuid.uuid4().hex[:8]
    groups = {s.name: ModelGroup(s.name, PolicyActor, s, plan, config.resources, run_id) for s in specs}
    rewards = {r.name: ModelGroup(r.name, RewardActor, r, {**plan, "num_gpus": 0.0 if r.function else plan["num_gpus"]},
                                  config.resources, run_id) for r in config.rewards}
    return groups, rewards


def reweight(config: Config, *, output: str | None = None, progress: bool = True) -> dict:
    """Run the reweighting workflow; returns the weights artifact (also written to ``output``)."""
    rw = config.section("reweight")
    output = output or rw.output
    if not output:
        raise ValueError(f"{config.source}: no output location; set `reweight.output` or pass --output.")
    t_start = time.perf_counter()
    plan = plan_run(config, output)
    timings = Timings()
    scores_dir = storage.join(output, "scores")
    done = {u.rsplit("/", 1)[-1] for u in storage.list_files(scores_dir)}
    todo = [b for b in plan.batches if b[0] not in done]
    log(progress, f"reweight: {len(plan.ids)} prompts × {rw.sampling.samples_per_prompt} samples, K={len(config.policies)} "
                   f"policies, {len(plan.batches)} batches ({len(plan.batches) - len(todo)} already in {scores_dir})")

    owns_ray = ensure_ray() if todo else False
    groups, rewards = {}, {}
    stream = StreamingBSMD(len(config.policies), total_steps=len(plan.ids), step_size=rw.solver.step_size)
    tables = []
    try:
        if todo:
            t0 = time.perf_counter()
            groups, rewards = start_groups(config)
            placement = {name: g.info(config.resources.startup_timeout_s) for name, g in {**groups, **rewards}.items()}
            timings.startup = time.perf_counter() - t0
        else:
            placement = {}
        from tqdm.auto import tqdm

        bar = tqdm(plan.batches, desc="reweight", unit="batch", disable=not progress)
        for name, start, stop in bar:
            uri = storage.join(scores_dir, name)
            t0 = time.perf_counter()
            if name in done:
                table = storage.read_parquet(uri)
                timings.io += time.perf_counter() - t0
            else:
                rows, counts = sample_batch(config, groups, plan.ids[start:stop], plan.prompts[start:stop], timings)
                table = score_batch(config, plan, groups, rewards, rows, counts, timings)
                t0 = time.perf_counter()
                storage.write_parquet(uri, table.replace_schema_metadata({"mpo_ray": json.dumps(
                    {"fingerprint": plan.fingerprint, "version": __version__, "batch": name})}))
                timings.io += time.perf_counter() - t0
            tables.append(table)
            t0 = time.perf_counter()
            arrays = score_arrays(table, config.policy_names)
            stream.update(arrays["log_ratios"], mask=arrays["mask"], log_importance=arrays["log_importance"])
            timings.solver += time.perf_counter() - t0
            bar.set_postfix_str(f"λ={np.round(stream.average, 3).tolist()}")
    finally:
        for g in {**groups, **rewards}.values():
            g.kill()
        if owns_ray:
            ray.shutdown()

    t0 = time.perf_counter()
    full = pa.concat_tables(tables)
    arrays = score_arrays(full, config.policy_names, reward_columns_by_objective(config))
    estimates = solve_table(config, arrays)
    streamed = evaluate_weights(arrays["log_ratios"], stream.average, mask=arrays["mask"],
                                log_importance=arrays["log_importance"])
    timings.solver += time.perf_counter() - t0
    chosen = estimates[rw.estimate]
    artifact = build_artifact(config, plan, chosen, estimates, streamed, timings, placement, full.num_rows)
    t0 = time.perf_counter()
    storage.write_json(storage.join(output, "weights.json"), artifact)
    storage.write_text(storage.join(output, "report.md"), reweight_report(artifact, estimates))
    timings.io += time.perf_counter() - t0
    log(progress, f"λ = {dict(zip(config.policy_names, np.round(chosen.weights, 4).tolist()))}, gap = {chosen.gap:.2e} nats; "
                   f"wrote {storage.join(output, 'weights.json')} in {time.perf_counter() - t_start:.1f}s")
    return artifact


def build_artifact(config, plan, chosen, estimates, streamed, timings, placement, rows) -> dict:
    rw = config.reweight
    created = datetime.datetime.now(datetime.timezone.utc)
    digest = hashlib.sha256(json.dumps([plan.fingerprint, chosen.weights.tolist()]).encode()).hexdigest()[:8]
    ess = chosen.ess
    return {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "version": f"{created:%Y%m%dT%H%M%SZ}-{digest}",
        "policies": config.policy_names,
        "weights": chosen.weights.tolist(),
        "beta": config.beta,
        "objective": "maxmin",
        "estimate": rw.estimate,
        "solver": {**dataclasses.asdict(rw.solver), "iterations": chosen.iterations, "converged": chosen.converged},
        "certificate": {"gap_nats": chosen.gap, "gap_reward_units": chosen.gap * config.beta},
        "values": dict(zip(config.policy_names, chosen.values.tolist())),
        "dual": chosen.dual,
        "maxmin_value": chosen.maxmin_value,
        "free_riders": [config.policy_names[k] for k in chosen.free_riders],
        "ess": {"min": float(ess.min()), "median": float(np.median(ess)), "mean": float(ess.mean()),
                "samples_per_prompt": rw.sampling.samples_per_prompt,
                "low": bool(np.median(ess) < rw.min_median_ess)},
        "estimates": {name: r.to_dict() for name, r in estimates.items()},
        "streaming_bsmd": {"weights": streamed.weights.tolist(), "gap": streamed.gap},
        "score_table": {"uri": storage.join(plan.output, "scores"), "rows": rows, "prompts": len(plan.ids),
                        "fingerprint": plan.fingerprint},
        "sampling": dataclasses.asdict(rw.sampling),
        "models": {"reference": model_identity(config.reference), "policies": [model_identity(p) for p in config.policies]},
        "rewards": [dataclasses.asdict(r) for r in config.rewards],
        "timings_s": timings.as_dict(),
        "placement": placement,
        "created_at": created.isoformat(),
        "library_version": __version__,
        "seed": rw.seed,
    }


def log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, flush=True)
