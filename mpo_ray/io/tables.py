"""The one reader for the tables users give: prompt corpora and feedback, by suffix, from any fsspec URL.

One suffix→format dispatch (`table_format`) serves the driver's reader here and Ray Data's
(`runtime.data.read_corpus`), and text inputs follow one policy on both, so every path sees the same rows:
UTF-8 with an optional byte-order mark (stripped, as for configs); every CSV cell is the text written in it (an
id ``007`` stays ``007``, a prompt ``42`` is text); a JSON file holds one object per line or one array of
objects, and a row that names a key twice is refused rather than silently keeping the last value.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import json
import re
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mpo_ray.core.errors import UserError
from mpo_ray.io.storage import filesystem

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
KINDS = "use .parquet, .jsonl, .csv or a `datasets` directory"


def table_format(uri: str, what: str, fix: str = "check the path / URL and credentials") -> str:
    """'parquet' | 'json' | 'csv' | 'datasets' (a saved HF `datasets` directory; a directory of Parquet files is
    'parquet'). UserError naming ``what`` (e.g. "prompt corpus") when ``uri`` is missing (``fix`` says what to do)
    or of no known type."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise UserError(f"{what} {uri!r} does not exist (or cannot be reached); {fix}.")
    if fs.isdir(path):
        root = path.rstrip("/")
        if fs.exists(f"{root}/dataset_info.json") or fs.exists(f"{root}/dataset_dict.json"):
            return "datasets"
        if any(p.endswith(".parquet") for p in fs.ls(path, detail=False)):
            return "parquet"
        raise UserError(f"{what} directory {uri!r} holds neither Parquet files nor a saved `datasets` dataset.")
    for suffix, fmt in FORMATS.items():
        if path.endswith(suffix):
            return fmt
    raise UserError(f"{what} {uri!r}: unknown file type; {KINDS}.")


@dataclasses.dataclass(frozen=True)
class Columns:
    """A table as read: its column names, row count, and each column's values as Python objects (`values`).

    JSON rows stay the values parsed (a column may mix types: ids 1 and "1" are one id, a prompt that is not text
    is the caller's to name by row), as Ray Data's reader gives them too; Arrow tables (CSV: all strings) are
    converted one column at a time, when asked."""

    names: list[str]
    num_rows: int
    values: Callable[[str], list]

    @classmethod
    def of_table(cls, table: pa.Table) -> Columns:
        return cls(table.column_names, table.num_rows, lambda name: table.column(name).to_pylist())

    @classmethod
    def of_rows(cls, rows: list[dict]) -> Columns:
        columns = json_columns(rows)
        return cls(list(columns), len(rows), columns.__getitem__)


def read_columns(uri: str, fmt: str, what: str, hint: str) -> Columns:
    """The table at ``uri`` in format ``fmt`` (`table_format`'s answer); UserError naming ``what`` and the line,
    row or cause when it does not read. ``hint`` ends the message for a JSON row that is not an object."""
    label = f"{what} {uri!r}"
    fs, path = filesystem(uri)
    try:
        if fmt == "datasets":
            return Columns.of_table(load_dataset(uri).data.table)
        if fmt == "parquet":
            return Columns.of_table(pq.read_table(path, filesystem=fs))
        with fs.open(path, "rb") as f:
            text = decode_text(f.read(), label)
        if fmt == "json":
            return Columns.of_rows(json_rows(text, label, hint))
        return Columns.of_table(read_csv_text(text, label) if text.strip() else pa.table({}))
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{label} could not be read as {fmt}: {exc}") from None


def load_dataset(uri: str):
    """A saved HF `datasets` directory as one `datasets.Dataset` (a DatasetDict's first split)."""
    import datasets

    ds = datasets.load_from_disk(uri)
    return ds[next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds


# --- Text inputs: one policy for every reader ------------------------------------


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


def _loads(text: str):
    """`json.loads`, with every object an `_Object` that records a duplicated key (checked by `_json_row`)."""
    return json.loads(text, object_pairs_hook=_object)


def _json_row(value, label: str, where: str, hint: str) -> dict:
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


def json_rows(text: str, label: str, hint: str) -> list[dict]:
    """The rows of a JSON file: one array of objects, or one object per line (blank lines skipped), each row
    checked (errors name the row or line).

    Lines end at LF, CRLF or CR only: `str.splitlines` also breaks at U+2028, U+2029 and U+0085, which
    JSON allows unescaped inside a string, and would cut such a prompt in two."""
    if text.lstrip().startswith("["):
        try:
            array = _loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label} is not JSON ({exc.msg}, line {exc.lineno}).") from None
        return [_json_row(r, label, f"row {i}", hint) for i, r in enumerate(array)]
    rows = []
    for number, line in enumerate(_LINE_BREAK.split(text), 1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{label}: line {number} is not JSON ({exc.msg}); one JSON object per line.") from None
        rows.append(_json_row(value, label, f"line {number}", hint))
    return rows


def json_columns(rows: list[dict]) -> dict[str, list]:
    """Rows → column name → values (None where a row lacks the key), values kept as parsed."""
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
