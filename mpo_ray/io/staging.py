"""Generate's output files: staged by Ray Data, promoted whole, counted and resumed (docs/design.md §3).

<output>/*.parquet holds one row per prompt (GENERATION_SCHEMA); Ray Data writes into
<output>/__mpo_ray__/staging/<attempt>/ (pyarrow, pandas and `datasets` all skip a directory named `__…`).

Why staging: Ray Data writes files in place, so a reader or a resumed run could meet a
half-written one. A Parquet file whose footer reads is complete: staged files are promoted
(rewritten atomically with a digest of their values) once they read; truncated ones are
deleted. A rerun promotes what a stopped run left, reads the ids already written (a file
that no longer matches its digest is removed and its prompts generated again; a row whose
prompt text changed since is dropped from its file and generated again) and generates only
the rest; promotion drops ids already present, so retried work never yields a second row.
Only files this output's runs wrote (their footer names the file and the settings'
fingerprint) are counted, rewritten or removed; anything else there is left alone.
"""

from __future__ import annotations

import logging
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mpo_ray.io import storage
from mpo_ray.io.ownership import META_DIR, owns_file, remove_ours
from mpo_ray.io.schemas import GENERATION_SCHEMA, with_generation_columns

log = logging.getLogger(__name__)


def staging_dir(output: str, attempt: str | None = None) -> str:
    """Where Ray Data writes: one directory per attempt under the output's `META_DIR`."""
    return storage.join(output, META_DIR, "staging", *([attempt] if attempt else []))


def written_rows(output: str, fingerprint: str) -> dict[str, tuple[str, str]]:
    """prompt id → (prompt text, file) for the rows the output holds in files this output's runs wrote.

    A file of ours that no longer matches its digest is removed (its prompts are generated again); any other
    file (a user's, a copy, another output's) is left alone, named, and not counted."""
    rows: dict[str, tuple[str, str]] = {}
    for uri in storage.list_files(output):
        meta = storage.parquet_metadata(uri) or {}
        if not owns_file(uri) or meta.get(storage.FINGERPRINT_KEY, b"").decode() != fingerprint:
            log.warning(
                "left alone: %s (not written by this output's runs); its rows are not counted as generated.", uri
            )
            continue
        try:
            table = storage.read_parquet(uri, columns=["prompt_id", "prompt"], verify=True)
        except storage.CorruptFile as exc:
            log.warning("%s Its prompts are generated again.", exc)
            remove_ours(uri, output, why="changed on disk since it was written")
            continue
        for pid, text in zip(table.column("prompt_id").to_pylist(), table.column("prompt").to_pylist()):
            rows.setdefault(pid, (text, uri))
    return rows


def drop_stale(output: str, rows: dict[str, tuple[str, str]], corpus: dict[str, str], fingerprint: str) -> set[str]:
    """Rewrite (atomically, they are ours) the files holding rows whose prompt text the corpus has since changed,
    without those rows; returns the ids kept, so the changed prompts are generated again, never served stale."""
    stale = {pid for pid, (text, _) in rows.items() if pid in corpus and corpus[pid] != text}
    for uri in sorted({rows[pid][1] for pid in stale}):
        table = storage.read_parquet(uri, verify=True)
        keep = pc.invert(pc.is_in(table.column("prompt_id"), pa.array(sorted(stale), pa.string())))
        write_rows(uri, table.filter(keep), fingerprint)
    if stale:
        log.info(
            "generate: %d prompt(s) changed their text since they were generated (first: %r); generating them again",
            len(stale),
            sorted(stale)[0],
        )
    return set(rows) - stale


def write_rows(uri: str, table: pa.Table, fingerprint: str) -> None:
    """Generation rows with this output's fingerprint: a file of another output is not taken for this one's."""
    storage.write_parquet(uri, with_generation_columns(table).cast(GENERATION_SCHEMA), fingerprint=fingerprint)


def promote(output: str, done: set[str], fingerprint: str = "") -> list[str]:
    """Promote complete staged files into ``output`` (without ids in ``done``, which grows; with a content digest
    and this output's ``fingerprint``, written atomically); delete the rest. Returns the promoted files' URLs.

    Staging is inside `META_DIR`, which only mpo-ray writes (never through a link: `check_ours`); a name that a
    file mpo-ray did not write already takes in ``output`` is never replaced: the promoted file gets another."""
    fs, root = storage.filesystem(staging_dir(output))
    if not fs.exists(root):
        return []
    promoted = []
    for attempt in sorted(fs.ls(root, detail=False)):
        for path in sorted(fs.find(attempt)):
            name = path.rsplit("/", 1)[-1]
            if not name.endswith(".parquet"):  # not Ray Data's: left alone (and the directory with it)
                continue
            try:
                with fs.open(path, "rb") as f:
                    table = pq.read_table(f)
            except (pa.ArrowException, OSError):  # no footer: the writer was stopped mid-file
                fs.rm(path)
                continue
            keep = []
            for i in table.column("prompt_id").to_pylist():  # ids not written yet, first occurrence only
                keep.append(i not in done)
                done.add(i)
            if any(keep):  # without duplicates, with its content digest, atomically in place
                target = storage.join(output, name)
                while storage.exists(target) and not owns_file(target):
                    target = storage.join(output, f"{name.removesuffix('.parquet')}-{uuid.uuid4().hex[:8]}.parquet")
                write_rows(target, table.filter(pa.array(keep)), fingerprint)
                promoted.append(target)
            fs.rm(path)
        _remove_empty_dir(fs, attempt)
    _remove_empty_dir(fs, root)
    return promoted


def _remove_empty_dir(fs, path: str) -> None:
    """Directories go only once empty: whatever else is in them stays."""
    try:
        if not fs.ls(path, detail=False):
            fs.rmdir(path)
    except OSError:
        pass


def file_stats(uris: list[str]) -> dict:
    """Rows, error rows and generated tokens in generation files (two columns read)."""
    if not uris:
        return {"rows": 0, "errors": 0, "generated_tokens": 0}
    t = storage.read_parquet_files(uris, columns=["num_tokens", "error"])
    tokens = int(pc.sum(t.column("num_tokens")).as_py() or 0)
    return {"rows": t.num_rows, "errors": t.num_rows - t.column("error").null_count, "generated_tokens": tokens}
