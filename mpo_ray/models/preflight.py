"""Cheap checks on the driver before any actor starts: every model exists and all share one vocabulary.

Token-level mixing and cross-scoring need one token→id map: a response's ids
must mean the same to every policy. Tokenizers load in a second; models would
load in minutes on every actor, so this is checked here, once.
"""

from __future__ import annotations

import os

from mpo_ray.config import Config, PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.models.policies import tokenizer_vocabulary
from mpo_ray.models.rewards import import_function


def check_models(config: Config, policies: list[PolicySpec] | None = None, *, reference: bool = True,
                 rewards: bool = True) -> None:
    """Adapters exist, tokenizers load and agree (the reference and ``policies``, default all), reward functions import."""
    specs = ([config.reference] if reference else []) + list(config.policies if policies is None else policies)
    first = None
    for spec in specs:
        if spec.adapter and spec.adapter.startswith((".", "/", "~")) and not os.path.exists(spec.adapter):
            raise UserError(f"{config.source}: adapter of {spec.name!r}, {spec.adapter!r}, does not exist; fix the path.")
        vocab = tokenizer_vocabulary(spec, config.source)
        if first is None:
            first = (spec, vocab)
        elif vocab != first[1]:
            raise UserError(
                f"{config.source}: policy {spec.name!r} ({spec.model}) does not share the vocabulary of the "
                f"{'reference ' if reference else 'policy '}{first[0].name!r} ({first[0].model}); all policies must be aligned from one reference model "
                "(token-level mixing needs one tokenizer).")
    for r in config.rewards if rewards else []:
        if r.function:
            import_function(r.function)
