"""Ray Data plumbing for bulk generation: read a corpus, map row stages over replicas, write Parquet.

The stages themselves are plain functions and classes (`prepare_rows`,
`models.generator.GenerationWorker`) that know nothing of Ray; this module is
where they meet Ray Data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.corpus import HINT, WHAT
from mpo_ray.io.schemas import GENERATION_SCHEMA
from mpo_ray.io.tables import csv_header, csv_text_options, decode_text, json_columns, json_rows, load_dataset

if TYPE_CHECKING:  # resources imports ray, which this module loads only when it runs
    from mpo_ray.runtime.resources import Placement


def configure(progress: bool) -> None:
    """Ray Data's progress bars follow ``progress``; its console lines need ``--verbose`` too.

    Ray Data logs to the console on every run: execution plans at INFO, progress as INFO lines when stdout
    is no terminal, a "no available CPUs, the Dataset job will hang" warning once the actor pool holds the
    CPUs it was given, and ERROR lines that repeat the exception the driver raises anyway. Its console
    handler gets them only when verbose (``runtime.session.set_verbose``); its log file (the session's
    ``logs/ray-data``) keeps everything either way.
    """
    import ray.data

    from mpo_ray.runtime.session import is_verbose

    verbose = is_verbose()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.enable_operator_progress_bars = verbose  # quiet: one bar per dataset, not one per stage
    level = (logging.INFO if progress else logging.ERROR) if verbose else logging.CRITICAL + 1
    for handler in logging.getLogger("ray.data").handlers:  # the console's, not the file's
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(level)


def read_corpus(uri: str, fmt: str, prompt_column: str):
    """The corpus as a Ray Dataset, read as format ``fmt`` (`io.corpus.corpus_format`'s answer: the one suffix
    dispatch); UserError when it does not parse, is empty or lacks the prompt column.

    Rows reach the row stage holding the values `io.tables` reads on the driver (where `check_unique_ids` has
    already checked them), so ids and texts match on both sides: CSV cells as the strings written, JSON rows
    parsed by `io.tables` itself, a leading byte-order mark stripped, other columns as Arrow's Python values."""
    import ray
    import ray.data

    path, fs = storage.arrow_path(uri)
    try:
        if fmt == "datasets":
            ds = ray.data.from_huggingface(load_dataset(uri))
        elif fmt == "parquet":
            ds = ray.data.read_parquet(path, filesystem=fs)
        elif fmt == "csv":
            ds = ray.data.read_csv(path, filesystem=fs, convert_options=_csv_as_text(uri))
        else:
            ds = ray.data.read_binary_files(path, filesystem=fs).map_batches(
                _parse_json, batch_format="pyarrow", batch_size=None, fn_kwargs={"label": f"{WHAT} {uri!r}"}
            )
        schema = ds.schema()  # one small read for text formats, the footer for Parquet
    except (ray.exceptions.RayError, pa.ArrowException, OSError) as exc:
        cause = str(getattr(exc, "cause", exc)).strip().splitlines()[-1][:300]
        raise UserError(f"{WHAT} {uri!r} could not be read: {cause}") from None
    if schema is None or not schema.names:
        raise UserError(f"{WHAT} {uri!r} is empty; it needs rows with a `{prompt_column}` column.")
    if prompt_column not in schema.names:
        raise UserError(
            f"{WHAT} {uri!r} has no column {prompt_column!r}; its columns are {schema.names}. "
            "Set `generate.prompt_column` in the config."
        )
    if fmt in ("parquet", "datasets") and not all(_plain(t) for t in schema.types):
        ds = ds.map_batches(_as_python_values, batch_format="pyarrow", batch_size=None)
    return ds


def _plain(dtype: pa.DataType) -> bool:
    """Whether Arrow → numpy keeps a column's values as the driver's ``to_pylist`` gives them (text does)."""
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_null(dtype)
    )


def _python_column(values: list) -> pa.Array:
    """Values as an Arrow column that reaches a numpy batch unchanged: text as a string column, anything else as
    pickled Python objects. Arrow → numpy turns an int column with a null into floats (id 1 → "1.0"), a
    timestamp into numpy's (another text), a list into an array; the driver sees Python's values."""
    from ray.data.extensions import ArrowPythonObjectArray

    if all(v is None or isinstance(v, str) for v in values):
        return pa.array(values, pa.string())
    return ArrowPythonObjectArray.from_objects(values)


def _as_python_values(batch: pa.Table) -> pa.Table:
    """A Parquet / `datasets` block whose non-text columns hold Python values (see `_python_column`)."""
    return pa.table(
        {
            name: batch.column(name)
            if _plain(batch.column(name).type)
            else _python_column(batch.column(name).to_pylist())
            for name in batch.column_names
        }
    )


def _csv_as_text(uri: str):
    """Arrow's convert options reading every column of the CSV as the text written (Arrow would infer ``007`` as
    7.0 and a prompt ``42`` as a number); Arrow itself skips a leading byte-order mark."""

    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return csv_text_options(csv_header(f))


def _parse_json(batch: pa.Table, label: str) -> pa.Table:
    """Whole JSON files (one per row of ``bytes``) → their rows, parsed by `io.tables` as on the driver: a BOM
    stripped, lines split as there, values as parsed (1 stays 1, "007" stays "007", a missing key is None).

    Not `ray.data.read_json`: its pandas reader turns the string ``"007"`` into 7 and fails on a BOM; Arrow's
    refuses a column that mixes types (ids 1 and "1", a prompt that is not text, which must become an error
    row). Not `read_text` either: it splits lines at U+2028, which JSON allows inside a string."""
    rows = [row for raw in batch.column("bytes").to_pylist() for row in json_rows(decode_text(raw, label), label, HINT)]
    return pa.table({name: _python_column(values) for name, values in json_columns(rows).items()})


def map_rows(ds, fn, *, fn_kwargs: dict, batch_size: int):
    """``fn`` (a pure numpy-batch → Arrow function) over every block, re-cut into blocks of ``batch_size`` rows
    (one batch per actor task: files land steadily and replicas share the work)."""
    return ds.map_batches(fn, batch_format="numpy", batch_size=None, fn_kwargs=fn_kwargs).repartition(
        target_num_rows_per_block=batch_size
    )


def generate_parquet(
    ds, worker_cls, worker_kwargs: dict, plan: Placement, *, batch_size: int, staging: str, rows_per_file: int
) -> None:
    """Rows → ``worker_cls`` replicas (``plan``) → Parquet files under ``staging``."""
    import ray.data

    from mpo_ray.runtime.actors import user_errors
    from mpo_ray.runtime.session import spend_restart_notice

    rows = ds.map_batches(
        worker_cls,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.replicas),
        num_gpus=plan.num_gpus,
        num_cpus=plan.num_cpus,
        fn_constructor_kwargs=worker_kwargs,
    )
    path, fs = storage.arrow_path(staging)
    spend_restart_notice()  # the actor pool below would print a C++ notice on the terminal
    with user_errors():  # a worker's UserError (its constructor's or a batch's) as one line, not Ray Data's wrapping
        rows.write_parquet(
            path,
            filesystem=fs,
            schema=GENERATION_SCHEMA,
            min_rows_per_file=rows_per_file,
            max_rows_per_file=rows_per_file,
        )
