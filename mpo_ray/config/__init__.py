"""The configuration layer: schema.py says what a valid section is, document.py what a valid config is (and how a
mapping plus overrides becomes one), loader.py reads one from YAML.

It imports neither torch, ray nor transformers: a config loads and validates in milliseconds, before anything expensive.
"""

from mpo_ray.config.document import Config, config_from_dict
from mpo_ray.config.loader import load_config
from mpo_ray.config.schema import (
    DTYPES,
    NIGHT_ID,
    ConfigError,
    DecodingParams,
    GateConfig,
    GenerateConfig,
    NightlyConfig,
    PolicySpec,
    ResourcesConfig,
    RewardSpec,
    ReweightConfig,
    SamplingConfig,
    ScoringSection,
    SolverConfig,
)

__all__ = [
    "DTYPES",
    "NIGHT_ID",
    "Config",
    "ConfigError",
    "DecodingParams",
    "GateConfig",
    "GenerateConfig",
    "NightlyConfig",
    "PolicySpec",
    "ResourcesConfig",
    "ReweightConfig",
    "RewardSpec",
    "SamplingConfig",
    "ScoringSection",
    "SolverConfig",
    "config_from_dict",
    "load_config",
]
