"""The demo's measurable objectives: programs, not hub models.

Each takes ``(prompts, responses)`` and returns one float per pair, the
signature reward sources use (``function: "mpo_ray.demo.objectives:brevity"``
in a config). They pull against each other on purpose: a short answer is
rarely a detailed one.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9']+")
_UPBEAT = frozenset(
    "great wonderful amazing awesome love fantastic excellent happy glad delighted exciting excited fun "
    "brilliant superb joy enjoy terrific marvelous yay hooray absolutely definitely".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Shorter is better: minus the number of words."""
    return [-float(len(_words(r))) for r in responses]


def detail(prompts: list[str], responses: list[str]) -> list[float]:
    """Longer, richer answers: the number of distinct words."""
    return [float(len(set(_words(r)))) for r in responses]


def enthusiasm(prompts: list[str], responses: list[str]) -> list[float]:
    """Upbeat tone: upbeat-lexicon words and exclamation marks per 10 words."""
    out = []
    for r in responses:
        words = _words(r)
        hits = sum(w in _UPBEAT for w in words) + r.count("!")
        out.append(10.0 * hits / max(len(words), 1))
    return out
