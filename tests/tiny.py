"""The one shared test fixture: the repository's paths, the tiny config, and tiny policy families built once per
session. Heavy imports wait for first use, so tests of the shell scripts and manifests stay light."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny random models (``tiny:base``, ...) built on first use; every workflow test starts from this config.
TINY_CONFIG = os.path.join(ROOT, "workflows", "configs", "tiny.yaml")

_ROOT = Path(tempfile.mkdtemp(prefix="mpo-ray-tiny-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def tiny_config(**overrides):
    """The tiny config with dotted-key overrides (``{"reweight.max_prompts": 12}``)."""
    from mpo_ray.config import load_config

    return load_config(TINY_CONFIG, overrides=overrides)


# The dtype of every policy the model tests load: exactness tests need float32 ("auto" is bf16 on CUDA).
EXACT_DTYPE = "float32"

# Prompts of very different lengths, so batches are padded.
PROMPTS = [
    "hello there",
    "What is the capital of France? Tell me about the sea, the mountains and the rivers.",
    "x",
    "How do I bake bread?",
]


@cache
def tiny_family(kind: str, k: int, arch: str = "llama", eos_boost: float = 2.0) -> tuple:
    """K loaded tiny policies with one vocabulary (built and loaded once per session), in float32 on
    every device: the tests compare against exact references, and dtype "auto" is bfloat16 on CUDA."""
    from mpo_ray.models.policies import load_policies
    from mpo_ray.testing import build_tiny_family

    root = _ROOT / f"{kind}-{k}-{arch}-{eos_boost}"
    specs = build_tiny_family(root, k, kind=kind, arch=arch, eos_boost=eos_boost, dtype=EXACT_DTYPE)
    return tuple(load_policies(specs))


@cache
def tiny_model_path(name: str, **kwargs) -> str:
    from mpo_ray.testing import build_tiny_model

    return str(build_tiny_model(_ROOT / name, **kwargs))


def reference_logprobs(policy, prompt: str, response: list[int]) -> torch.Tensor:
    """[len(response), V] log-softmax rows from unpadded, uncached, one-prefix-at-a-time forwards."""
    from mpo_ray.testing import token_by_token_logprobs

    [prompt_ids] = policy.encode_prompts([prompt])
    return token_by_token_logprobs(policy.model, prompt_ids, response, **policy.forward_kwargs(1))


def reference_mixture(policies, weights, prompt: str, response: list[int]) -> tuple[float, float]:
    """(logprob, log_normalizer) of a response under Σ_k λ_k log π_k, token by token."""
    import torch

    if not response:
        return 0.0, 0.0
    s = sum(w * reference_logprobs(p, prompt, response) for p, w in zip(policies, weights) if w != 0)
    log_z = torch.logsumexp(s, dim=-1)
    target = s.gather(-1, torch.tensor(response, device=s.device)[:, None]).squeeze(1)
    return float((target - log_z).sum()), float(log_z.sum())


def generation_rows(ids, *, prompts=None, responses=None, errors=None, seeds=None):
    """Generation rows as `generate` writes them (GENERATION_SCHEMA), for tests of what reads them: prompt "q",
    response "a b", seeds 0..n-1 unless given."""
    import pyarrow as pa

    from mpo_ray.io.schemas import GENERATION_SCHEMA

    n = len(ids)
    none = [None] * n
    columns = {
        "prompt_id": list(ids),
        "prompt": list(prompts or ["q"] * n),
        "response": list(responses or ["a b"] * n),
        "finish_reason": ["stop"] * n,
        "num_tokens": [1] * n,
        "log_normalizer": [0.0] * n,
        "sample_logprob": none,
        "log_partition": none,
        "target_logprob": none,
        "weights_version": ["v"] * n,
        "seed": list(seeds or range(n)),
        "error": list(errors or none),
    }
    return pa.table(columns, schema=GENERATION_SCHEMA)
