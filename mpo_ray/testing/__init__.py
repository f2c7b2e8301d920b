"""Deterministic worlds for tests and benchmarks (no hub needed).

`tiny` builds small real models (torch) for the `tiny:` configs; `enumerable`
is a numpy world small enough to enumerate every response and know λ* exactly.
Names resolve lazily, so importing the numpy world does not import torch.
"""

import importlib

_LAZY = {
    name: "mpo_ray.testing.tiny"
    for name in (
        "build_lora_adapter",
        "build_tiny_family",
        "build_tiny_model",
        "build_tokenizer",
        "describe",
        "resolve_tiny",
        "token_by_token_logprobs",
    )
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mpo_ray.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
