"""Preference feedback: pairs labelled by each user group, and how often a policy agrees with them.

A feedback file (JSONL, Parquet or CSV on any fsspec URL) has one row per pair:
``prompt, chosen, rejected, group``, where ``group`` names the objective (a
policy name) whose users gave the label. Agreement needs no generation: a
policy's implicit reward of a response is its log-ratio ``ℓ_k = log π_k −
log π_ref``, so the mixture ``π_λ`` ranks ``chosen`` above ``rejected`` when the
margin ``Σ_k λ_k (ℓ_k(x, chosen) − ℓ_k(x, rejected))`` is positive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mpo_ray.core.errors import UserError
from mpo_ray.io import storage

COLUMNS = ("prompt", "chosen", "rejected", "group")


@dataclasses.dataclass(frozen=True)
class Feedback:
    uri: str
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    groups: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def counts(self) -> dict[str, int]:
        """Pairs per group, groups in first-seen order."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g] = out.get(g, 0) + 1
        return out

    @property
    def digest(self) -> str:
        rows = json.dumps([self.prompts, self.chosen, self.rejected, self.groups])
        return hashlib.sha256(rows.encode()).hexdigest()[:16]


def _read_rows(uri: str) -> pa.Table:
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise UserError(f"feedback {uri!r} does not exist; check the path (and `{{night}}` in it), or drop `nightly.feedback`.")
    try:
        with fs.open(path, "rb") as f:
            raw = f.read()
        if path.endswith((".parquet", ".pq")):
            return pq.read_table(io.BytesIO(raw))
        if path.endswith(".csv"):
            return pacsv.read_csv(io.BytesIO(raw)) if raw.strip() else pa.table({})
        if path.endswith((".jsonl", ".json")):
            text = raw.decode("utf-8")
            rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
            if not all(isinstance(r, dict) for r in rows):
                raise UserError(f"feedback {uri!r}: every JSON row must be an object with keys {list(COLUMNS)}.")
            return pa.Table.from_pylist(rows)
    except (pa.ArrowException, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"feedback {uri!r} could not be read: {exc}") from None
    raise UserError(f"feedback {uri!r}: unknown file type; use .jsonl, .parquet or .csv.")


def read_feedback(uri: str, objectives: list[str]) -> Feedback:
    """Read and validate preference pairs; ValueError naming the file, the row and the fix."""
    table = _read_rows(uri)
    if table.num_rows == 0:
        raise UserError(f"feedback {uri!r} is empty; it needs rows with columns {list(COLUMNS)} "
                         "(or leave `nightly.feedback` unset to run without it).")
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"feedback {uri!r} lacks column(s) {missing}; it has {table.column_names}. "
                         f"Each row needs {list(COLUMNS)}.")
    cols = {c: table.column(c).to_pylist() for c in COLUMNS}
    for c in COLUMNS:
        bad = [i for i, v in enumerate(cols[c]) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise UserError(f"feedback {uri!r}: column {c!r} must hold non-empty strings; row {bad[0]} is "
                             f"{cols[c][bad[0]]!r} ({len(bad)} bad row(s) in all).")
    unknown = sorted(set(cols["group"]) - set(objectives))
    if unknown:
        rows = [i for i, g in enumerate(cols["group"]) if g == unknown[0]]
        raise UserError(f"feedback {uri!r}: group {unknown[0]!r} (row {rows[0]}, {len(rows)} row(s)) is not an objective; "
                         f"groups name the policies {objectives}." + (f" Also unknown: {unknown[1:]}." if unknown[1:] else ""))
    same = [i for i, (a, b) in enumerate(zip(cols["chosen"], cols["rejected"])) if a == b]
    if same:
        raise UserError(f"feedback {uri!r}: row {same[0]} has the same text as chosen and rejected "
                         f"({len(same)} such row(s)); a preference needs two different responses.")
    return Feedback(uri, cols["prompt"], cols["chosen"], cols["rejected"], cols["group"])
