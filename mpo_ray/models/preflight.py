"""Cheap checks on the driver before any actor starts: models exist, share one vocabulary, prompts fit.

Token-level mixing and cross-scoring need one token→id map: a response's ids
must mean the same to every policy. Tokenizers and model configs load in a
second; models would load in minutes on every actor, so this is checked here,
once, and a prompt too long for a context is named by its corpus row. What
would otherwise fail inside an actor is refused here too: a device this machine
lacks, a reward model path that is not there, a reward function that raises or
returns anything but one finite number per row, and a β so small that
rewards/β pass the solver's ±1e6 nats.
"""

from __future__ import annotations

import os

from mpo_ray.config import Config, PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.core.table import MAX_NATS
from mpo_ray.models.policies import Policy, check_same_vocabulary, load_weightless
from mpo_ray.models.rewards import import_function, reward_values
from mpo_ray.models.scoring import context_errors

# What every reward function is called with once before Ray starts: two rows, so a wrong length shows.
PROBE_PROMPTS = ("What is the capital of France?", "Write one sentence about the sea.")
PROBE_RESPONSES = ("The capital of France is Paris.", "The sea is wide, calm and blue today!")
_LOCAL = (".", "/", "~")  # a path that looks local, not a hub id


def check_models(
    config: Config, policies: list[PolicySpec] | None = None, *, reference: bool = True, rewards: bool = True
) -> list[Policy]:
    """Devices exist, adapters and reward models exist, tokenizers load and agree (the reference and ``policies``,
    default all), reward functions import and answer a probe. Returns the weightless policies (for
    :func:`check_prompt_lengths`)."""
    specs = ([config.reference] if reference else []) + list(config.policies if policies is None else policies)
    reward_specs = list(enumerate(config.rewards)) if rewards else []
    _check_devices(
        config,
        [(_key(config, s), s.device) for s in specs]  # a function reward runs on no device
        + [(f"rewards[{i}]", r.device) for i, r in reward_specs if r.model],
    )
    for spec in specs:
        if spec.adapter and spec.adapter.startswith(_LOCAL) and not os.path.exists(os.path.expanduser(spec.adapter)):
            raise UserError(
                f"{config.source}: adapter of {spec.name!r}, {spec.adapter!r}, does not exist; fix the path."
            )
    for i, r in reward_specs:
        if r.model and r.model.startswith(_LOCAL) and not os.path.exists(os.path.expanduser(r.model)):
            raise UserError(
                f"{config.source}: `rewards[{i}].model` of reward {r.name!r}, {r.model!r}, does not exist; "
                "fix the path (or give a hub id)."
            )
    for i, r in reward_specs:
        if r.function:
            _probe_reward(config, i, r)
    loaded = [load_weightless(spec, config.source) for spec in specs]
    check_same_vocabulary(loaded, config.source)
    return loaded


def _key(config: Config, spec: PolicySpec) -> str:
    """The config key of a model spec, for messages (a spec from elsewhere is named by its name)."""
    if spec is config.reference:
        return "reference"
    names = config.policy_names
    return f"policies[{names.index(spec.name)}]" if spec.name in names else spec.name


def _check_devices(config: Config, devices: list[tuple[str, str | None]]) -> None:
    """UserError for an explicit device this machine does not have, when the models run here.

    Only a local Ray (no ``RAY_ADDRESS``, or ``local``) puts the actors on this machine; on a cluster the
    driver cannot see the workers' devices, so nothing is said there. The syntax is the config's to check.
    """
    if os.environ.get("RAY_ADDRESS", "local") not in ("", "local"):
        return
    wanted = [(key, device) for key, device in devices if device and not device.startswith("cpu")]
    if not wanted:
        return
    import torch

    counts = {
        "cuda": torch.cuda.device_count,
        "mps": lambda: int(torch.backends.mps.is_available()),
        "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") else 0,
    }
    for key, device in wanted:
        kind, _, index = device.partition(":")
        have = counts[kind]()
        if int(index or 0) >= have:
            has = (
                f"no {kind} device"
                if not have
                else f"{have} {kind} device{'s' * (have != 1)} ({kind}:0..{kind}:{have - 1})"
            )
            raise UserError(
                f"{config.source}: `{key}.device` is {device!r}, but this machine has {has} visible; use one "
                "it has, `cpu`, or leave `device` unset (cuda when there is one)."
            )


def _probe_reward(config: Config, index: int, spec) -> None:
    """Call a reward function once on two probe rows: UserError when it raises or returns anything but two finite
    numbers, or, when the rewards estimate will divide it by β (every policy has a reward), when a value/β already
    passes the ±MAX_NATS the solver accepts. A probe cannot prove the real rows fine; it catches what fails on
    every row, before Ray starts instead of after the whole score table is built."""
    fn = import_function(spec.function)
    prompts, responses = list(PROBE_PROMPTS), list(PROBE_RESPONSES)
    try:
        out = fn(prompts, responses)
    except Exception as exc:  # the user's code: whatever it raises is theirs to fix
        raise UserError(
            f"{config.source}: reward {spec.name!r} ({spec.function}) raised {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]} when called on a 2-row probe; fix the function "
            f"(`rewards[{index}]`)."
        ) from None
    try:
        values = reward_values(spec, out, prompts, responses)
    except UserError as exc:
        raise UserError(f"{config.source}: {str(exc).rstrip('.')} (a 2-row probe before any model loads).") from None
    by_objective = {r.objective: r.name for r in config.rewards if r.objective}
    divided = all(p in by_objective for p in config.policy_names) and spec.name in by_objective.values()
    big = max(values, key=abs)
    if divided and abs(big) > MAX_NATS * config.beta:
        raise UserError(
            f"{config.source}: reward {spec.name!r} returned {big:.3g} on a probe row, and {big:.3g}/beta = "
            f"{big / config.beta:.3g} nats is beyond the ±{MAX_NATS:.0e} the solver accepts; raise `beta` "
            f"({config.beta:g}: the KL strength the policies were aligned with) or rescale the reward."
        )


def check_prompt_lengths(
    policies: list[Policy], ids: list[str], prompts: list[str], max_new_tokens: int, corpus: str
) -> None:
    """UserError naming the first corpus row whose prompt, once formatted, leaves no room for ``max_new_tokens``."""
    for row, (pid, problem) in enumerate(zip(ids, context_errors(policies, prompts, max_new_tokens, "new tokens"))):
        if problem:
            raise UserError(f"prompt corpus {corpus!r}, row {row} (id {pid!r}): {problem}; or drop the row.")
