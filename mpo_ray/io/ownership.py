"""Output directories are mpo-ray's only if it made them: a marker says which workflow did.

A user's files are never overwritten, emptied or deleted. Every workflow checks
its output before any work starts: a missing or empty directory is fine; one
that holds this workflow's marker is resumed or reused; anything else is
refused, naming what is there. The marker is written just before the first
output file, so a run refused on bad input leaves nothing behind.
"""

from __future__ import annotations

import datetime

from mpo_ray import __version__
from mpo_ray.core.errors import UserError
from mpo_ray.io import storage

META_DIR = "__mpo_ray__"  # pyarrow, pandas and `datasets` readers all skip a directory named `__…`
OWNER_FILE = f"{META_DIR}/owner.json"
FORMAT = "mpo-ray/owner"


def check_ours(uri: str, kind: str, *, what: str = "output") -> bool:
    """True when ``uri`` holds an earlier ``kind`` run's output, False when it is absent or empty;
    UserError for a file, a corrupt marker, another workflow's output or a directory mpo-ray did not make."""
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        return False
    if not fs.isdir(path):
        raise UserError(f"{what} {uri!r} is a file; give a directory (mpo-ray does not overwrite files it did not make).")
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
            raise UserError(f"{what} {uri!r}: its marker {marker!r} is unreadable; choose another directory, or delete "
                            "the directory by hand if you are sure it is an mpo-ray output.")
        if made_by != kind:
            raise UserError(f"{what} {uri!r} holds the output of `mpo-ray {made_by}`, not of `mpo-ray {kind}`; "
                            "choose another directory.")
        return True
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise UserError(f"{what} {uri!r} is not empty ({shown}) and was not made by `mpo-ray {kind}`; choose a new or "
                    "empty directory (mpo-ray never writes into a directory it did not make).")


def mark_ours(uri: str, kind: str, **info) -> None:
    """Write the marker (once): from now on ``uri`` is this workflow's output."""
    marker = storage.join(uri, OWNER_FILE)
    if not storage.exists(marker):
        storage.write_json(marker, {"format": FORMAT, "kind": kind, "library_version": __version__,
                                    "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), **info})
