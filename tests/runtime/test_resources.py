"""Placement arithmetic for the model actors (no cluster needed)."""

import dataclasses

import pytest

from mpo_ray.core.estimator import log_mixture, split_counts
from mpo_ray.runtime.resources import _cpu_share


@pytest.mark.parametrize(
    "nodes, actors", [([1, 1, 1], 7), ([2], 7), ([2], 4), ([8, 8], 7), ([1, 1, 1], 3), ([4, 0.5], 9)]
)
def test_cpu_shares_fit_node_by_node(nodes, actors):
    share = _cpu_share(nodes, actors)
    assert share > 0
    assert sum(int(c / share + 1e-9) for c in nodes) >= actors  # every actor has a place
    assert sum(int(c / (share + 0.02) + 1e-9) for c in nodes) < actors or share >= max(
        nodes
    )  # and it is not needlessly small


def test_split_counts_and_balance_heuristic():
    import numpy as np

    assert split_counts(8, 3) == [3, 3, 2] and sum(split_counts(5, 4)) == 5
    logps = np.log(np.array([[0.2, 0.4], [0.1, 0.1]]))
    np.testing.assert_allclose(np.exp(log_mixture(logps, [1, 3])), [0.25 * 0.2 + 0.75 * 0.4, 0.1])


def test_both_placement_plans_are_one_type(monkeypatch):
    """Model actors and generate's replicas are planned into the same record (its `replicas` is generate's
    concurrency)."""
    from mpo_ray.config import GenerateConfig, ResourcesConfig
    from mpo_ray.runtime import resources

    monkeypatch.setattr(resources.ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(resources.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    models = resources.plan_resources(ResourcesConfig(), 4)
    replicas = resources.replica_placement(GenerateConfig(prompts="p"))
    assert models == resources.Placement(replicas=1, num_gpus=0.0, num_cpus=0.5, threads=1)
    assert replicas == resources.Placement(replicas=1, num_gpus=0.0, num_cpus=1.0, threads=1)
    recorded = dataclasses.asdict(replicas)  # what generate's summary.json records: the type's own fields
    assert recorded == {"replicas": 1, "num_gpus": 0.0, "num_cpus": 1.0, "threads": 1}
    assert resources.Placement(**recorded) == replicas
