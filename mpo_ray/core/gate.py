"""When new weights may replace the served ones, and how often a mixture agrees with labelled preferences.

Pure functions of numbers, so the nightly decision is testable without models.
A preference pair's margin under λ is Σ_k λ_k (ℓ_k(x, chosen) − ℓ_k(x, rejected)):
the mixture's implicit reward prefers ``chosen`` when it is positive.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeedbackEvaluation:
    """How often each λ ranks tonight's pairs as labelled, per group (and ``"min"``): the pairs per group, the new
    λ (``mixed``), the previous λ (None on the first night) and each single policy."""

    pairs: dict[str, int]
    mixed: dict[str, float]
    previous: dict[str, float] | None
    single: dict[str, dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Check:
    """One promotion check: its name, verdict, the value measured (None when not measured) and the limit."""

    check: str
    passed: bool
    value: float | None
    limit: str
    detail: str


def agreement(margins: np.ndarray, groups: list[str], weights) -> dict[str, float]:
    """Per group, the share of pairs whose margin under ``weights`` is positive (a tie counts half); plus "min".

    ``margins[n, k] = ℓ_k(x_n, chosen_n) − ℓ_k(x_n, rejected_n)``.
    """
    score = np.asarray(margins, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)
    wins = (score > 0) + 0.5 * (score == 0)
    groups_arr = np.asarray(groups)
    out = {g: float(wins[groups_arr == g].mean()) for g in dict.fromkeys(groups)}
    out["min"] = min(out.values())
    return out


def evaluate_feedback(
    margins: np.ndarray, groups: list[str], names: list[str], weights, previous=None
) -> FeedbackEvaluation:
    """Agreement per group (and the minimum) of the new λ, the previous λ and each single policy."""
    return FeedbackEvaluation(
        pairs={g: groups.count(g) for g in dict.fromkeys(groups)},
        mixed=agreement(margins, groups, weights),
        previous=agreement(margins, groups, previous) if previous is not None else None,
        single={name: agreement(margins, groups, np.eye(len(names))[k]) for k, name in enumerate(names)},
    )


def gate_checks(
    gate,
    weights,
    gap: float,
    median_ess: float,
    previous=None,
    evaluation: FeedbackEvaluation | None = None,
    ci_width: float | None = None,
) -> list[Check]:
    """Every promotion check with its value, limit and verdict; the first night (no previous λ) skips the comparisons.

    ``gate`` has ``max_gap``, ``min_median_ess``, ``max_agreement_drop``, ``max_drift`` and ``max_ci_width``
    (the config's GateConfig); ``ci_width`` is the widest 90% interval of any λ_k.
    """

    def check(name, passed, value, limit, detail):
        return Check(name, bool(passed), value, limit, detail)

    checks = [
        check("gap", gap <= gate.max_gap, gap, f"<= {gate.max_gap:g}", "certificate gap of the new λ (nats)"),
        check(
            "ess",
            median_ess >= gate.min_median_ess,
            median_ess,
            f">= {gate.min_median_ess:g}",
            "median effective sample size",
        ),
    ]
    if evaluation is None:
        checks.append(
            check("agreement", True, None, f"drop <= {gate.max_agreement_drop:g}", "no feedback tonight: not checked")
        )
    elif previous is None:
        checks.append(
            check(
                "agreement",
                True,
                evaluation.mixed["min"],
                f"drop <= {gate.max_agreement_drop:g}",
                "min-group agreement; no previous weights to compare with",
            )
        )
    else:
        new, old = evaluation.mixed["min"], evaluation.previous["min"]
        checks.append(
            check(
                "agreement",
                old - new <= gate.max_agreement_drop + 1e-12,
                new,
                f">= {old:.3g} − {gate.max_agreement_drop:g}",
                f"min-group agreement on tonight's pairs: new λ {new:.3g}, latest λ {old:.3g}",
            )
        )
    if previous is None:
        checks.append(check("drift", True, None, f"<= {gate.max_drift:g}", "no previous weights (first night)"))
    else:
        drift = 0.5 * float(np.abs(np.asarray(weights) - np.asarray(previous)).sum())
        checks.append(
            check("drift", drift <= gate.max_drift, drift, f"<= {gate.max_drift:g}", "total variation ½‖λ − λ_latest‖₁")
        )
    limit = getattr(gate, "max_ci_width", None)
    if limit is not None:
        checks.append(
            check(
                "ci_width",
                ci_width is not None and ci_width <= limit,
                ci_width,
                f"<= {limit:g}",
                "widest 90% bootstrap interval of any λ_k",
            )
        )
    return checks
