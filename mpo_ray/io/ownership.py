"""Output directories are mpo-ray's only if it made them, and inside them only the files it wrote.

A user's files are never overwritten, emptied or deleted. Every workflow checks
its output before any work starts: a missing or empty directory is fine; one
that holds this workflow's marker is resumed or reused; anything else is
refused, naming what is there. The marker is written just before the first
output file, so a run refused on bad input leaves nothing behind.

Ownership goes down to the file: a Parquet file is mpo-ray's when its footer
carries the digest and the very name `storage.write_parquet` wrote it under (a
user's file, or a user's copy of ours under another name, is not). Only such a
file is ever replaced or deleted, never through a symbolic link; everything else
in the directory is left alone and named in a warning.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import os
import posixpath
import re

from mpo_ray import __version__
from mpo_ray.core.errors import UserError
from mpo_ray.io import storage

META_DIR = "__mpo_ray__"  # pyarrow, pandas and `datasets` readers all skip a directory named `__…`
OWNER_FILE = f"{META_DIR}/owner.json"
FORMAT = "mpo-ray/owner"

log = logging.getLogger(__name__)


def check_ours(uri: str, kind: str, *, what: str = "output", subdirs: tuple[str, ...] = ()) -> bool:
    """True when ``uri`` holds an earlier ``kind`` run's output, False when it is absent or empty;
    UserError for a file, a corrupt marker, another workflow's output, a directory mpo-ray did not make, or
    a symbolic link where this workflow writes (its ``subdirs`` and `META_DIR`): writes never go through one."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return False
    for sub in (META_DIR, *subdirs):
        if storage.is_link(storage.join(uri, sub)):
            raise UserError(
                f"{what} {uri!r}: {sub!r} in it is a symbolic link; mpo-ray writes only into directories it "
                "made. Replace the link with a directory, or choose another output."
            )
    if not fs.isdir(path):
        raise UserError(
            f"{what} {uri!r} is a file; give a directory (mpo-ray does not overwrite files it did not make)."
        )
    entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    entries = [e for e in entries if not e.startswith(storage.TMP_PREFIX)]
    if not entries:
        return False
    marker = storage.join(uri, OWNER_FILE)
    if storage.exists(marker):
        try:
            owner = storage.read_json(marker)
            made_by = owner["kind"] if owner.get("format") == FORMAT else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            made_by = None
        if made_by is None:
            raise UserError(
                f"{what} {uri!r}: its marker {marker!r} is unreadable; choose another directory, or delete "
                "the directory by hand if you are sure it is an mpo-ray output."
            )
        if made_by != kind:
            raise UserError(
                f"{what} {uri!r} holds the output of `mpo-ray {made_by}`, not of `mpo-ray {kind}`; "
                "choose another directory."
            )
        return True
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise UserError(
        f"{what} {uri!r} is not empty ({shown}) and was not made by `mpo-ray {kind}`; choose a new or "
        "empty directory (mpo-ray never writes into a directory it did not make)."
    )


def mark_ours(uri: str, kind: str, **info) -> None:
    """Write the marker (once): from now on ``uri`` is this workflow's output."""
    marker = storage.join(uri, OWNER_FILE)
    if not storage.exists(marker):
        storage.write_json(
            marker,
            {
                "format": FORMAT,
                "kind": kind,
                "library_version": __version__,
                "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                **info,
            },
        )


def owns_file(uri: str) -> bool:
    """Whether mpo-ray wrote the Parquet file at ``uri`` under this name (its footer says so; files written
    before names were recorded carry the digest alone). Unreadable footers are not known to be ours."""
    meta = storage.parquet_metadata(uri)
    if meta is None or storage.DIGEST_KEY not in meta:
        return False
    name = meta.get(storage.NAME_KEY)
    return name is None or name.decode("utf-8", "replace") == storage.basename(uri)


def _linked(root: str, uri: str) -> str | None:
    """The first symbolic link on the way from ``root`` down to ``uri`` (``root`` itself may be one)."""
    rel = posixpath.relpath(uri, root) if "://" not in uri else uri[len(root) :].strip("/")
    parts = [p for p in rel.split("/") if p]
    for i in range(1, len(parts) + 1):
        here = storage.join(root, *parts[:i])
        if storage.is_link(here):
            return here
    return None


def remove_ours(uri: str, root: str, *, why: str) -> bool:
    """Delete ``uri`` if mpo-ray wrote it (`owns_file`) and no link lies between ``root`` and it; otherwise leave it
    alone with a warning. True when deleted."""
    link = _linked(root, uri)
    if link is None and owns_file(uri):
        log.info("removing %s (%s)", uri, why)
        storage.remove(uri)
        return True
    reason = f"{link} is a symbolic link" if link else "mpo-ray did not write it under this name"
    log.warning("left alone: %s (%s; %s). Move it out of %s if it should not be there.", uri, why, reason, root)
    return False


