"""What a generation set serves, named once so every record says the same (issue 19).

MPO's guarantee — no policy beats π_λ* on J = min_k E[ℓ_k] − KL(π‖π_ref) — holds for the
sequence-level π_λ* ∝ Π_k π_k^λ_k. A decoder hosting the K policies samples the token-level
mixture softmax(Σ_k λ_k log π_k) instead, which falls short of it; resampling one of n
token-level candidates by the importance weight π_λ/q closes the gap as n grows, at n× the
decoding. `mpo-ray bench serving` measures the gap exactly (at the exact λ* of its hard world:
0.115 nats with one candidate, 0.026 with 4, 0.005 with 16).
"""

from __future__ import annotations


def serving(num_candidates: int) -> dict:
    """The record of a serving mode, for manifests, sweep.json and weights.json."""
    if num_candidates == 1:
        return {"mode": "token-level", "num_candidates": 1,
                "serves": "the token-level mixture softmax(Σ_k λ_k log π_k), an approximation of π_λ"}
    return {"mode": "resampled", "num_candidates": num_candidates,
            "serves": f"one of {num_candidates} token-level candidates resampled by π_λ/q, nearer π_λ as n grows"}
