"""Tiny, deterministic models for tests, benchmarks and the `tiny:` configs (no hub needed)."""

from mpo_ray.testing.tiny import (
    build_lora_adapter, build_tiny_family, build_tiny_model, build_tokenizer, describe, resolve_tiny,
    token_by_token_logprobs,
)

__all__ = ["build_lora_adapter", "build_tiny_family", "build_tiny_model", "build_tokenizer", "describe", "resolve_tiny",
           "token_by_token_logprobs"]
