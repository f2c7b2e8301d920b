"""BatchGenerator: a batch of prompt rows → generation rows, the same whatever the slots decoding at once."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import EXACT_DTYPE, PROMPTS

pytest.importorskip("pyarrow")  # the generation table; a bare GPU machine (infra/gpu-check.sh) may lack it
from mpo_ray.models.generator import BatchGenerator  # noqa: E402


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    from mpo_ray.testing import build_tiny_family

    root = tmp_path_factory.mktemp("generator")
    specs = build_tiny_family(root / "lora", 2, kind="lora", eos_boost=1.5, dtype=EXACT_DTYPE)
    return BatchGenerator(specs, threads=1)


@pytest.mark.parametrize("candidates", [1, 2])
def test_rows_are_the_same_whatever_the_slots(generator, candidates):
    """Slot refill in a batch: EOS and a stop string end rows at different lengths, an over-long prompt is an
    error row, candidates decode as rows; one and three slots give the rows of the all-at-once decode."""
    prompts = [*PROMPTS, "word " * 2000, *PROMPTS]  # row 4: too long for the context
    ids, seeds = [f"p{i}" for i in range(len(prompts))], list(range(len(prompts)))
    params = {"max_new_tokens": 24, "temperature": 1.0, "top_k": None, "top_p": None, "stop": ["ab"]}
    params["num_candidates"] = candidates
    at_once = generator.rows(ids, prompts, seeds, [0.5, 0.5], params, "v")
    assert at_once["error"].to_pylist()[4] and len(set(at_once["num_tokens"].to_pylist())) > 2
    for slots in (1, 3):
        refilled = generator.rows(ids, prompts, seeds, [0.5, 0.5], params, "v", slots=slots)
        for column in ("response", "finish_reason", "num_tokens", "error", "seed"):
            assert refilled[column].to_pylist() == at_once[column].to_pylist(), (slots, column)
        for column in ("sample_logprob", "log_normalizer"):
            np.testing.assert_allclose(
                refilled[column].to_numpy(zero_copy_only=False).astype(float),
                at_once[column].to_numpy(zero_copy_only=False).astype(float),
                atol=1e-4,
            )


def test_slots_refill_on_an_accelerator_and_batches_stay_fixed_on_a_cpu():
    from mpo_ray.models.generator import QUEUED_BATCHES, refill_plan

    assert refill_plan(16, on_accelerator=True) == (16 * QUEUED_BATCHES, 16)
    assert refill_plan(16, on_accelerator=False) == (16, None)
