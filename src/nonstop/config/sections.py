"""The configuration's TOML tables: each table's name and the dataclass it fills.

The loader builds these tables key by key, and `nonstop init` writes them from the same
list, so a table added here is both read and written.
"""

from __future__ import annotations

from nonstop.config.model import (
    CloudConfig,
    DiscoveryConfig,
    EmbeddedConfig,
    EvalConfig,
    HooksConfig,
    LogConfig,
    RecoveryConfig,
    RoutingConfig,
    ShadowConfig,
    SharedConfig,
    WarmupConfig,
)

SECTION_TYPES: dict[str, type] = {
    "cloud": CloudConfig,
    "log": LogConfig,
    "hooks": HooksConfig,
    "discovery": DiscoveryConfig,
    "embedded": EmbeddedConfig,
    "recovery": RecoveryConfig,
    "eval": EvalConfig,
    "shadow": ShadowConfig,
    "shared": SharedConfig,
    # [routing] also holds per-class tables, so the loader reads it on its own.
    "routing": RoutingConfig,
    "warmup": WarmupConfig,
}

# Every top-level key that is a table (or an array of tables), not a value: these, and
# the ones the loader reads on its own.
TABLE_KEYS = frozenset(SECTION_TYPES) | {"local", "routes", "users", "accounts"}
