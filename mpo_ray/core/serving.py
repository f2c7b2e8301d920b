"""What a generation set serves, named once so every record says the same (issue 19).

MPO's guarantee — no policy beats π_λ* on J = min_k E[ℓ_k] − KL(π‖π_ref) — holds for the
sequence-level π_λ* ∝ Π_k π_k^λ*_k at the true λ*. A decoder hosting the K policies samples the
token-level mixture softmax(Σ_k λ_k log π_k) instead, which falls short of it; resampling one of n
token-level candidates by the importance weight π_λ/q serves a distribution p_n that approaches π_λ
as n grows (reaching it only as n → ∞), at n× the decoding. `mpo-ray bench serving` measures the gap
exactly (at the exact λ* of its hard world: 0.115 nats with one candidate, 0.026 with 4, 0.005 with
16). For a set one model serves untempered, resampling changes nothing in distribution (its
candidates weigh alike), so it costs n× for nothing (`workflows/sweep.point_candidates`).
"""

from __future__ import annotations


def serving(num_candidates: int, *, one_model: bool = False) -> dict:
    """The record of a serving mode, for manifests, sweep.json and weights.json, with its decoding cost
    (candidates decoded per served response). ``one_model``: a set one model serves (π_ref, a single policy, a
    soup), whose samples are that model's own."""
    if one_model:
        return {
            "mode": "one model",
            "num_candidates": num_candidates,
            "decoding_cost": num_candidates,
            "serves": "the model's own distribution, exactly (untempered, resampling would not change it)"
            if num_candidates == 1
            else "one of n tempered draws resampled towards the untempered model",
        }
    if num_candidates == 1:
        return {
            "mode": "token-level",
            "num_candidates": 1,
            "decoding_cost": 1,
            "serves": "the token-level mixture softmax(Σ_k λ_k log π_k), an approximation of π_λ",
        }
    return {
        "mode": "resampled",
        "num_candidates": num_candidates,
        "decoding_cost": num_candidates,
        "serves": f"one of {num_candidates} token-level candidates resampled by π_λ/q: nearer π_λ as n grows, "
        "equal to it only as n → ∞",
    }
