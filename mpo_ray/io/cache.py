"""Where mpo-ray keeps what it derives once and reuses: converted models, tiny test models, sample caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MPO_RAY_CACHE, else the user cache (``$XDG_CACHE_HOME/mpo-ray``, default ``~/.cache/mpo-ray``)."""
    root = os.environ.get("MPO_RAY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mpo-ray"
    return Path(root)
