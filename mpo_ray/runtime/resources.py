"""How many actors of what size: placement plans from the config and what the cluster has.

Reweighting hosts one model per actor (K+1 models, plus reward sources);
generation hosts all K policies in one replica so per-token traffic stays in
one process (docs/design.md §5). Both size CPU shares so that everything fits a
two-core machine as well as a GPU cluster.
"""

from __future__ import annotations

import dataclasses
import math

import ray

from mpo_ray.config import ResourcesConfig
from mpo_ray.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Placement:
    """One plan for both kinds of actor group: ``replicas`` of an actor, each asking for ``num_gpus`` and
    ``num_cpus`` and running torch on ``threads`` threads."""

    replicas: int
    num_gpus: float
    num_cpus: float
    threads: int


def _threads(num_cpus: float) -> int:
    """Torch threads = CPUs reserved: more oversubscribe the cores."""
    return max(1, int(num_cpus))


def plan_resources(resources: ResourcesConfig, num_models: int) -> Placement:
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
        raise UserError(
            f"resources.gpus_per_model={num_gpus} but the cluster has {gpus:g} GPUs; lower it or add GPU nodes."
        )
    return Placement(replicas, num_gpus, num_cpus, _threads(num_cpus))


def _cpu_share(node_cpus: list[float], actors: int) -> float:
    """The largest CPU share (2 decimals) such that ``actors`` actors fit on these nodes, bin by bin."""
    for share in sorted({c / k for c in node_cpus if c > 0 for k in range(1, actors + 1)}, reverse=True):
        share = math.floor(100 * share) / 100
        if share > 0 and sum(int(c / share + 1e-9) for c in node_cpus) >= actors:
            return share
    return 0.01


def replica_placement(g) -> Placement:
    """Replicas and their resources. GPUs: `gpus_per_replica` each (default 1; K puts each policy on
    its own GPU), one replica per group. CPU only: the CPUs less one (kept for Ray Data's read and
    write tasks), shared by the replicas. Torch threads = CPUs reserved: more oversubscribe the
    cores (on a busy 2-core machine the tiny models ran 7x slower at 2 threads than at 1)."""
    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 1.0)
    num_gpus = g.gpus_per_replica if g.gpus_per_replica is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > gpus:
        raise UserError(
            f"generate.gpus_per_replica={num_gpus:g} but the cluster has {gpus:g} GPUs; lower it or add GPU nodes."
        )
    concurrency = g.concurrency or (max(1, int(gpus // num_gpus)) if num_gpus else 1)
    if g.cpus_per_replica is not None:
        num_cpus = g.cpus_per_replica
    elif num_gpus:
        num_cpus = 1.0  # the GPU does the work; one core feeds it
    else:
        num_cpus = max(0.01, math.floor(100 * max(cpus - 1, cpus / 2) / concurrency) / 100)
    return Placement(concurrency, num_gpus, num_cpus, _threads(num_cpus))
