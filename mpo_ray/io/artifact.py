"""The weights artifact: λ with everything needed to trust, reproduce and serve it.

One type for every workflow: :class:`WeightsRecord`, a frozen dataclass whose
fields are weights.json's keys (docs/design.md §4, checked against this type by
tests/io/test_artifact.py). `reweight` and `nightly` build it, the store
versions it, `generate`, `sweep`, `evaluate` and the demo read it; it is written
by :meth:`WeightsRecord.write` and read by :meth:`WeightsRecord.read`, which
checks every key (one-line errors naming the file and the key). Blocks added
after the first artifacts were written are optional, so older artifacts load.
Where it lives is resolved here too: a weights.json file, a run directory, a
store (its `latest`), or a store version pinned as ``STORE/versions/V`` (§7).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math

from mpo_ray.core.errors import UserError
from mpo_ray.core.gate import Check, FeedbackEvaluation
from mpo_ray.core.names import VERSION_NAME
from mpo_ray.io import storage
from mpo_ray.io.schemas import decode, encode, keyed, optional

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
record = functools.partial(dataclasses.dataclass, frozen=True, kw_only=True)


# --------------------------------------------------------------------------- #
# The blocks of weights.json
# --------------------------------------------------------------------------- #


@record
class SolverRecord:
    """The solver's settings (the section's `solver`) and how the chosen solve ended."""

    method: str
    tol: float
    steps: int | None
    step_size: float | None
    batch_prompts: int
    iterations: int
    converged: bool


@record
class Certificate:
    """The duality gap at λ̂ (0 at the optimum), in nats and × β in reward units."""

    gap_nats: float
    gap_reward_units: float


@record
class IntervalMethod:
    """How ``weights_ci`` was made: percentile ``level``, ``resamples`` of the ``unit`` (prompts), λ_k's std."""

    level: float
    resamples: int
    unit: str
    std: dict[str, float]


@record
class Ess:
    """Effective sample size per prompt at λ̂ (and the median at uniform λ, which λ̂ cannot flatter); ``low``
    when either median is below the section's `ess_floor`."""

    min: float
    median: float
    mean: float
    median_at_uniform: float | None = optional()
    samples_per_prompt: int
    low: bool


@record
class ScoreTable:
    """Where the score table is and what it holds; nightly adds how many prompts its cache served."""

    uri: str
    reused_prompts: int | None = optional()
    scored_prompts: int | None = optional()
    rows: int
    prompts: int
    fingerprint: str


@record
class ModelIdentity:
    """A model as scored: its ids, and ``content``, the digest of its files (``verified``: the files were there)."""

    name: str
    model: str
    adapter: str | None = None
    revision: str | None = None
    system_prompt: str | None = None
    content: str | None = optional()
    verified: bool | None = optional()


@record
class Models:
    reference: ModelIdentity
    policies: list[ModelIdentity]


@record
class Serving:
    """The mode these weights are served in by default (`core/serving.py`)."""

    mode: str
    num_candidates: int
    decoding_cost: int | None = optional()
    serves: str
    note: str | None = optional()


@record
class StreamingBsmd:
    """λ of streaming BSMD (one step per prompt, as batches arrived) and its certificate gap on the whole table."""

    weights: list[float]
    gap: float


@record
class WarmStart:
    """Nightly's warm start from `latest` (``start``, stored as ``from``) beside a cold solve, for the record."""

    start: str | None = keyed("from", default=None)
    iterations: int
    cold_iterations: int
    initial_gap: float
    cold_initial_gap: float


@record
class Gate:
    """The nightly gate's outcome: every check, the names of those that failed."""

    passed: bool = False
    failed: list[str] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)


@record
class NightRecord:
    """A nightly version's `nightly` block: the night, the `latest` it was gated against and its λ, its inputs
    (a rerun must match them), the warm start, agreement with tonight's feedback and the gate. Every key may be
    missing from a hand-made record: it then never passed."""

    night: str | None = None
    store: str | None = None
    previous: str | None = None
    previous_weights: list[float] | None = None
    prompts_uri: str | None = None
    feedback_uri: str | None = None
    inputs: dict[str, object] = dataclasses.field(default_factory=dict)
    warm_start: WarmStart | None = None
    feedback: FeedbackEvaluation | None = None
    gate: Gate | None = None

    @property
    def passed(self) -> bool:
        return self.gate is not None and self.gate.passed

    @property
    def failed(self) -> list[str]:
        return list(self.gate.failed) if self.gate else []


# --------------------------------------------------------------------------- #
# The artifact
# --------------------------------------------------------------------------- #


