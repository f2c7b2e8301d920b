"""Cheap checks on the driver before any actor starts: models exist, share one vocabulary, prompts fit.

Token-level mixing and cross-scoring need one token→id map: a response's ids
must mean the same to every policy. Tokenizers and model configs load in a
second; models would load in minutes on every actor, so this is checked here,
once, and a prompt too long for a context is named by its corpus row.
"""

from __future__ import annotations

import os

from mpo_ray.config import Config, PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.models.policies import Policy, load_weightless
from mpo_ray.models.rewards import import_function
from mpo_ray.models.scoring import context_errors


def check_models(config: Config, policies: list[PolicySpec] | None = None, *, reference: bool = True,
                 rewards: bool = True) -> list[Policy]:
    """Adapters exist, tokenizers load and agree (the reference and ``policies``, default all), reward functions
    import. Returns the weightless policies (for :func:`check_prompt_lengths`)."""
    specs = ([config.reference] if reference else []) + list(config.policies if policies is None else policies)
    loaded: list[Policy] = []
    for spec in specs:
        if spec.adapter and spec.adapter.startswith((".", "/", "~")) and not os.path.exists(spec.adapter):
            raise UserError(f"{config.source}: adapter of {spec.name!r}, {spec.adapter!r}, does not exist; fix the path.")
        policy = load_weightless(spec, config.source)
        if loaded and _vocabulary(policy) != _vocabulary(loaded[0]):
            first = loaded[0].spec
            raise UserError(
                f"{config.source}: policy {spec.name!r} ({spec.model}) does not share the vocabulary of the "
                f"{'reference ' if reference else 'policy '}{first.name!r} ({first.model}); all policies must be aligned "
                "from one reference model (token-level mixing needs one tokenizer).")
        loaded.append(policy)
    for r in config.rewards if rewards else []:
        if r.function:
            import_function(r.function)
    return loaded


def check_prompt_lengths(policies: list[Policy], ids: list[str], prompts: list[str], max_new_tokens: int,
                         corpus: str) -> None:
    """UserError naming the first corpus row whose prompt, once formatted, leaves no room for ``max_new_tokens``."""
    for row, (pid, problem) in enumerate(zip(ids, context_errors(policies, prompts, max_new_tokens, "new tokens"))):
        if problem:
            raise UserError(f"prompt corpus {corpus!r}, row {row} (id {pid!r}): {problem}; or drop the row.")


def _vocabulary(policy: Policy) -> tuple:
    tok = policy.tokenizer
    return tok.get_vocab(), sorted(map(str, tok.all_special_tokens))
