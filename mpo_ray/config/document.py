"""The whole config document: `Config`, and how a parsed mapping (plus dotted-key overrides) becomes one.

Overrides (CLI flags) take the same validation and path resolution as the file,
so a flag cannot set what the file could not. A pydantic ValidationError becomes
one line naming the file and key. `Config.with_overrides` re-reads a config
through the same function, which is why both live here: loader.py (YAML) sits
above this module and schema.py (the sections) below it, with no import circle.
"""

import copy
import os
import types
import typing

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from mpo_ray.config.schema import (
    FIXED_LOGP_COLUMNS,
    ConfigError,
    GenerateConfig,
    Invalid,
    NightlyConfig,
    PolicySpec,
    ResourcesConfig,
    RewardSpec,
    ReweightConfig,
    ScoringSection,
    _Strict,
)


class Config(_Strict):
    """The whole file: the reference, K policies (one per objective), rewards, β, and one section per workflow."""

    reference: PolicySpec
    policies: list[PolicySpec] = Field(min_length=1, description="list one policy per objective")
    beta: float = Field(0.1, gt=0, description="the KL strength the policies were aligned with")
    rewards: list[RewardSpec] = []
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    reweight: ReweightConfig | None = None
    generate: GenerateConfig | None = None
    nightly: NightlyConfig | None = None
    _source: str = PrivateAttr("<dict>")  # set by the loader, never from YAML
    _base_dir: str | None = PrivateAttr(None)  # where relative inputs resolve; None: they stay as written

    @property
    def source(self) -> str:
        """Where the config came from, for error messages."""
        return self._source

    @property
    def policy_names(self) -> list[str]:
        return [p.name for p in self.policies]

    def with_overrides(self, overrides: dict) -> "Config":
        """This config with dotted-key overrides, validated and resolved as if they had been in the file."""
        return config_from_dict(self.model_dump(), source=self.source, base_dir=self._base_dir, overrides=overrides)

    def section(self, name: str):
        """The workflow section ``name``, or a clear error when the file has none."""
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"{self.source} has no `{name}:` section; add one to run `mpo-ray {name}`.")
        return value

    @model_validator(mode="after")
    def _sections_agree(self):
        names = self.policy_names
        seen = {self.reference.name}
        for i, p in enumerate(self.policies):
            if p.name in seen:
                raise Invalid(
                    f"policies[{i}].name", f"is {p.name!r} again; names must be unique across reference and policies."
                )
            if (
                column := f"logp_{p.name}"
            ) in FIXED_LOGP_COLUMNS:  # the reference may be `ref`: its column is logp_ref anyway
                raise Invalid(
                    f"policies[{i}].name",
                    f"is {p.name!r}, but the score table's column `{column}` holds "
                    f"{FIXED_LOGP_COLUMNS[column]}; rename the policy.",
                )
            seen.add(p.name)
        rewards = set()
        for i, r in enumerate(self.rewards):
            if r.name in rewards:
                raise Invalid(
                    f"rewards[{i}].name",
                    f"is {r.name!r} again; reward names must be unique (each is a column `reward_{r.name}`).",
                )
            if r.name in seen:  # a model and a reward run as actors named after them: the second name is taken
                raise Invalid(
                    f"rewards[{i}].name",
                    f"is {r.name!r}, the name of a model (reference or policy); give the reward its own name.",
                )
            rewards.add(r.name)
        for i, r in enumerate(self.rewards):
            if r.objective is not None and r.objective not in names:
                raise Invalid(f"rewards[{i}].objective", f"is {r.objective!r}, not one of the policies {names}.")
        covered = [r.objective or "" for r in self.rewards]
        for key in type(self).model_fields:
            if (
                isinstance(getattr(self, key), ScoringSection)
                and getattr(self, key).estimate == "rewards"
                and sorted(covered) != sorted(names)
            ):
                raise Invalid(
                    f"{key}.estimate",
                    "is `rewards`, which needs exactly one reward source per policy (set `objective:` "
                    f"on each); policies without one: {[p for p in names if p not in covered]}.",
                )
        weights = self.generate.weights if self.generate else None
        if isinstance(weights, list) and len(weights) != len(names):
            raise Invalid(
                "generate.weights",
                f"has {len(weights)} entries for {len(names)} policies {names}; give one per policy, in order.",
            )
        if isinstance(weights, dict) and sorted(weights) != sorted(names):
            raise Invalid(
                "generate.weights",
                f"names {sorted(weights)}, but the policies are {names}; give one weight per policy name.",
            )
        return self


