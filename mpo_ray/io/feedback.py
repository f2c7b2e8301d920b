"""Preference feedback: pairs labelled by each user group, and how often a policy agrees with them.

A feedback file (JSONL, Parquet or CSV on any fsspec URL, read by `io.tables`) has one row per pair:
``prompt, chosen, rejected, group``, where ``group`` names the objective (a
policy name) whose users gave the label. Agreement needs no generation: a
policy's implicit reward of a response is its log-ratio ``ℓ_k = log π_k −
log π_ref``, so the mixture ``π_λ`` ranks ``chosen`` above ``rejected`` when the
margin ``Σ_k λ_k (ℓ_k(x, chosen) − ℓ_k(x, rejected))`` is positive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from mpo_ray.core.errors import UserError
from mpo_ray.io.tables import Columns, read_columns, table_format

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


def _read_columns(uri: str) -> Columns:
    """The file's columns, read by `io.tables` (the corpus reader's text policy); JSON values stay as parsed, so
    a row that is not text is named by `read_feedback`."""
    what = "feedback"
    fmt = table_format(uri, what, "check the path (and `{night}` in it), or drop `nightly.feedback`")
    return read_columns(uri, fmt, what, f"with keys {list(COLUMNS)}")


def read_feedback(uri: str, objectives: list[str]) -> Feedback:
    """Read and validate preference pairs; ValueError naming the file, the row and the fix."""
    columns = _read_columns(uri)
    if not columns.num_rows:
        raise UserError(
            f"feedback {uri!r} is empty; it needs rows with columns {list(COLUMNS)} "
            "(or leave `nightly.feedback` unset to run without it)."
        )
    missing = [c for c in COLUMNS if c not in columns.names]
    if missing:
        raise UserError(
            f"feedback {uri!r} lacks column(s) {missing}; it has {columns.names}. Each row needs {list(COLUMNS)}."
        )
    cols = {c: columns.values(c) for c in COLUMNS}
    for c in COLUMNS:
        bad = [i for i, v in enumerate(cols[c]) if not isinstance(v, str) or not v.strip()]
        if bad:
            raise UserError(
                f"feedback {uri!r}: column {c!r} must hold non-empty strings; row {bad[0]} is "
                f"{cols[c][bad[0]]!r} ({len(bad)} bad row(s) in all)."
            )
    unknown = sorted(set(cols["group"]) - set(objectives))
    if unknown:
        rows = [i for i, g in enumerate(cols["group"]) if g == unknown[0]]
        raise UserError(
            f"feedback {uri!r}: group {unknown[0]!r} (row {rows[0]}, {len(rows)} row(s)) is not an objective; "
            f"groups name the policies {objectives}." + (f" Also unknown: {unknown[1:]}." if unknown[1:] else "")
        )
    same = [i for i, (a, b) in enumerate(zip(cols["chosen"], cols["rejected"])) if a == b]
    if same:
        raise UserError(
            f"feedback {uri!r}: row {same[0]} has the same text as chosen and rejected "
            f"({len(same)} such row(s)); a preference needs two different responses."
        )
    return Feedback(uri, cols["prompt"], cols["chosen"], cols["rejected"], cols["group"])
