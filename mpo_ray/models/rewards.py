"""Reward sources: a Python function ``module:function`` or a sequence-classification model.

Both score ``(prompts, responses)`` with one float per pair. Implicit log-ratio
rewards need no source: they come from the policies themselves.
"""

from __future__ import annotations

import importlib

import numpy as np

from mpo_ray.core.errors import UserError


def import_function(path: str):
    """``"package.module:function"`` → the callable, or UserError saying what failed."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (
        Exception
    ) as exc:  # ImportError, AttributeError, or whatever the module raises as it imports (SyntaxError...)
        raise UserError(
            f"reward function {path!r} does not import ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "check the module is installed or on the job's working dir."
        ) from None
    if not callable(obj):
        raise UserError(f"reward function {path!r} is not callable.")
    return obj


def reward_values(spec, out, prompts, responses) -> np.ndarray:
    """A reward function's output as (n,) float64, or a one-line UserError saying what it returned instead.

    Strings are refused even when numeric ("0.5"): a reward that returns text has a bug that float() would hide.
    A bad row is named with its prompt and response, since the caller's row numbers are a batch's, not the corpus's.
    """
    what, n = f"reward {spec.name!r} ({spec.function})", len(prompts)
    if isinstance(out, (str, bytes)):
        raise UserError(f"{what} returned a string ({_short(out)}); it must return a list of {n} numbers.")
    try:
        arr = np.asarray(out)
    except (TypeError, ValueError) as exc:  # ragged nesting, a tensor on a GPU
        raise UserError(
            f"{what} returned a {type(out).__name__} that is not a list of numbers "
            f"({' '.join(str(exc).split())[:120]}); "
            f"it must return a list of {n} numbers."
        ) from None
    items = list(out) if isinstance(out, (list, tuple)) else arr.ravel().tolist() if arr.dtype.kind in "USO" else []
    text = next((i for i, v in enumerate(items) if isinstance(v, (str, bytes))), None)
    if text is not None:
        raise UserError(
            f"{what} returned strings (e.g. {_short(items[text])} for row {text}); it must return numbers, "
            "one per (prompt, response)."
        )
    if arr.shape != (n,):
        got = (
            f"one {type(out).__name__}"
            if arr.ndim == 0
            else f"{len(arr)} value{'s' * (len(arr) != 1)}"
            if arr.ndim == 1
            else f"shape {arr.shape}"
        )
        raise UserError(f"{what} returned {got} for {n} rows; it must return one number per (prompt, response).")
    unreal = [(i, v) for i, v in enumerate(arr.tolist()) if not _real(v)] if arr.dtype.kind not in "biuf" else []
    if unreal:  # None, complex, objects: an object array's None would become NaN and hide what was returned
        i, v = unreal[0]
        raise UserError(f"{what} returned {_short(v)} ({type(v).__name__}) for row {i}; it must return real numbers.")
    values = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{what} returned a non-finite value ({values[i]}) for row {i} (prompt {_short(prompts[i])}, "
            f"response {_short(responses[i])}); it must return finite numbers."
        )
    return values


def _real(value) -> bool:
    try:
        return not isinstance(value, complex) and isinstance(float(value), float)
    except (TypeError, ValueError):
        return False


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


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
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                spec.model, dtype=resolve_dtype(spec.dtype, self.device), use_safetensors=True, **kwargs
            )
            .to(self.device)
            .eval()
        )
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @property
    def name(self) -> str:
        return self.spec.name

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """(n,) float64 rewards; a function returning anything but one finite number per row is a UserError."""
        if self.spec.function is not None:
            return reward_values(self.spec, self.fn(list(prompts), list(responses)), prompts, responses)
        import torch

        texts = self._texts(prompts, responses)
        scores = [np.zeros(0)]
        with torch.inference_mode():
            for start in range(0, len(texts), self.spec.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.spec.batch_size], return_tensors="pt", padding=True, truncation=True
                )
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