def config_from_dict(
    data, *, source: str = "<dict>", base_dir: str | None = None, overrides: dict | None = None
) -> Config:
    """Validate a parsed config. ``overrides`` maps dotted keys to values (None sets the key to null: its default)
    and may create sections; with ``base_dir``, relative paths resolve as in :func:`load_config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}.")
    data, given = copy.deepcopy(data), list(overrides or {})
    for dotted in given:
        node, *parents, leaf = [data, *dotted.split(".")]
        for i, part in enumerate(parents):
            if node.get(part) is None:  # a section the file lacks
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(
                    f"{source}: cannot apply override `{dotted}`: `{'.'.join(parents[: i + 1])}` is not a mapping."
                )
        node[leaf] = copy.deepcopy(overrides[dotted])
        for group in getattr(_locate((*parents, leaf))[1], "alternatives", ()):  # a flag beats the file's other choice
            for other in (o for o in group if leaf in group and o != leaf and ".".join([*parents, o]) not in given):
                node.pop(other, None)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc, given)}") from None
    config = _resolve_paths(config, base_dir) if base_dir else config
    config._source, config._base_dir = source, base_dir
    return config


_EXPECTED = {
    "int_type": "int",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "str",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}
_BOUNDS = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}"}
_UNIONS = (typing.Union, types.UnionType)


def _locate(loc: tuple):
    """(dotted key, the model holding its last named part, that field's info if the key ends there,
    ends at a union arm)."""
    path, tp, parent, info, arm = "", Config, None, None, False
    for item in loc:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in _UNIONS and len(args) == 1:  # X | None
            tp, args = args[0], typing.get_args(args[0])
        info, arm = None, False
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            parent, info = tp, tp.model_fields.get(item)
            tp = info.annotation if info else None
        elif typing.get_origin(tp) in _UNIONS:  # pydantic names the alternative it tried: not part of the key
            tp, arm = None, True
            continue
        else:
            tp = args[0] if typing.get_origin(tp) is list else None
        if item != "[key]":
            path += f"[{item}]" if isinstance(item, int) else f".{item}" if path else str(item)
    return path, parent, info, arm


def _explain(exc: ValidationError, overridden: list[str]) -> str:
    # A union (generate.weights) reports a type error per alternative: an error inside the one that fit comes first.
    errors = sorted(((e, *_locate(e["loc"])) for e in exc.errors()), key=lambda e: e[4] and e[0]["type"] in _EXPECTED)
    err, path, parent, info, arm = errors[0]
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    why = f" ({info.description})" if info is not None and info.description else ""
    if kind == "extra_forbidden":
        text = f"unknown key `{path}`; allowed here: {sorted(parent.model_fields) if parent else []}."
    elif kind == "value_error" and isinstance(ctx.get("error"), Invalid):
        key = ctx["error"].key
        path, text = (
            path + key if key.startswith("[") or not path else f"{path}.{key}" if key else path,
            ctx["error"].why,
        )
    elif kind == "missing":
        text = "is required."
    elif kind in _EXPECTED:
        wanted = [_EXPECTED[e[0]["type"]] for e in errors if arm and e[1] == path and e[0]["type"] in _EXPECTED]
        got = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        text = f"must be {' or '.join(dict.fromkeys(wanted or [_EXPECTED[kind]]))}, got {got} ({type(value).__name__})."
    elif kind == "literal_error":
        text = (
            f"must be one of {list(typing.get_args(info.annotation)) if info else ctx.get('expected')}, got {value!r}."
        )
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = {k: getattr(m, k) for m in (info.metadata if info else []) for k in _BOUNDS if hasattr(m, k)} or ctx
        low = [("(" if k == "gt" else "[") + str(v) for k, v in bounds.items() if k in ("gt", "ge")]
        high = [str(v) + (")" if k == "lt" else "]") for k, v in bounds.items() if k in ("lt", "le")]
        text = (
            f"in {low[0]}, {high[0]}" if low and high else " and ".join(_BOUNDS[k].format(v) for k, v in bounds.items())
        )
        text = f"must be {text}, got {value!r}{why}."
    elif kind in ("finite_number", "string_too_short", "too_short"):
        text = {
            "finite_number": f"must be a finite number, got {value!r}.",
            "string_too_short": "must not be empty.",
            "too_short": f"is empty{why}.",
        }[kind]
    else:
        text = err["msg"].removeprefix("Value error, ").rstrip(".") + "."
    if any(path == k or path.startswith((k + ".", k + "[")) for k in overridden):
        text = text.rstrip(".") + " (set by an override)."
    return f"`{path}` {text}" if path and kind != "extra_forbidden" else text


def cwd_path(p: str | None) -> str | None:
    """A path as meant where the command runs: a local path made absolute against the working directory (``~``
    expanded); a URL, or None, as given. Outputs in a config, and every path typed on the command line, mean this."""
    return p if p is None or "://" in p else os.path.abspath(os.path.expanduser(p))


# Per section: inputs, which resolve against the config file, and outputs, against the working directory. A
# generate weights_uri is usually another command's output; a nightly store is this job's output and the next input.
_INPUTS = {"reweight": ("prompts",), "generate": ("prompts",), "nightly": ("prompts", "feedback")}
_OUTPUTS = {"reweight": ("output",), "generate": ("output", "weights_uri"), "nightly": ("store",)}


def _resolve_paths(c: Config, base_dir: str) -> Config:
    """Make relative local model/adapter/data paths relative to the config file, not the working directory."""

    def fix(p: str | None, must_look_local: bool = False) -> str | None:
        if p is None or "://" in p or os.path.isabs(p) or p.startswith(("default", "tiny:")):
            return p
        if must_look_local and not p.startswith((".", "~")):
            return p  # a hub id such as org/model
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(p)))

    def spec(s):
        return s.model_copy(update={"model": fix(s.model, True), "adapter": fix(s.adapter)})

    update = {
        "reference": spec(c.reference),
        "policies": [spec(p) for p in c.policies],
        "rewards": [r.model_copy(update={"model": fix(r.model, True)}) for r in c.rewards],
    }
    for name in _INPUTS:
        if (section := getattr(c, name)) is not None:
            update[name] = section.model_copy(
                update={
                    **{k: fix(getattr(section, k)) for k in _INPUTS[name]},
                    **{k: cwd_path(getattr(section, k)) for k in _OUTPUTS[name]},
                }
            )
    return c.model_copy(update=update)
