"""The generator actor behind `sweep`: fixed decode batches on a CPU, refilled slots on an accelerator (the same
rows either way)."""

from __future__ import annotations

import pytest
import ray
from tiny import EXACT_DTYPE, PROMPTS

from mpo_ray.models.generator import BatchGenerator
from mpo_ray.runtime.actors import GeneratorActor


@pytest.mark.slow  # a local Ray cluster
def test_the_sweep_generator_gives_the_rows_of_one_all_at_once_call(local_ray, tmp_path):
    """batch_size 2 (on an accelerator, calls of QUEUED_BATCHES × 2 prompts through 2 slots): the rows (EOS, a stop
    string, an over-long prompt's error) are those of one call decoding every prompt at once."""
    from mpo_ray.testing import build_tiny_family

    specs = build_tiny_family(tmp_path / "lora", 2, kind="lora", eos_boost=1.5, dtype=EXACT_DTYPE)
    prompts = [*PROMPTS, "word " * 2000, *PROMPTS, "hello"]
    ids, seeds = [f"p{i}" for i in range(len(prompts))], list(range(len(prompts)))
    params = {"max_new_tokens": 16, "temperature": 1.0, "top_k": None, "top_p": None, "stop": ["ab"]}
    params["num_candidates"] = 1
    actor = GeneratorActor.remote(specs, 1)
    swept = ray.get(actor.generate.remote("pt", [0.5, 0.5], ids, prompts, seeds, params, 2))
    ray.kill(actor)
    at_once = BatchGenerator(specs, threads=1).rows(ids, prompts, seeds, [0.5, 0.5], params, "pt")
    for column in ("prompt_id", "response", "finish_reason", "num_tokens", "error"):
        assert swept[column].to_pylist() == at_once[column].to_pylist(), column
    assert swept["error"].to_pylist()[4] and len(set(swept["num_tokens"].to_pylist())) > 2
