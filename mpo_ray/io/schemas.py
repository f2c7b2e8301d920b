"""Explicit pyarrow schemas of every table, and how a JSON document becomes a typed record and back.

Tables are written with these schemas rather than inferred ones: inference
differs per batch (an all-null column, an empty list) and breaks later writes
and reads. Column names are the data contracts of docs/design.md §4.

JSON documents (the weights artifact, `io/artifact.py`) are frozen dataclasses
whose fields are the document's keys: :func:`decode` checks a document against
the type (one-line errors naming the file and the key) and :func:`encode` writes
it back, so a document has exactly one shape in code.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing

import pyarrow as pa

from mpo_ray.core.errors import UserError


def score_table_schema(policy_names: list[str], reward_names: list[str] = ()) -> pa.Schema:
    """One row per (prompt, sample): the sample, its reference and proposal log-probs, every policy's and
    reward's score."""
    fields = [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),  # which model drew the sample ("ref" or a policy)
        pa.field("logp_ref", pa.float64(), nullable=False),
        pa.field("logp_proposal", pa.float64(), nullable=False),
    ]
    fields += [pa.field(f"logp_{name}", pa.float64(), nullable=False) for name in policy_names]
    fields += [pa.field(f"reward_{name}", pa.float64(), nullable=False) for name in reward_names]
    return pa.schema(fields)


GENERATION_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=True),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("log_normalizer", pa.float64(), nullable=True),
        # log-prob of the response under the distribution that drew it (null after resampling among n > 1 candidates,
        # whose distribution has no closed form); with `logp_<model>` columns it measures MPO's own objective
        pa.field("sample_logprob", pa.float64(), nullable=True),
        # resampled rows only (num_candidates = n > 1): log Ẑ(x), the log of the mean importance weight π̃_λ/q over the
        # prompt's n candidates (Ẑ unbiased for Z(x) = Σ_y Π_k π_k(y|x)^λ_k, its log biased low), and
        # target_logprob = logprob + log_normalizer − log Ẑ(x) ≈ log π_λ(y|x), the sequence-level target's log-prob at
        # the served y: what MPO's yardstick uses for the KL term where sample_logprob is null (core/yardstick.py)
        pa.field("log_partition", pa.float64(), nullable=True),
        pa.field("target_logprob", pa.float64(), nullable=True),
        pa.field("weights_version", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ]
)


def generation_table(
    ids: list[str],
    prompts: list[str],
    generations: list,
    seeds: list[int],
    version: str,
    errors: list[str | None] | None = None,
    *,
    resampled: bool = False,
    logprobs: dict[str, list] | None = None,
) -> pa.Table:
    """Generation rows, one per prompt; a ``None`` generation is an error row (its reason in ``errors``).

    ``generations`` hold ``text``, ``finish_reason``, ``num_tokens``, ``log_normalizer`` and
    ``proposal_logprob`` (the decoder's `Generation`, and ``log_partition`` when resampled); ``resampled`` says they
    were picked from several candidates: their ``sample_logprob`` is null (the distribution actually served has no
    closed form) and ``log_partition``/``target_logprob`` are filled instead. ``logprobs`` (model name → each row's
    log π(y|x), None on error rows) adds the
    ``logp_<name>`` columns. One builder serves `generate` and `sweep` alike.
    """
    g = list(generations)
    table = pa.table(
        {
            "prompt_id": ids,
            "prompt": prompts,
            "response": [x.text if x else "" for x in g],
            "finish_reason": [x.finish_reason if x else None for x in g],
            "num_tokens": [x.num_tokens if x else 0 for x in g],
            "log_normalizer": [x.log_normalizer if x else None for x in g],
            "sample_logprob": [x.proposal_logprob if x and not resampled else None for x in g],
            "log_partition": [x.log_partition if x and resampled else None for x in g],
            "target_logprob": [
                x.logprob + x.log_normalizer - x.log_partition
                if x and resampled and x.log_partition is not None
                else None
                for x in g
            ],
            "weights_version": [version] * len(ids),
            "seed": seeds,
            "error": list(errors) if errors is not None else [None] * len(ids),
        },
        schema=GENERATION_SCHEMA,
    )
    for name, values in (logprobs or {}).items():
        table = table.append_column(
            pa.field(f"logp_{name}", pa.float64(), nullable=True), pa.array(values, pa.float64())
        )
    return table


def with_generation_columns(table: pa.Table) -> pa.Table:
    """``table`` with every GENERATION_SCHEMA column it lacks added as nulls (files written before that column
    existed: ``log_partition`` and ``target_logprob`` are newer), any extra columns (``logp_<name>``) kept."""
    present = set(table.column_names)
    for i, f in enumerate(GENERATION_SCHEMA):
        if f.name not in present:
            table = table.add_column(min(i, table.num_columns), f, pa.nulls(table.num_rows, f.type))
    return table


# --------------------------------------------------------------------------- #
# JSON documents as frozen dataclasses
# --------------------------------------------------------------------------- #

_OPTIONAL, _KEY = "optional", "key"


def optional():
    """A field that documents written before it existed (or minimal ones) lack: absent reads as None, and None is
    not written. A plain ``= None`` field is always written, as null when None."""
    return dataclasses.field(default=None, metadata={_OPTIONAL: True})


def keyed(key: str | None, **field):
    """A field stored under another key (``from`` is no Python name), or under none (``key=None``: not part of
    the document, e.g. where a record was read from)."""
    return dataclasses.field(**field, metadata={_KEY: key})


def document_fields(cls) -> list[tuple[str, dataclasses.Field, object]]:
    """(key, field, type) of each field of record type ``cls`` that the document holds, in order."""
    hints = _hints(cls)
    return [
        (f.metadata.get(_KEY, f.name), f, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.metadata.get(_KEY, f.name)
    ]


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def decode(tp, value, source: str, key: str = ""):
    """``value`` (parsed JSON) as type ``tp``: dataclasses from objects (keys the type does not know are ignored:
    a newer writer's additions), lists, ``dict[str, X]``, ``tuple[X, Y]``, ``X | None``, str, int, float, bool;
    a bare ``dict`` or ``object`` is taken as it is. UserError naming ``source`` and ``key`` when it does not fit."""

    def wrong(what: str):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return UserError(f"{source}: `{key}` must be {what}, got {shown}; restore the file or write it again.")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(inner, value, source, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong("an object")
        fields = {}
        for name, f, ftp in document_fields(tp):
            where = f"{key}.{name}" if key else name
            if name in value:
                fields[f.name] = decode(ftp, value[name], source, where)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{source} lacks `{where}`; restore the file or write it again.")
        return tp(**fields)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise wrong("an object")
        if not args:
            return value
        return {k: decode(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise wrong("a list")
        return [decode(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise wrong(f"a list of {len(args)}")
        return tuple(decode(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if tp in (int, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or (tp is int and isinstance(value, float)):
            raise wrong("an integer" if tp is int else "a number")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    raise TypeError(f"decode: no rule for {tp!r} (at `{key}`)")


def encode(value):
    """A record (or anything inside one) as JSON types: dataclass fields in order, optional fields left out when
    None."""
    if dataclasses.is_dataclass(value):
        return {
            name: encode(getattr(value, f.name))
            for name, f, _ in document_fields(type(value))
            if not (f.metadata.get(_OPTIONAL) and getattr(value, f.name) is None)
        }
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    return value
