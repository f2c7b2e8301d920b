"""Prompt corpora: read from any fsspec URL (`io.tables`), validate, give every prompt a stable id.

Ids matter because seeds and resume both key on them: a prompt keeps its id
(and so its samples) however the corpus is split or reordered. A corpus with
no id column gets ``sha256(prompt)[:16]``. The rows are read by `io.tables`,
whose text policy Ray Data's reader (`runtime.data.read_corpus`) follows too.
"""

from __future__ import annotations

from mpo_ray.core.errors import UserError
from mpo_ray.core.seeds import id_text, prompt_id, row_id
from mpo_ray.io.storage import filesystem
from mpo_ray.io.tables import Columns, read_columns, table_format

WHAT = "prompt corpus"
HINT = "with a prompt column"  # what a JSON row that is not an object is told it should be


def corpus_format(uri: str) -> str:
    """'parquet' | 'json' | 'csv' | 'datasets' (`io.tables.table_format`); UserError when the corpus is missing,
    cannot be reached, is of no known type or is an empty file."""
    try:
        fmt = table_format(uri, WHAT)
        fs, path = filesystem(uri)
        empty = fmt != "datasets" and not fs.isdir(path) and fs.size(path) == 0
    except UserError:
        raise
    except Exception as exc:  # credentials, network, permissions: fsspec backends raise their own types
        raise UserError(
            f"{WHAT} {uri!r} cannot be reached ({type(exc).__name__}: {str(exc)[:200]}); check the URL and credentials."
        ) from None
    if empty:
        raise UserError(f"{WHAT} {uri!r} is an empty file; it needs rows with a prompt column.")
    return fmt


def _read_columns(uri: str) -> Columns:
    """The corpus's columns (see `io.tables.Columns`). A CSV's rows must be its lines: an unclosed quote would
    otherwise swallow every row after it."""
    fmt = table_format(uri, WHAT)
    columns = read_columns(uri, fmt, WHAT, HINT)
    for name in columns.names if fmt == "csv" else ():
        for row, value in enumerate(columns.values(name)):
            if "\n" in value or "\r" in value:
                raise UserError(
                    f"{WHAT} {uri!r}: row {row}, column {name!r} spans several lines (an unclosed quote "
                    "takes in the rows after it); fix the quoting, or use JSONL or Parquet for multi-line text."
                )
    return columns


def read_prompts(uri: str, *, prompt_column: str = "prompt", id_column: str = "prompt_id", limit: int | None = None):
    """(ids, prompts) as two lists of str, validated; the whole corpus must fit the driver (reweighting sizes do)."""
    columns = _read_columns(uri)
    names, column = columns.names, columns.values
    if columns.num_rows == 0:
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
    columns = _read_columns(uri)
    names, column = columns.names, columns.values
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
