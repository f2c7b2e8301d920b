"""One loaded module's part of a mixed decode: its policies' rows (policy-major), their KV cache, and the
steps over them — prefill, refill of finished slots, rebase of a full cache, the (optionally compiled)
one-token forward. The cache is static where the model declares a static-shape forward, else a growing
DynamicCache (docs/design.md §5). `MixedPolicy` runs one group per loaded module and mixes their logits.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from functools import cache

import numpy as np
import torch

from mpo_ray.models.policies import Policy, cache_keyword, forward
from mpo_ray.models.scoring import forward_setup, pad_left, position_ids

log = logging.getLogger(__name__)


class KVGroup:
    """Policies sharing one module, during one decode: one forward over their G×R rows (policy-major),
    one KV cache. The cache is static where the model supports it (preallocated for prompt + new
    tokens, written in place, one fixed-shape attention mask), else a growing DynamicCache."""

    def __init__(self, policies: list[Policy], weights: list[float], compile: bool = False):
        self.policies, self.model = policies, policies[0].model
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.device = policies[0].device
        self.cache_kw = cache_keyword(self.model)  # `cache`, or `past_key_values` where the model predates it
        self.compile = compile

    def prefill(
        self,
        prompt_ids: list[list[list[int]]],
        rows: np.ndarray,
        max_new: int,
        stack: ExitStack,
        width: int = 0,
        room: int = 0,
    ) -> torch.Tensor:
        """Run the prompts (row r uses prompt rows[r]), left-padded to at least `width` slots, in a cache of
        `room` more slots than prompt + new tokens; return next-token logits [G*R, V]. `stack` holds the
        adapters' activation until the decode ends."""
        ids, mask = pad_left([p[r] for p in prompt_ids for r in rows], self.policies[0].pad_token_id, self.device)
        if ids.shape[1] < width:
            ids = torch.cat([ids.new_full((len(ids), width - ids.shape[1]), self.policies[0].pad_token_id), ids], 1)
            mask = torch.cat([mask.new_zeros((len(mask), width - mask.shape[1])), mask], 1)
        pos = position_ids(mask)
        self.pos = pos[:, -1]
        context, self.kwargs = forward_setup(self.policies, len(rows))
        stack.enter_context(context)
        self.cache, self.static = _kv_cache(self.model, ids.shape[1] + max_new + room)
        # static: one [rows, slots] mask for the whole decode (slots ahead are cut by causality);
        # dynamic: the mask grows with the cache
        self.mask = torch.cat([mask, mask.new_ones((len(mask), max_new + room))], 1) if self.static else mask
        self.start = ids.shape[1] - mask.sum(1)  # each row's first real slot (rebase never cuts one)
        self.width = ids.shape[1]
        if not self.static or not all(type(layer).__name__ == "StaticLayer" for layer in self.cache.layers):
            return self._forward(ids, pos)
        # The prompts attend to their own keys only, not to the empty slots ahead (through the static cache they
        # would: 75 keys a query instead of 43 for SmolLM2's prompts and 32 new tokens, 1% of a K = 3 decode
        # on one CPU thread, measured); their keys and values are then written into the static cache as its own update
        # would have. Sliding-window layers keep the plain path (their prompts may outgrow the window).
        logits, scratch = self._prefill_alone(ids, mask, pos, self.kwargs)
        for i, layer in enumerate(scratch.layers):
            self.cache.update(layer.keys, layer.values, i)
        return logits

    def refill_blocker(self) -> str | None:
        """Why a finished row's slot cannot take a new prompt here (None: it can). Refill copies a prompt's keys
        and values into a static cache, and needs rows without per-row forward kwargs (peft's adapter_names)."""
        base = _base(self.model)
        if not _static_shapes(base):
            return f"{type(base).__name__} decodes with a growing KV cache"
        if forward_setup(self.policies, 1)[1]:
            return "its LoRA adapters are selected per row by peft"
        return None

    def refill(self, slots: torch.Tensor, prompt_ids: list[list[list[int]]], rows: np.ndarray) -> torch.Tensor:
        """Put the prompts of `rows` into `slots` (of the R current rows): prefilled alone, their keys and
        values are copied into the static cache right-aligned at the write position, the slots' mask and
        positions reset; returns their next-token logits [G*m, V]."""
        ids, mask = pad_left([p[r] for p in prompt_ids for r in rows], self.policies[0].pad_token_id, self.device)
        pos = position_ids(mask)
        logits, scratch = self._prefill_alone(ids, mask, pos, {})
        end, width = self.write_position(), ids.shape[1]
        per_policy = len(self.pos) // len(self.policies)
        dest = torch.cat([slots.to(self.device) + g * per_policy for g in range(len(self.policies))])
        for layer, new in zip(self.cache.layers, scratch.layers):
            layer.keys[dest, :, end - width : end] = new.keys
            layer.values[dest, :, end - width : end] = new.values
        self.mask[dest] = 1
        self.mask[dest, : end - width] = 0
        self.mask[dest, end - width : end] = mask
        self.pos[dest] = pos[:, -1]
        self.start[dest] = end - mask.sum(1)
        return logits

    def write_position(self) -> int:
        """The slot the next token is written to (one for every row of a static cache)."""
        return int(self.cache.layers[0].cumulative_length)

    def rebase(self, needed: int) -> None:
        """Make room for `needed` more tokens: shift every row's slots left by as much as no row's first real
        slot is cut and a prompt of the call still fits before the write position (positions are per row,
        so nothing else changes)."""
        end = self.write_position()
        if end + needed <= self.mask.shape[1]:
            return
        shift = min(int(self.start.min()), end - self.width)
        for layer in self.cache.layers:
            layer.keys[:, :, : end - shift] = layer.keys[:, :, shift:end].clone()
            layer.values[:, :, : end - shift] = layer.values[:, :, shift:end].clone()
            layer.cumulative_length.fill_(end - shift)
        self.mask[:, : end - shift] = self.mask[:, shift:end].clone()
        self.mask[:, end - shift :] = 1
        self.start -= shift
        if end - shift + needed > self.mask.shape[1]:
            raise RuntimeError(f"no room after rebasing the cache ({end - shift} + {needed} > {self.mask.shape[1]})")

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (the same token to each policy's copy of a row)."""
        tokens = tokens.to(self.device).repeat(len(self.policies))[:, None]
        if not self.static:
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.mask), 1))], dim=1)
        self.pos = self.pos + 1
        if self.compile and self.static:
            return self._compiled_step(tokens, self.pos[:, None])
        return self._forward(tokens, self.pos[:, None])

    def keep(self, index: torch.Tensor) -> None:
        """Keep only rows `index` of the R current ones (in every policy's block)."""
        per_policy = len(self.pos) // len(self.policies)
        rows = torch.cat([index.to(self.device) + g * per_policy for g in range(len(self.policies))])
        if self.static:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[rows], layer.values[rows]
                layer.batch_size = len(rows)
        else:
            self.cache.batch_select_indices(rows)
        self.mask, self.pos, self.start = self.mask[rows], self.pos[rows], self.start[rows]
        index = rows.tolist()
        self.kwargs = {k: [v[i] for i in index] for k, v in self.kwargs.items()}

    @torch.no_grad()
    def _prefill_alone(self, ids, mask, pos, kwargs: dict):
        """(next-token logits, the prompts' keys and values in a DynamicCache of their own)."""
        from transformers import DynamicCache

        scratch = DynamicCache(config=_base(self.model).config)
        out = forward(
            self.model,
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: scratch},
            **kwargs,
        )
        return out.logits[:, -1], scratch

    @torch.no_grad()
    def _forward(self, ids, pos) -> torch.Tensor:
        out = forward(
            self.model,
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: self.cache},
            **self.kwargs,
        )
        return out.logits[:, -1]

    def _compiled_step(self, ids, pos) -> torch.Tensor:
        """The one-token forward through torch.compile: fixed shapes (static cache, fixed mask), so it
        compiles once per batch size; the first call's compile time is logged. Falls back to eager for
        good, the reason logged, if the model does not compile."""
        step = _compiled(self.model)
        if step is None:
            return self._forward(ids, pos)
        key = (len(ids), self.mask.shape[1])
        seen = self.model.__dict__.setdefault("_mpo_compiled_shapes", set())
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out = step(self.model, ids, self.mask, pos, self.cache_kw, self.cache, self.kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: eager decoding still gives the same rows
            self.model.__dict__["_mpo_compiled"] = None
            log.warning(
                "decoding %s eagerly: torch.compile failed (%s: %s)",
                type(self.model).__name__,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            return self._forward(ids, pos)
        if key not in seen:
            seen.add(key)
            log.info("compiled the decode step for %d rows x %d slots in %.1f s", *key, time.perf_counter() - start)
        return out

    def mixed_term(self, logits: torch.Tensor, device) -> torch.Tensor:
        """Σ_g λ_g log π_g(·) over this group's policies: [G*R, V] logits → [R, V]."""
        lp = torch.log_softmax(logits.float(), dim=-1).to(device)
        lp = lp.view(len(self.policies), -1, lp.shape[-1])
        return torch.einsum("g,grv->rv", self.weights.to(device), lp)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper's own model


def _kv_cache(model, length: int):
    """(cache, static): a StaticCache of `length` slots where the model declares a static-shape forward
    (transformers' own flag for it), else a DynamicCache, the reason logged once per model class."""
    from transformers import DynamicCache, StaticCache

    base = _base(model)
    if _static_shapes(base):
        return StaticCache(config=base.config, max_cache_len=length), True
    _log_dynamic(type(base).__name__)
    return DynamicCache(config=base.config), False


def _static_shapes(base) -> bool:
    return bool(getattr(type(base), "_can_compile_fullgraph", False))


def _one_token(model, ids, mask, pos, cache_kw, kv, kwargs):
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: kv},
        **kwargs,
    )
    return out.logits[:, -1].clone()  # out of the compiled region's (CUDA graph's) reused buffers


def _compiled(model):
    """The compiled one-token step for `model`, made once and kept on it (None once it failed)."""
    if "_mpo_compiled" not in model.__dict__:
        mode = "reduce-overhead" if next(model.parameters()).device.type == "cuda" else None
        model.__dict__["_mpo_compiled"] = torch.compile(_one_token, mode=mode, dynamic=False)
    return model.__dict__["_mpo_compiled"]


@cache
def _log_dynamic(model_class: str) -> None:
    log.info("%s does not declare a static-shape forward: decoding it with a growing KV cache", model_class)
