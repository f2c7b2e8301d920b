"""mpo-ray: Mixing Preference Optimization on Ray.

The public API is small on purpose: solve for mixing weights from a table of
log-ratios, load policies, score and decode their log-linear mixture. Heavy
modules (torch, ray) are imported lazily so that ``import mpo_ray`` and the
pure-numpy solver stay fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "solve_weights": "mpo_ray.solver",
    "normalize_rewards": "mpo_ray.solver",
    "WeightsResult": "mpo_ray.solver",
    "PolicySpec": "mpo_ray.policies",
    "load_policies": "mpo_ray.policies",
    "score_sequences": "mpo_ray.scoring",
    "MixedPolicy": "mpo_ray.decoding",
    "Generation": "mpo_ray.decoding",
    "evaluate_generations": "mpo_ray.evaluate",
    "train_dpo": "mpo_ray.dpo",
    "DPOConfig": "mpo_ray.dpo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mpo_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
