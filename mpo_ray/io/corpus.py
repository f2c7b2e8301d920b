"""Prompt corpora: read from any fsspec URL, validate, give every prompt a stable id.

Ids matter because seeds and resume both key on them: a prompt keeps its id
(and so its samples) however the corpus is split or reordered. A corpus with
no id column gets ``sha256(prompt)[:16]``.

Text inputs follow one policy, shared with the feedback reader and Ray Data's
reader (`runtime.data.read_corpus`) so that every path sees the same rows:
UTF-8 with an optional byte-order mark (stripped, as for configs); every CSV
cell is the text written in it (an id ``007`` stays ``007``, a prompt ``42`` is
text), and a JSON row that names a key twice is refused rather than silently
keeping the last value.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mpo_ray.core.errors import UserError
from mpo_ray.core.seeds import id_text, prompt_id, row_id
from mpo_ray.io.storage import filesystem

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def corpus_format(uri: str) -> str:
    """'parquet' | 'json' | 'csv' | 'datasets' (a saved HF `datasets` directory), or ValueError."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise UserError(
            f"prompt corpus {uri!r} does not exist (or cannot be reached); check the path / URL and credentials."
        )
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


# --- Text inputs: one policy for corpora and feedback --------------------------


def decode_text(raw: bytes, label: str) -> str:
    """UTF-8 text without a leading byte-order mark (editors on Windows add one; configs accept it too);
    UserError naming the line of the first byte that is not UTF-8. ``label`` names the file in messages."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{label}: line {line} is not UTF-8 text (byte {raw[exc.start]:#04x}); re-encode the file as UTF-8."
        ) from None


class _Object(dict):
    """A JSON object that remembers the first key it was given twice (`json` would silently keep the last)."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def loads(text: str):
    """`json.loads`, with every object an `_Object` that records a duplicated key (checked by `json_row`)."""
    return json.loads(text, object_pairs_hook=_object)


def json_row(value, label: str, where: str, hint: str) -> dict:
    """``value`` (one parsed row) as a dict if it is a JSON object naming each key once; UserError naming
    ``where`` (a line or row) otherwise. Only a row's own keys (its columns) are checked."""
    if not isinstance(value, dict):
        raise UserError(f"{label}: {where} is a JSON {type(value).__name__}, not an object {hint}.")
    if getattr(value, "duplicate", None) is not None:
        raise UserError(
            f"{label}: {where} names the key {value.duplicate!r} twice (JSON would keep only the last); "
            f"keep one {value.duplicate!r} per row."
        )
    return dict(value)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def jsonl_rows(text: str, label: str, hint: str = "with a prompt column") -> list[dict]:
    """One JSON object per line, checked line by line (errors name the line); blank lines are skipped.

    Lines end at LF, CRLF or CR only: `str.splitlines` also breaks at U+2028, U+2029 and U+0085, which
    JSON allows unescaped inside a string, and would cut such a prompt in two."""
    rows = []
    for number, line in enumerate(_LINE_BREAK.split(text), 1):
        if not line.strip():
            continue
        try:
            value = loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label}: line {number} is not JSON ({exc.msg}); one JSON object per line.") from None
        rows.append(json_row(value, label, f"line {number}", hint))
    return rows


def json_columns(rows: list[dict]) -> dict[str, list]:
    """Rows → column name → values (None where a row lacks the key), values kept as parsed: a column may mix
    types (ids 1 and "1" are one id; a prompt that is not text is reported by the caller, by row)."""
    names = dict.fromkeys(k for row in rows for k in row)
    return {name: [row.get(name) for row in rows] for name in names}


def csv_text_options(names: Iterable[str]) -> pacsv.ConvertOptions:
    """Arrow's CSV reader infers numbers, nulls and dates (``007`` → 7.0, ``1.10`` → 1.1, ``NA`` → null); a CSV
    cell is text, so every column is read as the string written, empty cells as ""."""
    return pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
    )