@record
class WeightsRecord:
    """A validated weights artifact. Only the header is required; everything `reweight` and `nightly` write is
    optional, so minimal (hand-made) and older artifacts load. Build it whole, or with :meth:`build`; write it with
    :meth:`write`, read it with :meth:`read`."""

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    version: str
    policies: list[str]
    weights: list[float]
    beta: float
    objective: str = "maxmin"
    estimate: str | None = optional()
    solver: SolverRecord | None = optional()
    certificate: Certificate | None = optional()
    values: dict[str, float] | None = optional()
    dual: float | None = optional()
    maxmin_value: float | None = optional()
    free_riders: list[str] | None = optional()
    weights_ci: dict[str, tuple[float, float]] | None = optional()
    weights_ci_method: IntervalMethod | None = optional()
    ess: Ess | None = optional()
    estimates: dict[str, dict] | None = optional()  # each estimate's solve (core/solver.WeightsResult.to_dict)
    score_table: ScoreTable | None = optional()
    sampling: dict | None = optional()  # the section's sampling settings, as configured
    models: Models | None = optional()
    rewards: list[dict] | None = optional()  # the reward sources, as configured
    timings_s: dict[str, float] | None = optional()
    placement: dict[str, list[dict]] | None = optional()  # model group → where each replica ran
    created_at: str | None = optional()
    library_version: str | None = optional()
    seed: int | None = optional()
    serving: Serving | None = optional()
    streaming_bsmd: StreamingBsmd | None = optional()
    nightly: NightRecord | None = optional()
    source: str = keyed(None, default="", compare=False, repr=False)  # where it was read from, for messages

    def __post_init__(self):
        _check(self.policies, self.weights, self.beta, self.source or f"weights {self.version}")

    def __repr__(self) -> str:
        return f"WeightsRecord({self.version!r}, {dict(zip(self.policies, self.weights))})"

    def weights_for(self, names: list[str], where: str = "the config") -> list[float]:
        """λ in the order of ``names`` (matched by name); UserError when the artifact is for other policies."""
        if sorted(self.policies) != sorted(names):
            raise UserError(
                f"weights artifact {self.source or self.version!r} is for policies {self.policies}, but {where} has "
                f"{names}; use the weights reweighting wrote for this config."
            )
        by_name = dict(zip(self.policies, self.weights))
        return [by_name[n] for n in names]

    # --- JSON ---------------------------------------------------------------------

    def to_json(self) -> dict:
        """The JSON document (JSON types only, a fresh copy; unsealed: :meth:`write` seals it)."""
        return encode(self)

    @classmethod
    def from_json(cls, obj, source: str) -> WeightsRecord:
        """The record a parsed weights.json holds; UserError naming ``source`` and the key when it is not one (a
        changed byte of a sealed document included)."""
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
        header = {k: decode(tp, obj[k], source, k) for k, tp in (("policies", list[str]), ("weights", list[float]))}
        _check(header["policies"], header["weights"], decode(float, obj["beta"], source, "beta"), source)
        return dataclasses.replace(decode(cls, obj, source), source=source)

    @classmethod
    def build(cls, *, version: str, policies: list[str], weights, beta: float, **fields) -> WeightsRecord:
        """A record from JSON-shaped ``fields`` (hand-made artifacts, tests); workflows construct it whole."""
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version, "policies": list(policies)}
        doc |= {"weights": list(weights), "beta": beta, "objective": "maxmin", **fields}
        return cls.from_json(doc, f"weights {version}")

    def write(self, uri: str) -> None:
        """Atomically, sealed with a digest of its content (checked by every read)."""
        storage.write_json(uri, storage.sealed(self.to_json()))

    @classmethod
    def read(cls, uri: str) -> WeightsRecord:
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
        artifact = cls.from_json(data, path)
        if storage.SEAL not in data:
            log.warning(
                "%s has no `%s` seal, so its integrity cannot be checked (a changed byte would go unnoticed); "
                "using it anyway. mpo-ray seals every artifact it writes.",
                path,
                storage.SEAL,
            )
        return artifact


def _check(names: list[str], weights: list[float], beta: float, source: str) -> None:
    """What the types cannot say: distinct policies, one finite, non-negative, not-all-zero λ_k each, β > 0."""
    if not names or not all(names) or len(set(names)) != len(names):
        raise UserError(f"{source}: `policies` must be a non-empty list of distinct names, got {names!r}.")
    if len(weights) != len(names):
        raise UserError(f"{source} names {len(names)} policies but has {len(weights)} weights.")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise UserError(f"{source}: `weights` must be finite, non-negative and not all zero, got {weights}.")
    if max(weights) > MAX_ABS_WEIGHT:
        raise UserError(
            f"{source}: `weights` {weights} go beyond the decoder's |λ| <= {MAX_ABS_WEIGHT:g} (float32 mixing "
            "would lose all resolution); MPO's weights sum to 1: restore the artifact or write it again."
        )
    if not math.isfinite(beta) or beta <= 0:
        raise UserError(f"{source}: `beta` must be a positive number, got {beta!r}.")


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
