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


def id_text(raw_id) -> str | None:
    """An id column's value as text, or None when it is missing (None, NaN, ""). A JSON id 1 and "1" are one id
    (documented); CSV ids arrive as the text written, so ``007`` and ``7`` stay two."""
    if raw_id is None or (isinstance(raw_id, float) and raw_id != raw_id):
        return None
    return str(raw_id) or None


def row_id(raw_id, text: str) -> str:
    """A corpus row's id: its id column as text (`id_text`), or the hash of its prompt when it has none."""
    return id_text(raw_id) or prompt_id(text)
