"""Ray Data plumbing for bulk generation: read a corpus, map row stages over replicas, write Parquet.

The stages themselves are plain functions and classes (`prepare_rows`,
`models.generator.GenerationWorker`) that know nothing of Ray; this module is
where they meet Ray Data.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from mpo_ray.core.errors import UserError
from mpo_ray.io import storage
from mpo_ray.io.schemas import GENERATION_SCHEMA


def arrow_path(uri: str):
    """(path, pyarrow filesystem or None) for Ray Data, from any fsspec URL."""
    from fsspec.implementations.local import LocalFileSystem
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return (path, None) if isinstance(fs, LocalFileSystem) else (path, PyFileSystem(FSSpecHandler(fs)))


def configure(progress: bool) -> None:
    """Ray Data's progress bars and log level follow ``progress``."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)


def read_corpus(uri: str, fmt: str, prompt_column: str):
    """The corpus as a Ray Dataset; UserError when it does not parse, is empty or lacks the prompt column."""
    import ray
    import ray.data

    if fmt == "datasets":
        import datasets

        ds = datasets.load_from_disk(uri)
        ds = ray.data.from_huggingface(ds[next(iter(ds))] if isinstance(ds, datasets.DatasetDict) else ds)
    else:
        path, fs = arrow_path(uri)
        read = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv}.get(fmt)
        ds = read(path, filesystem=fs) if read else ray.data.read_json(path, lines=True, filesystem=fs)
    try:
        schema = ds.schema()  # one small read for text formats, the footer for Parquet
    except (ray.exceptions.RayError, pa.ArrowException, OSError) as exc:
        cause = str(getattr(exc, "cause", exc)).strip().splitlines()[-1][:300]
        raise UserError(f"prompt corpus {uri!r} could not be read: {cause}") from None
    if schema is None:
        raise UserError(f"prompt corpus {uri!r} is empty; it needs rows with a `{prompt_column}` column.")
    if prompt_column not in schema.names:
        raise UserError(f"prompt corpus {uri!r} has no column {prompt_column!r}; its columns are {schema.names}. "
                        "Set `generate.prompt_column` in the config.")
    return ds


def map_rows(ds, fn, *, fn_kwargs: dict, batch_size: int):
    """``fn`` (a pure numpy-batch → Arrow function) over every block, re-cut into blocks of ``batch_size`` rows
    (one batch per actor task: files land steadily and replicas share the work)."""
    return ds.map_batches(fn, batch_format="numpy", batch_size=None, fn_kwargs=fn_kwargs).repartition(
        target_num_rows_per_block=batch_size)


def generate_parquet(ds, worker_cls, worker_kwargs: dict, plan: dict, *, batch_size: int, staging: str,
                     rows_per_file: int) -> None:
    """Rows → ``worker_cls`` replicas (``plan``: concurrency, num_gpus, num_cpus) → Parquet files under ``staging``."""
    import ray.data

    rows = ds.map_batches(
        worker_cls, batch_format="pyarrow", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan["concurrency"]), num_gpus=plan["num_gpus"], num_cpus=plan["num_cpus"],
        fn_constructor_kwargs=worker_kwargs,
    )
    path, fs = arrow_path(staging)
    rows.write_parquet(path, filesystem=fs, schema=GENERATION_SCHEMA, min_rows_per_file=rows_per_file,
                       max_rows_per_file=rows_per_file)
