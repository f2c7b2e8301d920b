"""Reading a config: YAML, then overrides, then validation, then path resolution.

safe_load lets the last of two equal keys win and reads `on:` as True; a config is
the record of a run, so both are refused. Overrides (CLI flags) take the same
validation and path resolution as the file, so a flag cannot set what the file
could not. A pydantic ValidationError becomes one line naming the file and key.
"""

import copy
import os
import re
import types
import typing

import yaml
from pydantic import BaseModel, ValidationError

from mpo_ray.config.schema import Config, ConfigError, Invalid

_TAG = "tag:yaml.org,2002:"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and non-string keys, naming the key path and line."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_keys(node, "", set())
        return self.construct_document(node)


# `night: 2025-06-01` stays a string (no field is a date); `1e-9` and `1.0e9` are numbers, as in YAML 1.2.
_StrictLoader.yaml_implicit_resolvers = {
    c: [r for r in rs if r[0] != _TAG + "timestamp"] for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(_TAG + "float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


def _check_keys(node, path: str, seen: set) -> None:
    if id(node) in seen:  # an alias to a node already checked
        return
    seen.add(id(node))
    for i, item in enumerate(node.value if isinstance(node, yaml.SequenceNode) else []):
        _check_keys(item, f"{path}[{i}]", seen)
    keys = set()
    for key, value in node.value if isinstance(node, yaml.MappingNode) else []:
        if key.tag == _TAG + "merge":  # `<<: *defaults`: later keys may override merged ones, as YAML intends
            _check_keys(value, path, seen)
            continue
        kind = key.tag.rsplit(":", 1)[-1]
        text = key.value if isinstance(key, yaml.ScalarNode) else f"<{kind}>"
        where, line = f"{path}.{text}" if path else text, key.start_mark.line + 1
        if kind == "null":
            raise ConfigError(f"key `{where}` (line {line}) is null; every key must be a name.")
        if kind != "str":
            raise ConfigError(f"key `{where}` (line {line}) is read as {kind}, not a string; quote it if it is a name.")
        if text in keys:
            raise ConfigError(f"duplicate key `{where}` (line {line}); remove one.")
        keys.add(text)
        _check_keys(value, where, seen)


def load_config(path, overrides: dict | None = None) -> Config:
    """Read and validate a YAML config. Relative inputs resolve against its directory, outputs against the cwd."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; pass the YAML config file itself.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}).") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}.") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ConfigError(f"{path} is empty; see workflows/configs/tiny.yaml for an example.")
    return config_from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)), overrides=overrides)


def config_from_dict(data, *, source: str = "<dict>", base_dir: str | None = None, overrides: dict | None = None) -> Config:
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
                raise ConfigError(f"{source}: cannot apply override `{dotted}`: `{'.'.join(parents[:i + 1])}` is not a mapping.")
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


_EXPECTED = {"int_type": "int", "float_type": "a number", "bool_type": "true or false", "string_type": "str",
             "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}
_BOUNDS = {"gt": "> {}", "ge": ">= {}", "lt": "< {}", "le": "<= {}"}
_UNIONS = (typing.Union, types.UnionType)


def _locate(loc: tuple):
    """(dotted key, the model holding its last named part, that field's info if the key ends there, ends at a union arm)."""
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
        path, text = path + key if key.startswith("[") or not path else f"{path}.{key}" if key else path, ctx["error"].why
    elif kind == "missing":
        text = "is required."
    elif kind in _EXPECTED:
        wanted = [_EXPECTED[e[0]["type"]] for e in errors if arm and e[1] == path and e[0]["type"] in _EXPECTED]
        got = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        text = f"must be {' or '.join(dict.fromkeys(wanted or [_EXPECTED[kind]]))}, got {got} ({type(value).__name__})."
    elif kind == "literal_error":
        text = f"must be one of {list(typing.get_args(info.annotation)) if info else ctx.get('expected')}, got {value!r}."
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bounds = {k: getattr(m, k) for m in (info.metadata if info else []) for k in _BOUNDS if hasattr(m, k)} or ctx
        low = [("(" if k == "gt" else "[") + str(v) for k, v in bounds.items() if k in ("gt", "ge")]
        high = [str(v) + (")" if k == "lt" else "]") for k, v in bounds.items() if k in ("lt", "le")]
        text = f"in {low[0]}, {high[0]}" if low and high else " and ".join(_BOUNDS[k].format(v) for k, v in bounds.items())
        text = f"must be {text}, got {value!r}{why}."
    elif kind in ("finite_number", "string_too_short", "too_short"):
        text = {"finite_number": f"must be a finite number, got {value!r}.", "string_too_short": "must not be empty.",
                "too_short": f"is empty{why}."}[kind]
    else:
        text = err["msg"].removeprefix("Value error, ").rstrip(".") + "."
    if any(path == k or path.startswith((k + ".", k + "[")) for k in overridden):
        text = text.rstrip(".") + " (set by an override)."
    return f"`{path}` {text}" if path and kind != "extra_forbidden" else text


def _local_output(p: str | None) -> str | None:
    """Outputs are where you run the command: relative local paths resolve against the working directory."""
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

    update = {"reference": spec(c.reference), "policies": [spec(p) for p in c.policies],
              "rewards": [r.model_copy(update={"model": fix(r.model, True)}) for r in c.rewards]}
    for name in _INPUTS:
        if (section := getattr(c, name)) is not None:
            update[name] = section.model_copy(update={**{k: fix(getattr(section, k)) for k in _INPUTS[name]},
                                                      **{k: _local_output(getattr(section, k)) for k in _OUTPUTS[name]}})
    return c.model_copy(update=update)
