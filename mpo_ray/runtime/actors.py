"""Ray actors, one model each, and the worker groups the driver talks to.

* ``PolicyActor`` hosts one policy (or the reference). It *samples* responses
  (as the reference sampler, or as one component of a mixture proposal) and
  *scores* token ids teacher-forced. Sampling and scoring live in one class
  because the reference does both and every policy may be asked to sample.
* ``RewardActor`` hosts a reward source: a `transformers` sequence-classifier
  or a Python function ``module:function``.
* ``ModelGroup`` is the driver's handle on the replicas of one model: it splits
  a batch's rows over them and gathers the results in order (veRL-style single
  controller, worker groups).

Each actor asks for one GPU when the cluster has GPUs and a CPU share
otherwise; actors restart on failure (``max_restarts``) and their calls are
retried (``max_task_retries``), so killing one mid-run costs a reload, not the run.
"""

from __future__ import annotations

import math
import os

import numpy as np
import ray

from mpo_ray.config import ResourcesConfig, RewardSpec
from mpo_ray.config import PolicySpec


def _set_threads(num_cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


@ray.remote
class PolicyActor:
    """One policy on one device: samples and teacher-forced scores."""

    def __init__(self, spec: PolicySpec, num_cpus: float = 1.0):
        from mpo_ray.models.decoding import MixedPolicy
        from mpo_ray.models.policies import load_policies

        _set_threads(num_cpus)
        self.policy = load_policies([spec])[0]
        self.sampler = MixedPolicy([self.policy], [1.0])

    def info(self) -> dict:
        return {
            "name": self.policy.name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": str(self.policy.device),
            "vocabulary_hash": self.policy.vocabulary_hash,
        }

    def sample(self, prompts: list[str], seeds: list[int], params: dict) -> dict:
        """One response per row (repeat a prompt for m samples); each row seeded on its own."""
        gens = self.sampler.generate(prompts, seed=seeds, **params)
        return {
            "token_ids": [g.token_ids for g in gens],
            "text": [g.text for g in gens],
            "logp_proposal": np.array([g.proposal_logprob for g in gens], dtype=np.float64),
        }

    def score(self, prompts: list[str], token_ids: list[list[int]]) -> np.ndarray:
        from mpo_ray.models.scoring import score_sequences

        return score_sequences(self.policy, prompts, token_ids)


@ray.remote
class RewardActor:
    """One reward source (a Python function or a reward model) in its own process."""

    def __init__(self, spec: RewardSpec, num_cpus: float = 1.0):
        from mpo_ray.models.rewards import RewardSource

        _set_threads(num_cpus)
        self.spec = spec
        self.source = RewardSource(spec)

    def info(self) -> dict:
        return {"name": self.spec.name, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return self.source.score(prompts, responses)


# --------------------------------------------------------------------------- #
# Placement and worker groups
# --------------------------------------------------------------------------- #


def plan_resources(resources: ResourcesConfig, num_models: int) -> dict:
    """Per-actor resources and replicas per model, from the config and what the cluster has.

    With GPUs: one GPU per actor, and spare GPUs become replicas. Without:
    a CPU share each, so that K+1 models fit even a two-core machine.
    """
    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0.0)
    cpus = cluster.get("CPU", 1.0)
    num_gpus = resources.gpus_per_model if resources.gpus_per_model is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > 0:
        replicas = resources.replicas or max(1, int(gpus // (num_gpus * num_models)))
    else:
        replicas = resources.replicas or 1
    node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")] or [cpus]
    num_cpus = min(resources.cpus_per_model, _cpu_share(node_cpus, replicas * num_models))
    if num_gpus > gpus:
        raise ValueError(f"resources.gpus_per_model={num_gpus} but the cluster has {gpus:g} GPUs; lower it or add GPU nodes.")
    return {"num_gpus": num_gpus, "num_cpus": num_cpus, "replicas": replicas}


def _cpu_share(node_cpus: list[float], actors: int) -> float:
    """The largest CPU share (2 decimals) such that ``actors`` actors fit on these nodes, bin by bin."""
    for share in sorted({c / k for c in node_cpus if c > 0 for k in range(1, actors + 1)}, reverse=True):
        share = math.floor(100 * share) / 100
        if share > 0 and sum(int(c / share + 1e-9) for c in node_cpus) >= actors:
            return share
    return 0.01


class ModelGroup:
    """The replicas of one model; rows of a call are split evenly over them."""

    def __init__(self, name: str, actor_cls, payload, plan: dict, resources: ResourcesConfig, run_id: str = ""):
        self.name = name
        self.options = {"num_gpus": plan["num_gpus"], "num_cpus": plan["num_cpus"]}
        self.actors = [
            actor_cls.options(
                name=f"mpo-{run_id}-{name}-{i}" if run_id else None,  # findable by operators (and fault tests)
                num_gpus=plan["num_gpus"],
                num_cpus=plan["num_cpus"],
                max_restarts=resources.max_restarts,
                max_task_retries=resources.max_task_retries,
                scheduling_strategy="SPREAD",  # spread the K models over nodes
            ).remote(payload, plan["num_cpus"])
            for i in range(plan["replicas"])
        ]

    def submit(self, method: str, *columns, **constants) -> list:
        """Start ``method`` on contiguous row chunks (constants go to every chunk); returns the refs, in row order."""
        n = len(columns[0])
        parts = min(len(self.actors), max(n, 1))
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        return [
            getattr(actor, method).remote(*(c[lo:hi] for c in columns), **constants)
            for actor, lo, hi in zip(self.actors, bounds[:-1], bounds[1:])
        ]

    def info(self, timeout: float | None = None) -> list[dict]:
        """Where each replica runs; waits for them to start (model loaded) for at most ``timeout`` seconds."""
        refs = [a.info.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise TimeoutError(
                f"{len(refs) - len(ready)} actor(s) for {self.name!r} did not start within {timeout:.0f}s; the cluster has "
                f"{ray.cluster_resources()} but each asks for {self.options}. Add nodes, lower resources.*, "
                "or raise resources.startup_timeout_s."
            )
        return ray.get(refs)

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)


def gather_arrays(refs: list) -> np.ndarray:
    return np.concatenate(ray.get(refs)) if refs else np.zeros(0)


def gather_samples(refs: list) -> dict:
    parts = ray.get(refs)
    return {
        "token_ids": [t for p in parts for t in p["token_ids"]],
        "text": [t for p in parts for t in p["text"]],
        "logp_proposal": np.concatenate([p["logp_proposal"] for p in parts]),
    }


def split_counts(total: int, parts: int) -> list[int]:
    """``total`` samples over ``parts`` samplers as evenly as possible (the first ones take the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def log_mixture(logps: np.ndarray, counts: list[int]) -> np.ndarray:
    """Balance-heuristic proposal log q = log Σ_c (n_c/m) π_c(y|x), from (n, C) log-probs."""
    logw = np.log(np.asarray(counts, dtype=np.float64) / sum(counts))
    a = logps + logw
    top = a.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]

