"""A sweep's files: reuse a point's rows only when they were made the way this run would make them, and replace
only what the sweep itself wrote.

Resuming. A point's file carries, in its Parquet footer, the fingerprint of what
produced its rows (`point_fingerprints`): its weights, the models it mixes and
the models that score it (by content: a model or adapter retrained in place is a
new one; a soup by the adapters and λ it averages), the prompt ids and texts, and
the decoding settings with the seed. A rerun reuses a point's file only when that
fingerprint is unchanged and the file reads back as written; otherwise it
generates the point again, logging which part changed (`stale_points`), so
sweep.json never states settings its rows were not made with. The batch size is
not part of it: a row depends on its own seed only.

Whose files. The directory is the sweep's own (`io.ownership.check_ours`). Only
files mpo-ray's sweep wrote under that very name are replaced (`owns_file`); any
other file at a point's name (a user's, a copy, a link) is refused before work
starts (`point_files`). sweep.json and front.png are fixed names in that
directory and are replaced only when they are the sweep's (`check_fixed_files`):
sweep.json by its ``format`` key, front.png by a digest that sweep.json records
before the figure is written (`write_outputs`), so a run stopped in between still
recognises the figure it left.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable

import pyarrow as pa

from mpo_ray.config import PolicySpec
from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.ownership import owns_file
from mpo_ray.io.provenance import digest, model_identity

SUMMARY_FILE, FIGURE_FILE = "sweep.json", "front.png"
SUMMARY_FORMAT = "mpo-ray/sweep"
PARTS_KEY = b"mpo_ray.sweep_point"  # the fingerprint's parts (JSON): a rerun says which one changed


def slug(label: str) -> str:
    """``label`` with only the characters a sweep keeps in file names (a point's file, a soup's directory)."""
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in label)


# --- Resuming: which points' files hold rows made the way this run would make them ---------------------


def point_files(output: str, labels: list[str]) -> dict[str, str]:
    """label → its file; UserError when two labels share a file name, or a file at a point's name is not one
    mpo-ray's sweep wrote under that name (a user's file is never replaced: move it, or choose another output)."""
    files, by_name = {}, {}
    for label in labels:
        name = f"{slug(label)}.parquet"
        if by_name.setdefault(name, label) != label:
            raise UserError(
                f"sweep points {by_name[name]!r} and {label!r} would both be written to {name}; rename one."
            )
        files[label] = uri = storage.join(output, name)
        if storage.is_link(uri) or (storage.exists(uri) and not owns_file(uri)):
            raise UserError(
                f"sweep output {output!r}: {name} is not a file mpo-ray's sweep wrote under that name (point "
                f"{label!r} would replace it); move it out of the directory, or choose another --output."
            )
    return files


def point_fingerprints(
    specs: list[PolicySpec],
    k: int,
    vectors: dict[str, list[float]],
    ids: list[str],
    prompts: list[str],
    decoding: dict[str, dict],
) -> dict[str, dict[str, str]]:
    """label → the digests of what its rows depend on: ``weights`` (the models it mixes, by name, and their λ),
    ``models`` (those models by content and settings), ``scorers`` (π_ref and the K policies, whose log-probs
    every point's file carries), ``prompts`` (ids and texts) and ``decoding`` (label → the point's own sampling
    settings, num_candidates and seed). ``specs`` are [π_ref, π_1..π_K, extras...], the order of every vector."""
    from mpo_ray.models.policies import local_files

    described = [{**s.model_dump(), "content": model_identity(s, local_files)["content"]} for s in specs]
    common = {"scorers": digest(described[: 1 + k]), "prompts": digest([list(ids), list(prompts)])}
    out = {}
    for label, vector in vectors.items():
        used = [(i, float(w)) for i, w in enumerate(vector) if w != 0]  # zeros: an added soup changes no other point
        out[label] = {
            "weights": digest([(specs[i].name, w) for i, w in used]),
            "models": digest([described[i] for i, _ in used]),
            **common,
            "decoding": digest(decoding[label]),
        }
    return out


def stale_points(files: dict[str, str], parts: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """label → why its point must be generated, or None when its file holds rows of the same fingerprint
    (read from the footer only; the rows are verified when read)."""
    out = {}
    for label, p in parts.items():
        uri = files[label]
        if not storage.exists(uri):
            out[label] = "not generated yet"
            continue
        meta = storage.parquet_metadata(uri) or {}
        if meta.get(storage.FINGERPRINT_KEY, b"").decode("utf-8", "replace") == digest(p):
            out[label] = None
            continue
        try:
            before = json.loads(meta[PARTS_KEY])
            changed = sorted(key for key in p if before.get(key) != p[key]) or ["fingerprint"]
            out[label] = f"{storage.basename(uri)} was made with other {', '.join(changed)}"
        except (KeyError, ValueError, AttributeError):
            out[label] = f"{storage.basename(uri)} carries no sweep fingerprint (an older mpo-ray wrote it)"
    return out


def write_point(uri: str, table: pa.Table, parts: dict[str, str]) -> None:
    """A point's rows, atomically, with their fingerprint (and its parts) in the footer."""
    meta = {**(table.schema.metadata or {}), PARTS_KEY: json.dumps(parts).encode()}
    storage.write_parquet(uri, table.replace_schema_metadata(meta), fingerprint=digest(parts))


