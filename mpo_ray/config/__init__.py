"""The configuration layer: one YAML file describes one mixture and its workflows.

Imports neither torch, ray nor transformers: a config loads and validates in
milliseconds, before anything expensive starts.
"""

from mpo_ray.config.schema import *  # noqa: F401,F403
from mpo_ray.config.schema import (  # noqa: F401
    NIGHT_ID, Config, ConfigError, GateConfig, GenerateConfig, NightlyConfig, PolicySpec, ResourcesConfig,
    ReweightConfig, RewardSpec, SamplingConfig, SolverConfig, config_from_dict, load_config,
)
