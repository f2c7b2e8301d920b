"""What a score or a weight was computed from, so that a changed input is never served stale results.

A local model or adapter is identified by the sha256 of every one of its files,
not by its name or size: a policy retrained in place gets a new identity, and
rows scored with the old one are not reused. Digests are cached by (path, inode,
size, mtime, ctime), so a large model is hashed once, not on every run. The ctime
is what makes the cache safe: an edit in place that restores the old mtime
(``touch -d``, ``cp -p``, ``rsync -t``) cannot restore the ctime, which the kernel
sets on every change, so the file is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

from mpo_ray.io.cache import cache_dir

_DIGESTS = "file-digests.json"


def digest(obj, length: int = 16) -> str:
    """A short sha256 of a JSON-able object (keys sorted): the fingerprint of a set of inputs or settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def tree_digest(path: str) -> str:
    """sha256 over every file under ``path`` (or of the file itself): relative names and contents."""
    files = (
        [path]
        if os.path.isfile(path)
        else sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    )
    known = _load_cache()
    h, changed = hashlib.sha256(), False
    for full in files:
        st = os.stat(full)
        key = f"{os.path.abspath(full)}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
        if key not in known:
            known[key], changed = _file_sha256(full), True
        h.update(f"{os.path.relpath(full, path) if full != path else os.path.basename(full)}\0{known[key]}\n".encode())
    if changed:
        _save_cache(known)
    return h.hexdigest()


def model_identity(spec, local_path=None) -> dict:
    """What an artifact records about a model: its ids, and ``content``, the digest of its files.

    ``local_path(model_or_adapter, revision)`` finds the files a hub id or shorthand (``default``,
    ``tiny:``) stands for; without files (a hub id not downloaded yet) ``content`` names the id and
    revision only, and ``verified`` is False.
    """
    locate = local_path or (lambda ref, revision: ref if os.path.exists(ref) else None)
    ident = {
        "name": spec.name,
        "model": spec.model,
        "adapter": spec.adapter,
        "revision": spec.revision,
        "system_prompt": spec.system_prompt,
    }
    parts, verified = [], True
    for ref in filter(None, [spec.model, spec.adapter]):
        path = locate(ref, spec.revision)
        if path is None:
            parts.append(f"{ref}@{spec.revision or 'main'}")
            verified = False
        else:
            parts.append(tree_digest(path))
    ident["content"] = digest(parts, 32)
    ident["verified"] = verified
    return ident


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_cache() -> dict:
    try:
        with open(cache_dir() / _DIGESTS, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(known: dict) -> None:
    """Best effort, atomic: a concurrent writer can only lose entries, which are then hashed again."""
    target = cache_dir() / _DIGESTS
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{_DIGESTS}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        pass
