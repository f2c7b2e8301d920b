"""Batched LoRA: G adapters of one base in one forward, as one base GEMM plus a batched low-rank delta.

peft selects adapters per row with ``adapter_names``: on every forward it hooks each LoRA layer, splits
the rows by adapter, runs each adapter's two small GEMMs on its slice and scatters the results back —
per layer a dozen small kernels and index copies, which dominate decoding on a GPU (issue 18). Our rows
are policy-major with the same count per policy (G blocks of R rows), so the delta of every LoRA layer
is two batched matmuls over stacked factors:

    y = base(x) + (x[G, R·S, d] @ A[G, d, r]) @ B[G, r, out]

with each B pre-scaled by its adapter's α/r, ranks zero-padded to the largest, and zero factors for a
member that has no adapter on that layer (the base itself, or a system-prompted variant of it). peft
stays the loader (and Rewarded Soups still merge through it): this only reads its factors. Layers peft
computes differently (DoRA and other variants, LoRA biases, embeddings, merged weights) are refused by
`batched_lora`, which names why, and the caller keeps peft's own per-row path.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch


def batched_lora(model, adapters: list[str | None]) -> BatchedLoRA | str:
    """The batched delta of `adapters` (one per policy-major row block, None = no adapter) on a peft
    `model`, built once per (model, adapters) and kept on the model; or a string saying why not."""
    cached = model.__dict__.setdefault("_mpo_batched_lora", {})
    key = tuple(adapters)
    if key not in cached:
        try:
            cached[key] = BatchedLoRA(model, key)
        except _Unsupported as why:
            cached[key] = str(why)
    return cached[key]


class _Unsupported(Exception):
    pass


class BatchedLoRA:
    """Stacked factors of G adapters for every LoRA layer of one peft model."""

    def __init__(self, model, adapters: tuple[str | None, ...]):
        self.model, self.adapters = model, adapters
        self.layers: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
        for name, module in model.named_modules():
            if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
                continue
            present = [a for a in adapters if a is not None and a in module.lora_A]
            if not present:
                continue
            _check_plain(name, module, present)
            self.layers.append((module, *_stack(module, adapters)))
        if not self.layers:
            raise _Unsupported(f"no LoRA layer of {adapters} found in the model")

    @contextmanager
    def active(self):
        """Within: every forward of the model computes base + batched delta (peft's own adapters off)."""
        handles = [m.register_forward_hook(partial(_add_delta, a=a, b=b)) for m, a, b in self.layers]
        try:
            with self.model.disable_adapter():
                yield
        finally:
            for h in handles:
                h.remove()


def _check_plain(name: str, module, adapters: list[str]) -> None:
    """Refuse what the two-GEMM delta does not compute exactly as peft does."""
    if getattr(module, "merged", False):
        raise _Unsupported(f"{name}: adapters are merged into the base weights")
    for a in adapters:
        if getattr(module, "use_dora", {}).get(a):
            raise _Unsupported(f"{name}: adapter {a!r} is DoRA")
        if a in getattr(module, "lora_variant", {}):
            raise _Unsupported(f"{name}: adapter {a!r} is a LoRA variant ({type(module.lora_variant[a]).__name__})")
        if not isinstance(module.lora_A[a], torch.nn.Linear) or module.lora_B[a].bias is not None:
            raise _Unsupported(f"{name}: adapter {a!r} is not a plain bias-free linear LoRA")


def _stack(module, adapters) -> tuple[torch.Tensor, torch.Tensor]:
    """A [G, d, r] and B [G, r, out] (scaled), zero where a member has no adapter on this layer."""
    present = [a for a in adapters if a is not None and a in module.lora_A]
    first = module.lora_A[present[0]].weight
    d = first.shape[1]
    out = module.lora_B[present[0]].weight.shape[0]
    r = max(module.lora_A[a].weight.shape[0] for a in present)
    a_stack = first.new_zeros((len(adapters), d, r))
    b_stack = first.new_zeros((len(adapters), r, out))
    for g, a in enumerate(adapters):
        if a is None or a not in module.lora_A:
            continue
        rank = module.lora_A[a].weight.shape[0]
        a_stack[g, :, :rank] = module.lora_A[a].weight.t()
        b_stack[g, :rank] = module.lora_B[a].weight.t() * module.scaling[a]
    return a_stack, b_stack


def _add_delta(module, args, output, *, a: torch.Tensor, b: torch.Tensor):
    """Forward hook: output + the batched low-rank delta of the policy-major rows of args[0].

    Outside autograd the delta's second GEMM accumulates into the base output in place (`baddbmm_`): with
    rank r the [G, R·S, r] × [G, r, out] product is all output traffic, and writing it once instead of
    writing a delta and adding it costs a fifth at prefill shapes (1.6 → 0.3 ms a layer for 3 × 8 rows of
    43 tokens of SmolLM2, one CPU thread)."""
    x = args[0]
    groups = a.shape[0]
    if x.shape[0] % groups:
        raise RuntimeError(
            f"batched LoRA over {groups} adapters got {x.shape[0]} rows: rows must be policy-major blocks"
        )
    xa = torch.bmm(x.reshape(groups, -1, x.shape[-1]).to(a.dtype), a)
    if output.dtype == b.dtype and output.is_contiguous() and not torch.is_grad_enabled():
        output.view(groups, -1, output.shape[-1]).baddbmm_(xa, b)  # the base output is needed by nothing else
        return output
    return output + torch.bmm(xa, b).reshape(output.shape).to(output.dtype)