# --- sweep.json and front.png: fixed names, replaced only when the sweep wrote them --------------------


def _sha256(uri: str) -> str:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_fixed_files(output: str) -> list[str]:
    """The digest of the front.png there now (empty when there is none); UserError, before any work, when
    sweep.json or front.png is there and is not the sweep's. sweep.json is ours when it carries our ``format``
    (or, written before it did, the summary's own keys); front.png when sweep.json records its digest (a sweep
    of an older mpo-ray recorded none: any PNG beside its sweep.json is taken as its figure)."""
    summary_uri, figure_uri = storage.join(output, SUMMARY_FILE), storage.join(output, FIGURE_FILE)
    how = "move it out of the directory, or choose another --output."
    previous = None
    if storage.is_link(summary_uri) or storage.exists(summary_uri):
        try:
            previous = None if storage.is_link(summary_uri) else storage.read_json(summary_uri)
        except (OSError, ValueError):
            pass
        legacy = (
            isinstance(previous, dict)
            and "format" not in previous
            and {"policies", "points", "generation"} <= set(previous)
        )
        if not (isinstance(previous, dict) and (previous.get("format") == SUMMARY_FORMAT or legacy)):
            raise UserError(
                f"sweep output {output!r}: {SUMMARY_FILE} there is not a summary mpo-ray's sweep wrote; {how}"
            )
    if not (storage.is_link(figure_uri) or storage.exists(figure_uri)):
        return []
    if not storage.is_link(figure_uri) and previous is not None:
        current = _sha256(figure_uri)
        recorded = previous.get("figure_sha256")
        if current in (recorded or []) or (recorded is None and "format" not in previous and _is_png(figure_uri)):
            return [current]
    raise UserError(f"sweep output {output!r}: {FIGURE_FILE} there is not a figure mpo-ray's sweep drew; {how}")


def _is_png(uri: str) -> bool:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def write_outputs(output: str, summary: dict, figure: Callable[[str, dict], None] | None, previous: list[str]) -> None:
    """sweep.json, then front.png. sweep.json records the new figure's digest, and the one there now, before the
    figure is replaced: a run stopped in between leaves a figure the next run still knows as its own."""
    data = None
    if figure is not None:  # drawn in memory first: its digest goes into sweep.json before it is written
        scratch = f"memory://mpo-ray-sweep-{uuid.uuid4().hex}/{FIGURE_FILE}"
        figure(scratch, summary)
        fs, path = storage.filesystem(scratch)
        data = fs.cat_file(path)
        fs.rm(path.rsplit("/", 1)[0], recursive=True)
    digests = list(dict.fromkeys(previous + ([hashlib.sha256(data).hexdigest()] if data is not None else [])))
    storage.write_json(storage.join(output, SUMMARY_FILE), {**summary, "figure_sha256": digests})
    if data is not None:
        storage.write_bytes(storage.join(output, FIGURE_FILE), data)
