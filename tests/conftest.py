"""Suite-wide settings: no hub access, no telemetry, a local-only Ray."""

import os

# Set before anything imports transformers / huggingface_hub / ray.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray cluster for one test module (never one someone else started), shut down after it."""
    from mpo_ray.runtime.session import ray_session

    with ray_session(address="local", num_cpus=2, log_to_driver=False):
        yield
