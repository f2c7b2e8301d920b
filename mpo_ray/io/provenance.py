"""What a score or a weight was computed from, so that a changed input is never served stale results."""

from __future__ import annotations

import hashlib
import json
import os


def model_identity(spec) -> dict:
    """What an artifact records about a model: path or hub id, revision, and a content fingerprint of local files."""
    ident = {"name": spec.name, "model": spec.model, "adapter": spec.adapter, "revision": spec.revision,
             "system_prompt": spec.system_prompt}
    h = hashlib.sha256()
    for path in filter(None, [spec.model, spec.adapter]):
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    h.update(f"{name}:{os.path.getsize(full)}".encode())
                    if name.endswith(".json"):
                        with open(full, "rb") as f:
                            h.update(f.read())
    ident["fingerprint"] = h.hexdigest()[:16]
    return ident


def digest(obj, length: int = 16) -> str:
    """A short sha256 of a JSON-able object (keys sorted): the fingerprint of a set of inputs or settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
