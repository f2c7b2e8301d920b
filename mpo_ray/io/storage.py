"""Files on any fsspec URL, written so that a reader never sees half a file.

Every artifact is written to a temporary sibling and then moved into place.
On local and POSIX-like filesystems the move is an atomic rename; on object
stores (s3, gcs) the upload itself is atomic, so the final key appears whole.
Temporary names start with ``_tmp-`` and are ignored by every reader here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mpo_ray.core.errors import UserError

TMP_PREFIX = "_tmp-"


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a URL or local path; raises ValueError on an unknown protocol."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as exc:
        raise UserError(
            f"cannot open {uri!r}: {exc}. Use a local path or an fsspec URL such as s3://bucket/dir."
        ) from None
    return fs, path


def arrow_path(uri: str):
    """(path, pyarrow filesystem or None for a local path) for readers and writers that take Arrow's filesystems
    (Ray Data's), from any fsspec URL."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(uri)
    return (path, None) if isinstance(fs, LocalFileSystem) else (path, PyFileSystem(FSSpecHandler(fs)))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def _write_atomic(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}" if parent else f"{TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException as exc:  # nothing half-written stays behind, whatever stopped us
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
            raise UserError(
                f"cannot write {uri!r}: {os.strerror(exc.errno)}; free space or fix permissions, then rerun "
                "(finished files are kept and reused)."
            ) from None
        raise


_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}


def write_bytes(uri: str, data: bytes) -> None:
    _write_atomic(uri, data)


def write_text(uri: str, text: str) -> None:
    _write_atomic(uri, text.encode("utf-8"))


def write_json(uri: str, obj) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8")


def read_json(uri: str):
    return json.loads(read_text(uri))


SEAL = "sha256"  # the key a sealed JSON document keeps its own digest under


def sealed(obj: dict) -> dict:
    """``obj`` with a digest of its canonical JSON (every other key), so a changed byte is detected on reading."""
    body = {k: v for k, v in obj.items() if k != SEAL}
    return {**body, SEAL: hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def check_seal(obj, source: str) -> None:
    """CorruptFile when a sealed document no longer matches its digest (documents without a seal pass)."""
    if isinstance(obj, dict) and SEAL in obj and sealed(obj)[SEAL] != obj[SEAL]:
        raise CorruptFile(
            f"{source} does not match the digest it was written with (changed on disk); restore it or write it again."
        )


def is_link(uri: str) -> bool:
    """A symbolic link (local paths; object stores have none): mpo-ray never writes or deletes through one."""
    fs, path = filesystem(uri)
    return isinstance(fs, LocalFileSystem) and os.path.islink(path)


def remove(uri: str) -> None:
    """Delete one file: never a link (callers delete only files mpo-ray wrote: `ownership.remove_ours`)."""
    fs, path = filesystem(uri)
    if is_link(uri):
        raise UserError(f"{uri!r} is a symbolic link; mpo-ray never deletes through one.")
    fs.rm(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


DIGEST_KEY = b"mpo_ray.content_sha256"
NAME_KEY = b"mpo_ray.file"  # the name a file was written under: a copy under another name is not the file we wrote
FINGERPRINT_KEY = b"mpo_ray.fingerprint"  # what produced the rows (settings, models, prompts): the resume key


class CorruptFile(UserError):
    """A file mpo-ray wrote no longer reads back as written (a bit flip, a truncated copy, an edit by hand)."""


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's values (not its layout, chunking or metadata): equal tables, equal digests."""
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode() + b"\0" + json.dumps(table.column(name).to_pylist(), default=repr).encode() + b"\0")
    return h.hexdigest()


def write_parquet(uri: str, table: pa.Table, *, fingerprint: str | None = None) -> None:
    """Atomically, with the values' digest and the file's own name in its metadata (checked by
    ``read_parquet(verify=True)``; the name is how `ownership` tells our files from a user's), and the
    ``fingerprint`` of what produced the rows, which a resumed run compares with its own."""
    metadata = {
        **(table.schema.metadata or {}),
        DIGEST_KEY: table_digest(table).encode(),
        NAME_KEY: basename(uri).encode(),
        **({FINGERPRINT_KEY: fingerprint.encode()} if fingerprint is not None else {}),
    }
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buf)
    _write_atomic(uri, buf.getvalue())


def list_files(uri: str, suffix: str = ".parquet") -> list[str]:
    """Finished files directly under ``uri`` (temporaries skipped), sorted, as full URLs."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    protocol = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    names = []
    for p in fs.ls(path, detail=False):
        base = p.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(suffix) and not base.startswith(TMP_PREFIX):
            names.append(join(uri, base) if protocol else p)
    return sorted(names)


def read_parquet(
    uri: str, *, columns: list[str] | None = None, verify: bool = False, same_name: bool = True
) -> pa.Table:
    """A Parquet file (only ``columns``, when given); with ``verify``, CorruptFile unless it reads back exactly as
    `write_parquet` wrote it, under the name it was written with (``same_name=False``: a renamed copy's values are
    still verified). Verifying reads every column: the digest covers them all."""
    fs, path = filesystem(uri)
    if not verify:
        with fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns)
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        meta = table.schema.metadata or {}
        expected, name = meta.get(DIGEST_KEY), meta.get(NAME_KEY)
        matches = expected is not None and table_digest(table) == expected.decode("ascii")
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, bad JSON in metadata
        raise CorruptFile(f"{uri} cannot be read back ({type(exc).__name__}: {str(exc)[:200]}).") from None
    if expected is None:
        raise CorruptFile(f"{uri} carries no content digest; it was not written by this mpo-ray or was rewritten.")
    if not matches:
        raise CorruptFile(f"{uri} does not match the digest it was written with (changed on disk).")
    if same_name and name is not None and name.decode("utf-8", "replace") != basename(uri):
        raise CorruptFile(
            f"{uri} is a copy of {name.decode('utf-8', 'replace')!r}, not the file written under this name."
        )
    return table if columns is None else table.select(columns)


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def parquet_metadata(uri: str) -> dict[bytes, bytes] | None:
    """A Parquet file's key-value metadata from its footer alone (None when the footer does not read)."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return dict(pq.ParquetFile(f).schema_arrow.metadata or {})
    except (pa.ArrowException, OSError, ValueError):
        return None


def read_parquet_files(uris: list[str], *, columns: list[str] | None = None) -> pa.Table:
    """Several Parquet files (at least one) as one table (schemas unified: a column missing from one file is null
    there)."""
    return pa.concat_tables([read_parquet(u, columns=columns) for u in uris], promote_options="default")


def check_writable(uri: str) -> None:
    """Fail early (ValueError) when ``uri`` cannot be written, leaving nothing behind."""
    fs, path = filesystem(uri)
    probe = f"{path.rstrip('/')}/{TMP_PREFIX}probe-{uuid.uuid4().hex}"
    try:
        existed = fs.exists(path)
        fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"")
        fs.rm(probe)
        if not existed and not fs.ls(path, detail=False):
            fs.rmdir(path)  # leave no trace: the pipeline creates it when it has something to write
    except Exception as exc:  # permissions, read-only buckets, a file in the way...
        raise UserError(
            f"output location {uri!r} is not writable ({type(exc).__name__}: {exc}); choose another --output."
        ) from None
