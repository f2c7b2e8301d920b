"""The weights store: versioned weights artifacts and an atomically replaced `latest` pointer.

    <store>/versions/<version>/weights.json   a weights artifact (written last: its presence commits the version)
    <store>/versions/<version>/report.md      ... and whatever else the night keeps beside it
    <store>/latest.json                       {"version", "weights", "previous", "history", ...}; replaced, never edited
    <store>/latest.lock                       held while a run commits (seconds), broken when stale
    <store>/scores/<fingerprint>/*.parquet    score-table rows already computed with those models and settings

A version is never overwritten: a night writes its directory once, and moving
`latest` is a compare-and-swap under the lock (re-read `latest`, check it is
still the version the night was gated against, replace it with one atomic
write). A crash between writing a version and moving `latest` leaves a complete
version that `latest` does not name yet; :meth:`WeightsStore.recover` (which
every nightly run calls first) finishes that promotion, and only that one: a
version whose gate passed, whose `previous` is still `latest`, and which has
never been `latest` before.

Everything here runs on the driver; any fsspec URL works (memory:// included,
which lives in one process).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from mpo_ray.core.errors import UserError
from mpo_ray.core.names import VERSION_NAME
from mpo_ray.io import storage
from mpo_ray.io.artifact import LATEST_FILE as LATEST
from mpo_ray.io.artifact import LATEST_FORMAT, VERSIONS_DIR, WeightsRecord, read_latest
from mpo_ray.io.artifact import WEIGHTS_FILE as WEIGHTS
from mpo_ray.io.ownership import OWNER_FILE, check_ours, mark_ours, remove_ours

LOCK = "latest.lock"
log = logging.getLogger(__name__)


class StoreConflict(RuntimeError):
    """Another run holds the store's lock or moved `latest` meanwhile: nothing was written; retry later."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class WeightsStore:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def __repr__(self) -> str:
        return f"WeightsStore({self.uri!r})"

    def check_ours(self) -> None:
        """UserError unless the store is new, empty, or a weights store (made by mpo-ray: never a user's directory)."""
        pointer = storage.join(self.uri, LATEST)
        if not storage.exists(storage.join(self.uri, OWNER_FILE)) and storage.exists(pointer):
            try:
                if storage.read_json(pointer).get("format") == LATEST_FORMAT:
                    return  # a store written before stores carried a marker
            except (OSError, ValueError, AttributeError):
                pass
        check_ours(self.uri, "nightly", what="weights store")

    def claim(self) -> None:
        """Mark the store as a weights store before its first write."""
        mark_ours(self.uri, "nightly")

    # --- reading -------------------------------------------------------------

    def version_uri(self, version: str, name: str = WEIGHTS) -> str:
        return storage.join(self.uri, VERSIONS_DIR, version, name)

    def latest(self) -> dict | None:
        """The `latest` pointer, or None before the first promotion (see :func:`artifact.read_latest`)."""
        return read_latest(self.uri)

    def latest_version(self) -> str | None:
        pointer = self.latest()
        return pointer["version"] if pointer else None

    def read_version(self, version: str) -> WeightsRecord | None:
        """A committed version's weights artifact, or None (absent, or a crash left it half-written)."""
        uri = self.version_uri(version)
        return WeightsRecord.read(uri) if storage.exists(uri) else None

    def versions(self) -> list[str]:
        """Committed versions, sorted by name (night ids sort by date)."""
        fs, path = storage.filesystem(storage.join(self.uri, VERSIONS_DIR))
        if not fs.exists(path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        return sorted(n for n in names if not n.startswith(storage.TMP_PREFIX) and storage.exists(self.version_uri(n)))

    # --- writing -------------------------------------------------------------

    def write_version(
        self, version: str, artifact: WeightsRecord, files: dict[str, str | pa.Table] | None = None
    ) -> None:
        """Write a version once: the side files (text or tables) first, weights.json last (the commit marker)."""
        if not VERSION_NAME.match(version):
            raise UserError(
                f"version {version!r} must be a plain name (letters, digits, '.', '_', '-'): it names a directory."
            )
        if storage.exists(self.version_uri(version)):
            raise FileExistsError(f"{self.version_uri(version)} exists; a version is never overwritten.")
        self.claim()
        for name, data in (files or {}).items():
            write = storage.write_text if isinstance(data, str) else storage.write_parquet
            write(self.version_uri(version, name), data)
        artifact.write(self.version_uri(version))

    def promote(self, version: str, *, expected: str | None, reason: str = "gate passed") -> dict:
        """Point `latest` at ``version`` if it still names ``expected`` (compare-and-swap; hold the lock)."""
        current = self.latest()
        now = current["version"] if current else None
        if now != expected:
            raise StoreConflict(
                f"{self.uri}: `latest` is {now!r}, not {expected!r} as when this run started; "
                "another run promoted meanwhile. Rerun to gate against the new `latest`."
            )
        if self.read_version(version) is None:
            raise UserError(f"{self.uri}: version {version!r} is not committed; it cannot become `latest`.")
        pointer = {
            "format": LATEST_FORMAT,
            "version": version,
            "weights": f"{VERSIONS_DIR}/{version}/{WEIGHTS}",
            "previous": now,
            "promoted_at": _now().isoformat(),
            "reason": reason,
            "history": [*(current or {}).get("history", []), version],  # every version that was ever `latest`
        }
        storage.write_json(storage.join(self.uri, LATEST), storage.sealed(pointer))  # temp + rename: old or new
        return pointer

    def pending(self, version: str | None = None) -> str | None:
        """A committed version a crashed run meant to promote: passed, gated against today's `latest`, never latest.

        Only ``version`` is checked when given; otherwise versions newest first,
        down to the first that was ever `latest` (a pending one is newer).
        """
        pointer = self.latest()
        now, history = (pointer["version"], set(pointer.get("history", []))) if pointer else (None, set())
        for candidate in [version] if version else reversed(self.versions()):
            if candidate in history:
                if version is None:
                    break
                continue
            artifact = self.read_version(candidate)
            night = artifact.nightly if artifact is not None else None
            if night is not None and night.passed and night.previous == now:
                return candidate
        return None

    def recover(self, *, owner: str, timeout_s: float, version: str | None = None) -> str | None:
        """Finish a promotion a crash interrupted (of ``version`` only, when given); returns the version
        promoted, if any."""
        if self.pending(version) is None:
            return None
        with self.lock(owner=owner, timeout_s=timeout_s):
            version = self.pending(version)  # again, under the lock
            if version is not None:
                self.promote(version, expected=self.latest_version(), reason="recovered after an interrupted run")
            return version

    @contextlib.contextmanager
    def lock(self, *, owner: str, timeout_s: float):
        """Exclusive while held: created with exclusive create; a lock older than ``timeout_s`` is broken."""
        uri = storage.join(self.uri, LOCK)
        fs, path = storage.filesystem(uri)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        token = uuid.uuid4().hex
        body = json.dumps(
            {
                "owner": owner,
                "token": token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "acquired_at": _now().isoformat(),
                "acquired_unix": time.time(),
            }
        ).encode()
        if not self._create(fs, path, body):
            held = self._read_lock(fs, path)
            if held is not None:  # (None: released meanwhile; try once more)
                age = self._age(fs, path, held)
                if age is None or age < timeout_s:
                    raise StoreConflict(
                        f"{self.uri} is locked by {held.get('owner')!r} (host {held.get('host')}, pid "
                        f"{held.get('pid')}) since {held.get('acquired_at')}; retry later. A lock older than "
                        f"{timeout_s:.0f}s is taken for a crashed run's and broken; if none is running, delete {uri}."
                    )
                if self._read_lock(fs, path) == held:  # still the stale one, not a lock someone just took
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm(path)
            if not self._create(fs, path, body):
                raise StoreConflict(f"{self.uri}: another run took the lock at the same moment; retry later.")
        try:
            yield
        finally:
            held = self._read_lock(fs, path)
            if held is not None and held.get("token") == token:
                fs.rm(path)

    def _create(self, fs, path: str, body: bytes) -> bool:
        """Exclusive create: local files, memory://, and object stores with conditional writes
        (s3fs >= 2025.7, gcsfs, adlfs)."""
        try:
            with fs.open(path, "xb") as f:
                f.write(body)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError) as exc:
            raise UserError(
                f"weights store {self.uri!r}: its filesystem ({type(fs).__name__}) cannot create a file exclusively "
                f"({exc}), which the store's lock needs; upgrade its fsspec driver or put the store elsewhere."
            ) from None

    @staticmethod
    def _read_lock(fs, path: str) -> dict | None:
        """The lock's body; {} while its creator is still writing it (or a crash cut it); None once released."""
        try:
            with fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}

    @staticmethod
    def _age(fs, path: str, held: dict) -> float | None:
        """Seconds since the lock was taken: its own timestamp, else the file's; None when neither is known
        (not stale)."""
        if "acquired_unix" in held:
            return time.time() - float(held["acquired_unix"])
        try:
            modified = fs.modified(path)
        except (FileNotFoundError, NotImplementedError, OSError):
            return None
        if modified.tzinfo is None:  # object stores report UTC; some drivers leave it implicit
            modified = modified.replace(tzinfo=datetime.timezone.utc)
        return (_now() - modified).total_seconds()


