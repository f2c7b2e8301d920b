"""mpo-ray: Mixing Preference Optimization on Ray.

The public API is small on purpose: load a config, solve for mixing weights
from a table of log-ratios, read a weights artifact, load policies, score and
decode their log-linear mixture, evaluate generations. Everything else (the
workflows behind the CLI, the demo's DPO loop, the benchmarks) is reached by
its module path and may change. Names resolve lazily, so ``from mpo_ray import
load_config, PolicySpec, solve_weights`` imports neither torch, Ray nor
transformers.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

# public name -> module that defines it
_LAZY = {
    "load_config": "mpo_ray.config",
    "Config": "mpo_ray.config",
    "PolicySpec": "mpo_ray.config",
    "UserError": "mpo_ray.core.errors",
    "solve_weights": "mpo_ray.core.solver",
    "evaluate_weights": "mpo_ray.core.solver",
    "normalize_rewards": "mpo_ray.core.solver",
    "WeightsResult": "mpo_ray.core.solver",
    "WeightsRecord": "mpo_ray.io.artifact",
    "load_policies": "mpo_ray.models.policies",
    "score_sequences": "mpo_ray.models.scoring",
    "MixedPolicy": "mpo_ray.models.decoding",
    "Generation": "mpo_ray.models.decoding",
    "evaluate_generations": "mpo_ray.workflows.evaluate",
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
