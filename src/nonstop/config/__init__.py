"""One validated configuration object, read from TOML (`load_config`).

`model` holds what the configuration is (frozen dataclasses with their defaults);
`parse` reads and validates a TOML file into it, naming the key and the fix for every
problem; `sections` names the TOML tables and the dataclass each fills.
"""

from nonstop.config.model import (
    DEFAULT_CLOUD_URL,
    DEFAULT_DISCOVERY_PORTS,
    DEFAULT_LISTEN,
    WORKLOAD_CLASSES,
    ClassRoutingConfig,
    CloudConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    EmbeddedConfig,
    EvalConfig,
    HooksConfig,
    LocalBackendConfig,
    LogConfig,
    RecoveryConfig,
    RouteConfig,
    RoutingConfig,
    ShadowConfig,
    SharedConfig,
    check_exposure,
    default_config_path,
    default_state_dir,
    is_loopback,
    join_listen,
    split_listen,
    state_dir_fix,
)
from nonstop.config.parse import load_config, parse_config
from nonstop.config.sections import SECTION_TYPES

__all__ = [
    "DEFAULT_CLOUD_URL",
    "DEFAULT_DISCOVERY_PORTS",
    "DEFAULT_LISTEN",
    "SECTION_TYPES",
    "WORKLOAD_CLASSES",
    "ClassRoutingConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "EmbeddedConfig",
    "EvalConfig",
    "HooksConfig",
    "LocalBackendConfig",
    "LogConfig",
    "RecoveryConfig",
    "RouteConfig",
    "RoutingConfig",
    "ShadowConfig",
    "SharedConfig",
    "check_exposure",
    "default_config_path",
    "default_state_dir",
    "is_loopback",
    "join_listen",
    "load_config",
    "parse_config",
    "split_listen",
    "state_dir_fix",
]
