"""Benchmarks run by `mpo-ray bench ...`: they print figures and ratios, never assert timings.

Also the argparse types of every count on the command line (`mpo-ray` itself and each benchmark): a
count of 0 or -3 is refused with argparse's one-line usage error, exit status 2, before any work starts,
instead of silently meaning "none" or "all but the last three" (Python slicing) further down.
"""

from __future__ import annotations

import argparse


def int_between(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


positive_int = int_between(1)  # counts: prompts, samples, tokens, repeats, threads, ...
non_negative_int = int_between(0)  # seeds (the configs' `seed` is >= 0 too)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (tolerances)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int_list(text: str) -> list[int]:
    """An argparse type: comma-separated counts, e.g. ``1,2,3``."""
    return [positive_int(part.strip()) for part in text.split(",")]
