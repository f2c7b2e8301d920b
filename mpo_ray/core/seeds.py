"""Stable prompt ids and per-sample seeds: keyed by content, never by order or batching.

A prompt keeps its id, and so its samples, however a corpus is split, reordered
or resumed; that is what makes reruns exact.
"""

from __future__ import annotations

import hashlib


def prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def derive_seed(seed: int, key: str, *extra: int) -> int:
    """A 63-bit seed from the run seed and a stable key (a prompt id), independent of order and batching."""
    h = hashlib.sha256(f"{seed}:{key}:{':'.join(map(str, extra))}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def row_id(raw_id, text: str) -> str:
    """A corpus row's id: its id column as text (1 and "1" are one id), or the hash of its prompt when it has none."""
    missing = raw_id is None or (isinstance(raw_id, float) and raw_id != raw_id) or not str(raw_id)
    return prompt_id(text) if missing else str(raw_id)
