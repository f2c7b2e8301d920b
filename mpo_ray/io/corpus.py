"""Prompt corpora: read from any fsspec URL, validate, give every prompt a stable id.

Ids matter because seeds and resume both key on them: a prompt keeps its id
(and so its samples) however the corpus is split or reordered. A corpus with
no id column gets ``sha256(prompt)[:16]``.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mpo_ray.core.errors import UserError
from mpo_ray.core.seeds import prompt_id, row_id
from mpo_ray.io.storage import filesystem

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def corpus_format(uri: str) -> str:
    """'parquet' | 'json' | 'csv' | 'datasets' (a saved HF `datasets` directory), or ValueError."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise UserError(f"prompt corpus {uri!r} does not exist (or cannot be reached); check the path / URL and credentials.")
    if fs.isdir(path):
        if fs.exists(f"{path.rstrip('/')}/dataset_info.json") or fs.exists(f"{path.rstrip('/')}/dataset_dict.json"):
            return "datasets"
        if any(p.endswith(".parquet") for p in fs.ls(path, detail=False)):
            return "parquet"
        raise UserError(f"prompt corpus directory {uri!r} holds neither Parquet files nor a saved `datasets` dataset.")
    for suffix, fmt in FORMATS.items():
        if path.endswith(suffix):
            return fmt
    raise UserError(f"prompt corpus {uri!r}: unknown file type; use .parquet, .jsonl, .csv or a `datasets` directory.")


def _read_table(uri: str) -> pa.Table:
    fmt = corpus_format(uri)
    fs, path = filesystem(uri)
    try:
        if fmt == "datasets":
            import datasets

            ds = datasets.load_from_disk(uri)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[next(iter(ds))]
            return ds.data.table
        if fmt == "parquet":
            return pq.read_table(path, filesystem=fs)
        with fs.open(path, "rb") as f:
            raw = f.read()
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"prompt corpus {uri!r} could not be read as {fmt}: {exc}") from None
    text = _utf8(raw, uri)
    if not text.strip():
        return pa.table({})
    return _read_csv(text, uri) if fmt == "csv" else _read_jsonl(text, uri)


def _utf8(raw: bytes, uri: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"prompt corpus {uri!r}: line {line} is not UTF-8 text (byte {raw[exc.start]:#04x}); "
                        "re-encode the file as UTF-8.") from None


def _read_jsonl(text: str, uri: str) -> pa.Table:
    try:
        return pa.Table.from_pylist(_jsonl_rows(text, uri))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(f"prompt corpus {uri!r}: columns hold mixed types ({exc}); give each key one type.") from None


def _jsonl_rows(text: str, uri: str) -> list[dict]:
    """One JSON object per line, checked line by line (errors name the line)."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"prompt corpus {uri!r}: line {number} is not JSON ({exc.msg}); one JSON object per line.") from None
        if not isinstance(row, dict):
            raise UserError(f"prompt corpus {uri!r}: line {number} is a JSON {type(row).__name__}, not an object with a "
                            "prompt column.")
        rows.append(row)
    return rows


def _read_csv(text: str, uri: str) -> pa.Table:
    """A CSV whose rows are its lines: an unclosed quote would otherwise swallow every row after it."""
    try:
        table = pacsv.read_csv(io.BytesIO(text.encode("utf-8")))
    except pa.ArrowInvalid as exc:
        raise UserError(f"prompt corpus {uri!r} does not parse as CSV: {exc}") from None
    for name in table.column_names:
        for row, value in enumerate(table.column(name).to_pylist()):
            if isinstance(value, str) and ("\n" in value or "\r" in value):
                raise UserError(f"prompt corpus {uri!r}: row {row}, column {name!r} spans several lines (an unclosed quote "
                                "takes in the rows after it); fix the quoting, or use JSONL or Parquet for multi-line text.")
    return table


def read_prompts(uri: str, *, prompt_column: str = "prompt", id_column: str = "prompt_id", limit: int | None = None):
    """(ids, prompts) as two lists of str, validated; the whole corpus must fit the driver (reweighting sizes do)."""
    table = _read_table(uri)
    if table.num_rows == 0:
        raise UserError(f"prompt corpus {uri!r} is empty; it needs at least one row with a `{prompt_column}` column.")
    if prompt_column not in table.column_names:
        raise UserError(
            f"prompt corpus {uri!r} has no column {prompt_column!r}; its columns are {table.column_names}. "
            "Set `prompt_column` in the config."
        )
    prompts = table.column(prompt_column).to_pylist()
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise UserError(
            f"prompt corpus {uri!r}: column {prompt_column!r} must hold non-empty strings; row {bad[0]} is {prompts[bad[0]]!r} "
            f"({len(bad)} bad row(s) in all)."
        )
    if id_column in table.column_names:
        ids = [str(x) if x is not None else None for x in table.column(id_column).to_pylist()]
        if any(i is None or not i for i in ids):
            raise UserError(f"prompt corpus {uri!r}: column {id_column!r} has empty ids; fill them or drop the column.")
    else:
        ids = [prompt_id(p) for p in prompts]
    seen: dict[str, int] = {}
    for row, i in enumerate(ids):
        if i in seen:
            raise UserError(
                f"prompt corpus {uri!r}: prompt id {i!r} appears at rows {seen[i]} and {row}; "
                "ids must be unique (duplicate prompts get the same hashed id: drop duplicates)."
            )
        seen[i] = row
    if limit is not None:
        ids, prompts = ids[:limit], prompts[:limit]
    return ids, prompts


def check_unique_ids(uri: str, prompt_column: str, id_column: str) -> None:
    """One id, one text: generation writes one row per id, so two rows sharing an id (after normalising its type)
    with different texts are refused, naming both rows. Unreadable files are refused as in `read_prompts`;
    rows that are not text are left for the generator to report as error rows."""
    if corpus_format(uri) == "json":  # row by row: a prompt of another type is an error row later, not a refusal here
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as f:
            rows = _jsonl_rows(_utf8(f.read(), uri), uri)
        if not any(prompt_column in r for r in rows):
            return  # the reader names the missing column
        prompts = [r.get(prompt_column) for r in rows]
        raw_ids = [r.get(id_column) for r in rows]
    else:
        table = _read_table(uri)
        if prompt_column not in table.column_names:
            return  # the reader names the missing column
        prompts = table.column(prompt_column).to_pylist()
        raw_ids = table.column(id_column).to_pylist() if id_column in table.column_names else [None] * len(prompts)
    seen: dict[str, tuple[int, str]] = {}
    for row, (value, raw) in enumerate(zip(prompts, raw_ids)):
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        key = row_id(raw, text)
        if key in seen and seen[key][1] != text:
            raise UserError(f"prompt corpus {uri!r}: rows {seen[key][0]} and {row} share the id {key!r} but not their text; "
                            "give each prompt its own id.")
        seen.setdefault(key, (row, text))