def csv_header(source) -> list[str]:
    """The column names of a CSV (bytes or a binary file object), as Arrow parses them (a leading BOM skipped)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    return pacsv.open_csv(stream).schema.names


def read_csv_text(text: str, label: str) -> pa.Table:
    """A CSV as a table of strings (see `csv_text_options`); UserError when it does not parse or its header
    names a column twice (Arrow keeps both, and a lookup by name would fail or silently take the last)."""
    data = text.encode("utf-8")
    try:
        names = csv_header(data)
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise UserError(
                f"{label}: the header (line 1) names the column {twice!r} twice; give each column its own name."
            )
        return pacsv.read_csv(io.BytesIO(data), convert_options=csv_text_options(names))
    except pa.ArrowInvalid as exc:
        raise UserError(f"{label} does not parse as CSV: {exc}") from None


# --- Reading a corpus on the driver --------------------------------------------


def _read_bytes(uri: str, fmt: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"prompt corpus {uri!r} could not be read as {fmt}: {exc}") from None


def _read_table(uri: str, fmt: str) -> pa.Table:
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
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"prompt corpus {uri!r} could not be read as {fmt}: {exc}") from None
    text = decode_text(_read_bytes(uri, fmt), f"prompt corpus {uri!r}")
    return _read_csv(text, uri) if text.strip() else pa.table({})


def _read_csv(text: str, uri: str) -> pa.Table:
    """A CSV whose rows are its lines: an unclosed quote would otherwise swallow every row after it."""
    table = read_csv_text(text, f"prompt corpus {uri!r}")
    for name in table.column_names:
        for row, value in enumerate(table.column(name).to_pylist()):
            if "\n" in value or "\r" in value:
                raise UserError(
                    f"prompt corpus {uri!r}: row {row}, column {name!r} spans several lines (an unclosed quote "
                    "takes in the rows after it); fix the quoting, or use JSONL or Parquet for multi-line text."
                )
    return table


def _read_columns(uri: str) -> tuple[list[str], int, Callable[[str], list]]:
    """(column names, row count, name → values). JSON rows stay Python values, as Ray Data's reader gives them
    to the generator; other formats are Arrow tables (CSV: all strings), converted one column at a time."""
    fmt = corpus_format(uri)
    if fmt == "json":
        label = f"prompt corpus {uri!r}"
        rows = jsonl_rows(decode_text(_read_bytes(uri, fmt), label), label)
        columns = json_columns(rows)
        return list(columns), len(rows), lambda name: columns[name]
    table = _read_table(uri, fmt)
    return table.column_names, table.num_rows, lambda name: table.column(name).to_pylist()


def read_prompts(uri: str, *, prompt_column: str = "prompt", id_column: str = "prompt_id", limit: int | None = None):
    """(ids, prompts) as two lists of str, validated; the whole corpus must fit the driver (reweighting sizes do)."""
    names, num_rows, column = _read_columns(uri)
    if num_rows == 0:
        raise UserError(f"prompt corpus {uri!r} is empty; it needs at least one row with a `{prompt_column}` column.")
    if prompt_column not in names:
        raise UserError(
            f"prompt corpus {uri!r} has no column {prompt_column!r}; its columns are {names}. "
            "Set `prompt_column` in the config."
        )
    prompts = column(prompt_column)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise UserError(
            f"prompt corpus {uri!r}: column {prompt_column!r} must hold non-empty strings; "
            f"row {bad[0]} is {prompts[bad[0]]!r} "
            f"({len(bad)} bad row(s) in all)."
        )
    if id_column in names:
        ids = [id_text(x) for x in column(id_column)]
        empty = [row for row, i in enumerate(ids) if i is None]
        if empty:
            raise UserError(
                f"prompt corpus {uri!r}: column {id_column!r} has empty ids (row {empty[0]}, {len(empty)} in all); "
                "fill them or drop the column."
            )
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


def check_unique_ids(uri: str, prompt_column: str, id_column: str) -> dict[str, str]:
    """One id, one text: generation writes one row per id, so two rows sharing an id (after normalising its type)
    with different texts are refused, naming both rows. Unreadable files are refused as in `read_prompts`;
    rows that are not text are left for the generator to report as error rows. Returns id → text (what
    generate's resume compares its rows with: an edited prompt is generated again)."""
    names, _, column = _read_columns(uri)
    if prompt_column not in names:
        return {}  # the reader names the missing column
    prompts = column(prompt_column)
    raw_ids = column(id_column) if id_column in names else [None] * len(prompts)
    seen: dict[str, tuple[int, str]] = {}
    for row, (value, raw) in enumerate(zip(prompts, raw_ids)):
        text = value if isinstance(value, str) else ("" if value is None else str(value))
        key = row_id(raw, text)
        if key in seen and seen[key][1] != text:
            raise UserError(
                f"prompt corpus {uri!r}: rows {seen[key][0]} and {row} share the id {key!r} but not their text; "
                "give each prompt its own id."
            )
        seen.setdefault(key, (row, text))
    return {key: text for key, (_, text) in seen.items()}
