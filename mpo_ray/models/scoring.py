"""Teacher-forced sequence log-probabilities, batched and masked.

`score_sequences` is what a policy actor runs to fill the score table: the same
response token ids (sampled from π_ref) are scored by every policy, each with
its own prompt formatting, and `ℓ_k = log π_k(y|x) − log π_ref(y|x)` is a
difference of two such scores (docs/design.md §1).

Rows are prompt + response, LEFT-padded. Then every response ends at the last
column, so the logits we need are the last `max_response_len + 1` positions of
every row (`logits_to_keep`), whatever the prompt lengths: the full
[batch, seq, vocab] logits tensor is never built. Position ids count real
tokens only, so a padded row computes exactly what the unpadded one would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from functools import cache

import numpy as np
import torch

from mpo_ray.models.lora import batched_lora
from mpo_ray.models.policies import Policy, forward

log = logging.getLogger(__name__)


def check_prompts(prompts) -> list[str]:
    """A non-empty list of strings, or a ValueError saying what to pass instead."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single str; wrap it: [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt string")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] is a {type(p).__name__}, expected str; pass prompt texts, not token ids")
    return prompts


def check_responses(response_token_ids, num_prompts: int, vocab_size: int) -> list[list[int]]:
    """One list of token ids per prompt, each id inside the vocabulary."""
    if len(response_token_ids) != num_prompts:
        raise ValueError(
            f"response_token_ids has {len(response_token_ids)} entries but there are {num_prompts} prompts; "
            "pass one token-id list per prompt"
        )
    out = []
    for i, ids in enumerate(response_token_ids):
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(
                f"response_token_ids[{i}] must hold integer token ids in [0, {vocab_size}), "
                f"got {ids[:8].tolist()}...; pass ids from the policies' shared tokenizer, not text"
            )
        out.append(ids.tolist())
    return out


def context_problem(policy: Policy, ids: list[int], extra: int, what: str) -> str | None:
    """Why a formatted prompt cannot be used with ``extra`` more tokens (empty, or over the context), else None."""
    limit = policy.context_length
    if not ids:
        return (
            f"is empty once formatted for policy {policy.name!r} and the tokenizer adds no BOS token, so there is "
            "nothing to condition on; pass a non-empty prompt"
        )
    if limit is not None and len(ids) + extra > limit:
        return (
            f"is {len(ids)} tokens once formatted for policy {policy.name!r}; with {extra} {what} that makes "
            f"{len(ids) + extra}, over the model's context of {limit} tokens; "
            f"shorten the prompt or ask for fewer {what}"
        )
    return None


def check_context(policy: Policy, prompt_ids: list[list[int]], extras: Sequence[int], what: str) -> None:
    """Refuse rows that are empty or do not fit the model's context, before any forward pass."""
    for i, (ids, extra) in enumerate(zip(prompt_ids, extras)):
        problem = context_problem(policy, ids, extra, what)
        if problem:
            raise ValueError(f"prompts[{i}] {problem}")


def context_errors(policies: list[Policy], prompts: list[str], extra: int, what: str) -> list[str | None]:
    """Per prompt, the first policy's reason it cannot be used (as an error row says it), else None."""
    errors: list[str | None] = [None] * len(prompts)
    for policy in policies if prompts else []:
        for i, ids in enumerate(policy.encode_prompts(prompts)):
            if errors[i] is None and (problem := context_problem(policy, ids, extra, what)):
                errors[i] = f"prompt {problem}"
    return errors


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded [n, max_len] ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over real tokens; pads get 0 (they are masked anyway)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def forward_setup(policies: list[Policy], rows_per_policy: int):
    """(context, forward kwargs) for forwards over the rows of `policies`, which share one module,
    policy-major: one policy activates itself for the stretch; several LoRA adapters run as one batched
    delta (`models/lora.py`), or, where that cannot compute a layer exactly, select their adapters per row
    through peft (the reason logged once)."""
    if len(policies) == 1:
        return policies[0].activated(), {}
    model = policies[0].model
    if hasattr(model, "peft_config"):
        batched = batched_lora(model, [p.adapter_name for p in policies])
        if not isinstance(batched, str):
            return batched.active(), {}
        _log_fallback(batched)
    kwargs = {}
    for policy in policies:
        for key, value in policy.forward_kwargs(rows_per_policy).items():
            kwargs.setdefault(key, []).extend(value)
    return nullcontext(), kwargs


@cache
def _log_fallback(why: str) -> None:
    log.info("LoRA adapters selected per row by peft (slower), since %s", why)


@torch.no_grad()
def response_logprobs(policies: list[Policy], prompt_ids: list[list[list[int]]], responses: list[list[int]]):
    """log-softmax rows predicting each response token, for G policies sharing one model.

    `prompt_ids[g][b]` is prompt b formatted for policy g. One forward runs all
    G×B rows. Returns [G, B, R, V] with R = the longest response; response b is
    right-aligned, i.e. its tokens sit in the last len(responses[b]) of R slots.
    """
    model = policies[0].model
    num_g, num_b = len(policies), len(responses)
    width = max(len(r) for r in responses)
    rows = [p + r for ids in prompt_ids for p, r in zip(ids, responses)]
    ids, mask = pad_left(rows, policies[0].pad_token_id, policies[0].device)
    context, kwargs = forward_setup(policies, num_b)
    with context:
        logits = forward(
            model,
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            use_cache=False,
            logits_to_keep=width + 1,
            **kwargs,
        ).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1).view(num_g, num_b, width, -1)


def right_aligned_targets(responses: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses as [B, R] targets aligned with `response_logprobs`, plus a validity mask."""
    targets, valid = pad_left(responses, 0, device)
    return targets, valid.bool()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar total length (less padding); results are order-free."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score_sequences(policy: Policy, prompts, response_token_ids, *, batch_size: int = 16) -> np.ndarray:
    """log π(y|x) = Σ_t log π(y_t | x, y_<t) over the response tokens only, float64 [N].

    The prompt is formatted by this policy (its chat template and system
    prompt); the response token ids are taken as given. An empty response
    scores 0.
    """
    prompts = check_prompts(prompts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    responses = check_responses(response_token_ids, len(prompts), len(policy.tokenizer))
    prompt_ids = policy.encode_prompts(prompts)
    check_context(policy, prompt_ids, [len(r) for r in responses], "response tokens")
    scores = np.zeros(len(prompts))
    for idx in length_sorted_batches([len(p) + len(r) for p, r in zip(prompt_ids, responses)], batch_size):
        batch = [responses[i] for i in idx]
        if not any(batch):
            continue
        lp = response_logprobs([policy], [[prompt_ids[i] for i in idx]], batch)[0]
        targets, valid = right_aligned_targets(batch, lp.device)
        token_lp = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        scores[idx] = (token_lp * valid).sum(-1).double().cpu().numpy()
    return scores
