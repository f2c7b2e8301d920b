"""The weights artifact: λ with everything needed to trust, reproduce and serve it.

One type for every workflow. `reweight` and `nightly` build it, the store
versions it, `generate`, `sweep`, `evaluate` and the demo read it. Where it
lives is resolved here too: a weights.json file, a run directory, a store
(its `latest`), or a store version pinned as ``STORE/versions/V``
(docs/design.md §7). It is a read-only mapping over the JSON document, with
typed accessors for the fields every reader needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping

from mpo_ray.core.errors import UserError
from mpo_ray.core.names import VERSION_NAME
from mpo_ray.io import storage

FORMAT = "mpo-ray/weights"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "version", "policies", "weights", "beta", "objective")

# Where weights live in a run directory and in a weights store.
WEIGHTS_FILE = "weights.json"
LATEST_FILE = "latest.json"
LATEST_FORMAT = "mpo-ray/weights-store-latest"
VERSIONS_DIR = "versions"
# A weights artifact nests a few levels. json.loads raises RecursionError on deep documents, but how deep depends on
# the caller's own stack; a fixed limit gives every caller the same answer.
MAX_DEPTH = 64
# The decoder's |λ_k| limit (models/decoding.py MAX_ABS_WEIGHT; io cannot import models, a test keeps them equal).
MAX_ABS_WEIGHT = 1e4

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NightRecord:
    """A nightly version's `nightly` section as its readers need it: the night, the `latest` it was gated
    against, the gate's outcome and the inputs a rerun must match. Missing keys read as "not passed"."""

    night: str | None
    previous: str | None
    passed: bool
    failed: list[str]
    inputs: dict

    @classmethod
    def of(cls, section: Mapping) -> NightRecord:
        gate = section.get("gate") or {}
        return cls(
            section.get("night"),
            section.get("previous"),
            bool(gate.get("passed")),
            list(gate.get("failed") or []),
            dict(section.get("inputs") or {}),
        )


class WeightsArtifact(Mapping):
    """A validated weights artifact (read-only). Build with :meth:`build`, read with :meth:`read`."""

    def __init__(self, data: dict, source: str = "<weights>"):
        self._data = validate(data, source)
        self.source = source

    # --- the fields every reader needs ----------------------------------------

    @property
    def version(self) -> str:
        return str(self._data["version"])

    @property
    def policies(self) -> list[str]:
        return list(self._data["policies"])

    @property
    def weights(self) -> list[float]:
        return [float(w) for w in self._data["weights"]]

    @property
    def night(self) -> NightRecord | None:
        """The nightly record (None for an artifact `reweight` wrote)."""
        section = self._data.get("nightly")
        return NightRecord.of(section) if isinstance(section, Mapping) else None

    def weights_for(self, names: list[str], where: str = "the config") -> list[float]:
        """λ in the order of ``names`` (matched by name); UserError when the artifact is for other policies."""
        if sorted(self.policies) != sorted(names):
            raise UserError(
                f"weights artifact {self.source!r} is for policies {self.policies}, but {where} has {names}; "
                "use the weights reweighting wrote for this config."
            )
        by_name = dict(zip(self.policies, self.weights))
        return [by_name[n] for n in names]

    # --- building, writing, reading ---------------------------------------------

    @classmethod
    def build(cls, *, version: str, policies: list[str], weights, beta: float, **fields) -> WeightsArtifact:
        """A new artifact: the required header first, then ``fields`` in the order given."""
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "policies": list(policies),
            "weights": [float(w) for w in weights],
            "beta": float(beta),
            "objective": "maxmin",
            **fields,
        }
        return cls(data, source=f"weights {version}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self._data))  # a deep copy, JSON types only

    def write(self, uri: str) -> None:
        """Atomically, sealed with a digest of its content (checked by every read)."""
        storage.write_json(uri, storage.sealed(self._data))

    @classmethod
    def read(cls, uri: str) -> WeightsArtifact:
        """The artifact ``uri`` means (see :func:`resolve`); UserError naming the file when it is missing, cannot be
        reached or is malformed. An unsealed artifact (no ``sha256``, e.g. written by hand) is accepted with a
        warning."""
        path = uri
        try:
            path = resolve(uri)
            data = read_document(path)
        except FileNotFoundError:
            raise UserError(
                f"weights artifact {path!r} does not exist; run `mpo-ray reweight` (or `mpo-ray nightly`) "
                "first, or pass the right --weights."
            ) from None
        except UserError:
            raise
        except Exception as exc:  # fsspec backends raise their own types (aiohttp, botocore...): all mean "unreadable"
            raise UserError(
                f"weights artifact {path!r} cannot be read ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); check the path or URL and your access to it."
            ) from None
        artifact = cls(data, source=path)
        if storage.SEAL not in data:
            log.warning(
                "%s has no `%s` seal, so its integrity cannot be checked (a changed byte would go unnoticed); "
                "using it anyway. mpo-ray seals every artifact it writes.",
                path,
                storage.SEAL,
            )
        return artifact

    # --- Mapping -----------------------------------------------------------------

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"WeightsArtifact({self.version!r}, {dict(zip(self.policies, self.weights))})"


def read_document(uri: str, what: str = "weights artifact"):
    """A JSON document: a UTF-8 byte-order mark is accepted (as in configs), nesting beyond MAX_DEPTH is not
    (UserError naming ``what`` and ``uri``); FileNotFoundError and the filesystem's own errors pass through."""
    text = storage.read_text(uri).removeprefix("\ufeff")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {uri!r} is not valid JSON ({exc}).") from None
    except RecursionError:
        too_deep = True
    else:
        too_deep = _deeper_than(obj, MAX_DEPTH)
    if too_deep:
        raise UserError(
            f"{what} {uri!r} nests more than {MAX_DEPTH} levels deep, which no mpo-ray document does; "
            "restore it or write it again."
        )
    return obj


def _deeper_than(obj, limit: int) -> bool:
    """Whether ``obj`` nests more than ``limit`` lists/dicts deep, level by level (no recursion to overflow)."""
    level = [obj]
    for _ in range(limit + 1):
        level = [
            c
            for o in level
            for c in (o.values() if isinstance(o, dict) else o if isinstance(o, list) else ())
            if isinstance(c, (dict, list))
        ]
        if not level:
            return False
    return True


def validate(obj, source: str) -> dict:
    """The artifact as a dict, or UserError naming ``source`` and what is wrong."""
    storage.check_seal(obj, source)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f'{source} is not an mpo-ray weights artifact (no "format": {FORMAT!r}).')
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise UserError(f"{source} lacks {missing}; regenerate it with `mpo-ray reweight`.")
    fv = obj["format_version"]
    if not isinstance(fv, int) or isinstance(fv, bool) or fv < 1:
        raise UserError(f"{source}: format_version must be a positive integer, got {fv!r}.")
    if fv > FORMAT_VERSION:
        raise UserError(
            f"{source} has format_version {fv}; this mpo-ray reads up to {FORMAT_VERSION}. Upgrade mpo-ray."
        )
    names, weights = obj["policies"], obj["weights"]
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise UserError(f"{source}: `policies` must be a non-empty list of distinct names, got {names!r}.")
    if not isinstance(weights, list) or len(weights) != len(names):
        raise UserError(
            f"{source} names {len(names)} policies but has "
            f"{len(weights) if isinstance(weights, list) else 'no list of'} weights."
        )
    ok = all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights)
    if not ok or not sum(weights) > 0:
        raise UserError(f"{source}: `weights` must be finite, non-negative and not all zero, got {weights}.")
    if max(weights) > MAX_ABS_WEIGHT:
        raise UserError(
            f"{source}: `weights` {weights} go beyond the decoder's |λ| <= {MAX_ABS_WEIGHT:g} (float32 mixing "
            "would lose all resolution); MPO's weights sum to 1: restore the artifact or write it again."
        )
    beta = obj["beta"]
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not math.isfinite(beta) or beta <= 0:
        raise UserError(f"{source}: `beta` must be a positive number, got {beta!r}.")
    return obj


