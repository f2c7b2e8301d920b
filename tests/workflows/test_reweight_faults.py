"""The reweighting workflow across nodes and through failures (slow: several Ray clusters and model loads)."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from tiny import ROOT, TINY_CONFIG, tiny_config

from mpo_ray.io import storage
from mpo_ray.runtime.session import ray_session
from mpo_ray.workflows.reweight import reweight

OVERRIDES = {"reweight.max_prompts": 12, "reweight.batch_prompts": 4}

pytestmark = pytest.mark.slow


def keys(out):
    t = pq.read_table(os.path.join(out, "scores"))
    return list(zip(t.column("prompt_id").to_pylist(), t.column("sample_idx").to_pylist()))


def wait_for_batches(out, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(storage.list_files(os.path.join(out, "scores"))) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no {n} batch file(s) in {out} after {timeout}s")


def test_multinode_actors_spread_and_match_single_node(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        with ray_session(address=cluster.address, log_to_driver=False):
            multi = reweight(
                tiny_config(**OVERRIDES).with_overrides({"reweight.output": str(tmp_path / "multi")}), progress=False
            )
    finally:
        cluster.shutdown()
    nodes = {a["node_id"] for replicas in multi.placement.values() for a in replicas}
    assert len(nodes) >= 2, multi.placement

    with ray_session(address="local", num_cpus=2, log_to_driver=False):
        single = reweight(
            tiny_config(**OVERRIDES).with_overrides({"reweight.output": str(tmp_path / "single")}), progress=False
        )
    np.testing.assert_allclose(multi.weights, single.weights, atol=1e-6)
    assert sorted(keys(str(tmp_path / "multi"))) == sorted(keys(str(tmp_path / "single")))


def test_killing_a_policy_actor_and_the_driver(tmp_path):
    # one prompt per batch: twelve batches, so a kill after the first lands mid-run however fast the machine is
    # (with three batches the run could finish, and its actors go, before the killer looked for them)
    one_per_batch = {"reweight.batch_prompts": 1}
    with ray_session(address="local", num_cpus=2, log_to_driver=False):
        reference = reweight(
            tiny_config(**OVERRIDES).with_overrides({**one_per_batch, "reweight.output": str(tmp_path / "clean")}),
            progress=False,
        )

        # 1. kill a policy actor while the run is in flight: Ray restarts it, the call is retried.
        out = str(tmp_path / "actor-killed")
        killed = []

        def killer():
            wait_for_batches(out, 1)
            for a in ray.util.list_named_actors(all_namespaces=True):  # GCS only: works without a dashboard
                if "-concise-" in a["name"]:
                    mid_run = len(storage.list_files(os.path.join(out, "scores"))) < 12
                    ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
                    killed.append((a["name"], mid_run))
                    return

        thread = threading.Thread(target=killer)
        thread.start()
        result = reweight(
            tiny_config(**OVERRIDES).with_overrides({**one_per_batch, "reweight.output": out}), progress=False
        )
        thread.join()
        assert killed, "the policy actor was not found to kill"
        assert killed[0][1], "the kill landed after the last batch: it tested nothing"
        np.testing.assert_allclose(result.weights, reference.weights, atol=1e-6)
        assert sorted(keys(out)) == sorted(keys(str(tmp_path / "clean")))

        # 2. kill the driver (SIGKILL) after its first batch, then rerun the same command.
        out = str(tmp_path / "driver-killed")
        cfg = yaml.safe_load(open(TINY_CONFIG))
        # one prompt per batch: twelve files, so the kill below lands mid-run however fast the machine is
        cfg["reweight"].update(
            prompts=os.path.join(ROOT, "workflows", "data", "tiny_prompts.jsonl"), max_prompts=12, batch_prompts=1
        )
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        cmd = [sys.executable, "-m", "mpo_ray.cli", "reweight", str(cfg_path), "--output", out, "--quiet"]
        proc = subprocess.Popen(cmd, env=env)
        try:
            wait_for_batches(out, 1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(storage.list_files(os.path.join(out, "scores"))) < 12
        assert not os.path.exists(os.path.join(out, "weights.json"))
        subprocess.run(cmd, env=env, check=True, timeout=600)
        resumed = storage.read_json(os.path.join(out, "weights.json"))
        # other batch boundaries pad differently: equal up to float noise in the scores
        np.testing.assert_allclose(resumed["weights"], reference.weights, atol=1e-4)
        assert sorted(keys(out)) == sorted(keys(str(tmp_path / "clean")))
