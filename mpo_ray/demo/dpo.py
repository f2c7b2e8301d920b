"""A short DPO loop for LoRA adapters: how MPO's single-objective policies are made.

DPO (Rafailov et al., 2023) trains π_θ so that β·(log π_θ − log π_ref) is the
reward that explains the preferences; MPO's log-ratios ℓ_k are exactly these
implicit rewards (in units of β). The loop is ours rather than trl's because it
is twenty lines, pins nothing, and shares the teacher-forced log-prob code the
scorers use, so training and scoring measure the same quantity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mpo_ray.models.scoring import pad_left, position_ids


@dataclass
class DPOConfig:
    beta: float = 0.1
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_pairs: int = 8
    lora_rank: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")
    max_steps: int | None = None  # stop early (None: every epoch)
    last_layers: int | None = 8  # adapt only the top layers: backward stops there, ~3x cheaper on CPU
    seed: int = 0

    def __post_init__(self):
        for name in ("beta", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DPOConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_pairs", "lora_rank", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DPOConfig.{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"DPOConfig.max_steps must be a positive integer or None, got {self.max_steps!r}")
        if self.last_layers is not None and (not isinstance(self.last_layers, int) or self.last_layers < 1):
            raise ValueError(f"DPOConfig.last_layers must be a positive integer or None, got {self.last_layers!r}")


@dataclass
class PreferencePairs:
    """Token ids of (formatted prompt, chosen response, rejected response) triples."""

    prompt_ids: list[list[int]]
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    ref_chosen: np.ndarray = field(default=None)  # log π_ref, filled by `train_dpo`
    ref_rejected: np.ndarray = field(default=None)

    def __post_init__(self):
        n = len(self.prompt_ids)
        if not n or len(self.chosen_ids) != n or len(self.rejected_ids) != n:
            raise ValueError(
                f"PreferencePairs needs the same positive number of prompts, chosen and rejected responses; "
                f"got {n}, {len(self.chosen_ids)}, {len(self.rejected_ids)}"
            )
        if any(not r for r in self.chosen_ids) or any(not r for r in self.rejected_ids):
            raise ValueError("PreferencePairs: every chosen and rejected response needs at least one token")

    def __len__(self):
        return len(self.prompt_ids)


def sequence_logprobs(model, prompt_ids, response_ids, pad_id: int) -> torch.Tensor:
    """Σ_t log p(y_t | x, y_<t) over the response tokens, differentiable, [B]."""
    width = max(len(r) for r in response_ids)
    ids, mask = pad_left([p + r for p, r in zip(prompt_ids, response_ids)], pad_id, model.device)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False, logits_to_keep=width + 1
    ).logits[:, :-1]
    targets, valid = pad_left(response_ids, 0, model.device)  # right-aligned like the logits
    lp = torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (lp * valid).sum(-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """−log σ(β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)]), and the reward margins."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean(), beta * margin.detach()


def _batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


def train_dpo(base_model, pairs: PreferencePairs, config: DPOConfig, *, pad_id: int, progress=None):
    """Wrap `base_model` in a fresh LoRA adapter and train it with DPO on `pairs`.

    The reference is the same model with the adapter switched off, so log π_ref
    comes for free (computed once, before the first step). Returns the peft model
    and a history of (step, loss, mean reward margin, accuracy).
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    layers = getattr(base_model.config, "num_hidden_layers", None)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        layers_to_transform=list(range(layers - config.last_layers, layers)) if config.last_layers and layers else None,
    )
    model = get_peft_model(base_model, lora)
    model.eval()  # no dropout: the loop is deterministic for a seed
    rng = np.random.default_rng(config.seed)
    n = len(pairs)
    if pairs.ref_chosen is None:
        with torch.no_grad(), model.disable_adapter():
            ref_c, ref_r = [], []
            for idx in np.array_split(np.arange(n), max(1, n // config.batch_pairs)):
                ref_c.append(
                    sequence_logprobs(
                        model, [pairs.prompt_ids[i] for i in idx], [pairs.chosen_ids[i] for i in idx], pad_id
                    )
                )
                ref_r.append(
                    sequence_logprobs(
                        model, [pairs.prompt_ids[i] for i in idx], [pairs.rejected_ids[i] for i in idx], pad_id
                    )
                )
        pairs.ref_chosen = torch.cat(ref_c).double().cpu().numpy()
        pairs.ref_rejected = torch.cat(ref_r).double().cpu().numpy()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    history, step = [], 0
    total = config.epochs * len(_batches(n, config.batch_pairs, np.random.default_rng(0)))
    total = min(total, config.max_steps or total)
    for _ in range(config.epochs):
        for idx in _batches(n, config.batch_pairs, rng):
            if step == total:
                break
            prompts = [pairs.prompt_ids[i] for i in idx]
            both = sequence_logprobs(
                model,
                prompts + prompts,
                [pairs.chosen_ids[i] for i in idx] + [pairs.rejected_ids[i] for i in idx],
                pad_id,
            )
            ref = torch.as_tensor(
                np.concatenate([pairs.ref_chosen[idx], pairs.ref_rejected[idx]]), dtype=both.dtype, device=both.device
            )
            loss, margins = dpo_loss(both[: len(idx)], both[len(idx) :], ref[: len(idx)], ref[len(idx) :], config.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "margin": margins.mean().item(),
                    "accuracy": (margins > 0).float().mean().item(),
                }
            )
            if progress:
                progress(step, total, history[-1])
    model.requires_grad_(False)
    return model, history
