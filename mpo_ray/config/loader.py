"""Reading a config file: strict YAML, then document.py's overrides, validation and path resolution.

safe_load lets the last of two equal keys win and reads `on:` as True; a config is
the record of a run, so both are refused.
"""

import os
import re

import yaml

from mpo_ray.config.document import Config, config_from_dict
from mpo_ray.config.schema import ConfigError

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
    c: [r for r in rs if r[0] != _TAG + "timestamp"] for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _TAG + "float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


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
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})."
        ) from None
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
