"""The demo's measurable objectives: programs, not hub models.

Each takes ``(prompts, responses)`` and returns one float per pair, the
signature reward sources use (``function: "mpo_ray.demo.objectives:brevity"``
in a config). The demo serves `brevity`, `relevance` and `enthusiasm`: each
policy trained for one of them costs another (short or upbeat answers drift off
the question; measured in `mpo_ray/demo/data/adapters/README.md`), yet one
answer can win on all three, short, on topic and upbeat. `detail` is the direct
opposite of `brevity` (no answer serves both), kept for configs that want a
pure conflict.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9']+")
_UPBEAT = frozenset(
    "great wonderful amazing awesome love fantastic excellent happy glad delighted exciting excited fun "
    "brilliant superb joy enjoy terrific marvelous yay hooray absolutely definitely".split()
)


# Words that say nothing about a prompt's topic: its question words, fillers and instructions.
_NOT_TOPIC = frozenset(
    "the and are was were for with about that this these those than then what when where which while who whom why how "
    "from into some many much more most very your yours them they their there here have has had does did should would "
    "could can will just like also please write explain describe give tell name list make short brief one two three "
    "people someone something thing things".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _topic_stems(text: str) -> set[str]:
    """Five-letter prefixes of a text's content words (≥ 4 letters): "trains" and "train" match."""
    return {w[:5] for w in _words(text) if len(w) >= 4 and w not in _NOT_TOPIC}


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Shorter is better: minus the number of words."""
    return [-float(len(_words(r))) for r in responses]


def detail(prompts: list[str], responses: list[str]) -> list[float]:
    """Longer, richer answers: the number of distinct words."""
    return [float(len(set(_words(r)))) for r in responses]


def relevance(prompts: list[str], responses: list[str]) -> list[float]:
    """Staying on the question: the share of the prompt's content words (by stem) the response uses."""
    out = []
    for p, r in zip(prompts, responses):
        topic = _topic_stems(p)
        out.append(len(topic & _topic_stems(r)) / len(topic) if topic else 0.0)
    return out


def enthusiasm(prompts: list[str], responses: list[str]) -> list[float]:
    """Upbeat tone: upbeat-lexicon words and exclamation marks per 10 words."""
    out = []
    for r in responses:
        words = _words(r)
        hits = sum(w in _UPBEAT for w in words) + r.count("!")
        out.append(10.0 * hits / max(len(words), 1))
    return out
