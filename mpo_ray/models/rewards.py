"""Reward sources: a Python function ``module:function`` or a sequence-classification model.

Both score ``(prompts, responses)`` with one float per pair. Implicit log-ratio
rewards need no source: they come from the policies themselves.
"""

from __future__ import annotations

import importlib

import numpy as np

from mpo_ray.core.errors import UserError


def import_function(path: str):
    """``"package.module:function"`` → the callable, or ValueError saying what failed."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"reward function {path!r} does not import ({type(exc).__name__}: {exc}); check the module is installed or on the job's working dir.") from None
    if not callable(obj):
        raise UserError(f"reward function {path!r} is not callable.")
    return obj


class RewardSource:
    """One reward source from a `RewardSpec`: a Python function, or a `transformers`
    sequence-classification model (logit 0 is the reward). No Ray: the reward
    actor hosts one, evaluation calls one in-process."""

    def __init__(self, spec):
        self.spec = spec
        if spec.function is not None:
            self.fn = import_function(spec.function)
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from mpo_ray.models.policies import resolve_device, resolve_dtype

        self.device = resolve_device(spec.device)
        kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model, **kwargs)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            spec.model, dtype=resolve_dtype(spec.dtype, self.device), use_safetensors=True, **kwargs
        ).to(self.device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def name(self) -> str:
        return self.spec.name

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """(n,) float64 rewards; a function returning the wrong shape or non-finite values is an error."""
        if self.spec.function is not None:
            out = np.asarray(self.fn(list(prompts), list(responses)), dtype=np.float64)
            if out.shape != (len(prompts),) or not np.all(np.isfinite(out)):
                raise UserError(f"reward function {self.spec.function} must return {len(prompts)} finite numbers, got shape {out.shape}.")
            return out
        import torch

        texts = self._texts(prompts, responses)
        scores = [np.zeros(0)]
        with torch.inference_mode():
            for start in range(0, len(texts), self.spec.batch_size):
                enc = self.tokenizer(texts[start : start + self.spec.batch_size], return_tensors="pt", padding=True, truncation=True)
                scores.append(self.model(**enc.to(self.device)).logits[:, 0].float().cpu().numpy())
        return np.concatenate(scores).astype(np.float64)

    def _texts(self, prompts, responses) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                )
                for p, r in zip(prompts, responses)
            ]
        return [f"{p}\n{r}" for p, r in zip(prompts, responses)]