def read_latest(store_uri: str) -> dict | None:
    """A weights store's `latest` pointer, or None before its first promotion; UserError when it is damaged or
    names anything but one of the store's own versions (a pointer is never followed out of the store)."""
    uri = storage.join(store_uri, LATEST_FILE)
    if not storage.exists(uri):
        return None
    try:
        pointer = read_document(uri, "weights store pointer")
        storage.check_seal(pointer, uri)
        version = pointer["version"]
        ok = (
            pointer.get("format") == LATEST_FORMAT
            and isinstance(version, str)
            and bool(VERSION_NAME.match(version))
            and pointer.get("weights") == f"{VERSIONS_DIR}/{version}/{WEIGHTS_FILE}"
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{uri} is not a readable `latest` pointer ({type(exc).__name__}: {exc}); restore it from the "
            f"store's history, or pin a version as {storage.join(store_uri, VERSIONS_DIR, 'VERSION')}."
        ) from None
    if not ok:
        raise UserError(
            f"{uri} does not point at a version of this store ({VERSIONS_DIR}/VERSION/{WEIGHTS_FILE}); "
            "refusing to follow it."
        )
    return pointer


def resolve(uri: str) -> str:
    """The weights.json a URI means: a store (→ its `latest`), a version or run directory, or the file itself."""
    fs, path = storage.filesystem(uri)
    if not fs.isdir(path):
        return uri  # a file, or nothing: the reader says what is wrong
    pointer = read_latest(uri)
    if pointer is not None:
        return storage.join(uri, pointer["weights"])
    if storage.exists(storage.join(uri, WEIGHTS_FILE)):
        return storage.join(uri, WEIGHTS_FILE)
    if storage.exists(storage.join(uri, VERSIONS_DIR)):
        raise UserError(
            f"weights store {uri!r} has no `latest` yet (no night has passed its gate); pin a version "
            f"as {storage.join(uri, VERSIONS_DIR, 'VERSION')}."
        )
    return storage.join(uri, WEIGHTS_FILE)  # the reader reports that it does not exist