# --------------------------------------------------------------------------- #
# Score cache: rows already computed, keyed by prompt id under one fingerprint
# --------------------------------------------------------------------------- #


class ScoreCache:
    """Score-table rows of earlier nights, reused for prompts scored with the same models and settings.

    The directory name is the run fingerprint (model ids, revisions and content
    hashes, sampling, seed, reward sources): a new model revision starts a new
    cache. Within it a row is reused when both its prompt id and its text match.
    """

    def __init__(self, store: WeightsStore, fingerprint: str):
        self.store = store
        self.uri = storage.join(store.uri, "scores", fingerprint)

    def lookup(self, ids: list[str], prompts: list[str]) -> tuple[pa.Table | None, set[str]]:
        """(rows of the prompts found, their ids); each prompt's rows come from one file."""
        wanted = dict(zip(ids, prompts))
        found: dict[str, list[str]] = {}  # file → the ids taken from it
        taken: set[str] = set()
        for uri in storage.list_files(self.uri):
            try:
                keys = storage.read_parquet(uri, columns=["prompt_id", "prompt"])  # a small read: two columns
            except (pa.ArrowException, OSError) as exc:  # truncated or damaged: never trusted; deleted only if ours
                log.warning("%s cannot be read (%s); its prompts are scored again.", uri, exc)
                remove_ours(uri, self.store.uri, why="unreadable")
                continue
            hits = {
                i
                for i, p in zip(keys.column("prompt_id").to_pylist(), keys.column("prompt").to_pylist())
                if wanted.get(i) == p and i not in taken
            }
            if hits:
                found[uri] = sorted(hits)
                taken |= hits
        parts = []
        for uri, hit_ids in found.items():
            try:
                table = storage.read_parquet(uri, verify=True)
            except storage.CorruptFile as exc:  # never serve rows that changed on disk: score those prompts again
                log.warning("%s Its %d prompt(s) are scored again.", exc, len(hit_ids))
                taken -= set(hit_ids)
                continue
            parts.append(
                table.filter(pc.is_in(table.column("prompt_id"), pa.array(hit_ids))).replace_schema_metadata(None)
            )
        return (pa.concat_tables(parts) if parts else None), taken
