"""The configuration layer: schema.py says what a valid config is, loader.py reads one from YAML and CLI overrides.

It imports neither torch, ray nor transformers: a config loads and validates in milliseconds, before anything expensive.
"""

from mpo_ray.config.loader import config_from_dict, load_config
from mpo_ray.config.schema import (
    DTYPES, NIGHT_ID, Config, ConfigError, DecodingParams, GateConfig, GenerateConfig, NightlyConfig, PolicySpec,
    ResourcesConfig, ReweightConfig, RewardSpec, SamplingConfig, SolverConfig,
)

__all__ = ["DTYPES", "NIGHT_ID", "Config", "ConfigError", "DecodingParams", "GateConfig", "GenerateConfig", "NightlyConfig",
           "PolicySpec", "ResourcesConfig", "ReweightConfig", "RewardSpec", "SamplingConfig", "SolverConfig",
           "config_from_dict", "load_config"]