_TMP_NAME = re.compile(re.escape(storage.TMP_PREFIX) + r"(probe-)?[0-9a-f]{32}")  # `storage`'s temporaries, exactly


def _matches(parts: tuple[str, ...], patterns) -> bool:
    """``parts`` (a relative path) matches one of ``patterns`` segment by segment (`*` never crosses a '/')."""
    return any(len(p) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, p)) for p in patterns)


def remove_ours_tree(root: str, files, *, parquet=(), fresh=(), why: str, what: str = "output") -> list[str]:
    """Clear the local directory ``root`` of the files mpo-ray wrote into it, file by file, then of the directories
    that leaves empty; returns what was left alone (relative paths, directories with a trailing '/').

    A caller names what its workflows write, as '/'-separated patterns relative to ``root`` (`fnmatch` per segment):
    ``files``, fixed-name files; ``parquet``, Parquet files, removed only when `owns_file`. `storage`'s own
    temporaries in those directories go too. Only directories on a pattern's way are entered, and removed only once
    empty; anything else stays and is named in one warning line. An owner marker stays while the directory it marks
    keeps anything else, so the workflow that made that directory still accepts it (`check_ours`).

    Nothing is removed, and UserError names the path, when a symbolic link stands where a pattern points (mpo-ray
    never deletes or writes through one) or when one of the ``fresh`` directories (ones the caller makes anew, so they
    must end up gone) holds anything mpo-ray did not write."""
    if "://" in root:
        raise UserError(f"{what} {root!r}: only a local directory can be cleared file by file; pass a local path.")
    split = lambda p: tuple(s for s in p.split("/") if s)  # noqa: E731
    files, parquet, fresh = [split(p) for p in files], [split(p) for p in parquet], [split(p) for p in fresh]
    ways = {p[:i] for p in files + parquet for i in range(1, len(p))}  # the directories the patterns go through
    ours, foreign, visited = [], [], []

    def visit(parts: tuple[str, ...]) -> None:
        visited.append(parts)
        with os.scandir(os.path.join(root, *parts)) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = (*parts, entry.name)
            if entry.is_symlink():
                if _matches(rel, files + parquet) or _matches(rel, ways):
                    raise UserError(
                        f"{what} {root!r}: {'/'.join(rel)!r} in it is a symbolic link where mpo-ray writes; "
                        "it never deletes or writes through one. Replace the link with a directory or file "
                        "of your own elsewhere, or choose another output."
                    )
                foreign.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                if _matches(rel, ways):
                    visit(rel)
                elif rel != (META_DIR,):  # the root's own marker directory is the caller's to keep
                    foreign.append((*rel, ""))
            elif (
                _matches(rel, files)
                or _TMP_NAME.fullmatch(entry.name)
                or (_matches(rel, parquet) and owns_file(entry.path))
            ):
                ours.append(rel)
            else:
                foreign.append(rel)

    visit(())
    for f in fresh:
        held = [r for r in foreign if len(r) > len(f) and _matches(r[: len(f)], [f])]
        if held:
            raise UserError(
                f"{what} {root!r}: {'/'.join(held[0][: len(f)])!r} holds "
                f"{', '.join('/'.join(r[len(f) :]) for r in held)}, which mpo-ray did not write, and is made "
                "anew on every run; move those files out of it, then rerun."
            )
    under = lambda rel, d: rel[: len(d)] == d  # noqa: E731
    markers = [r for r in ours if r[-2:] == tuple(OWNER_FILE.split("/"))]
    kept = [m for m in markers if any(under(f, m[:-2]) for f in foreign)]  # its directory keeps a user's file
    removed = [r for r in ours if r not in kept]
    for rel in removed:
        storage.remove(os.path.join(root, *rel))  # refuses a link (none here: links are never entered)
    for parts in sorted(visited, key=len, reverse=True):
        if parts:
            try:
                os.rmdir(os.path.join(root, *parts))  # only once empty: whatever else is in it stays
            except OSError:
                pass
    if removed:
        log.info("removed %d file(s) from %s (%s)", len(removed), root, why)
    left = ["/".join(r) for r in foreign]
    if left:
        log.warning(
            "left alone in %s (%s; mpo-ray did not write them): %s. Move them out if they should not be there.",
            root,
            why,
            ", ".join(left),
        )
    return left
