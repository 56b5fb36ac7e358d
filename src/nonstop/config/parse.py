"""One validated configuration object, read from TOML.

Every problem names the key and the fix. Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

DEFAULT_CLOUD_URL = "https://api.anthropic.com"
DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_DISCOVERY_PORTS = (11434, 1234, 8080, 8000)


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class CloudConfig:
    url: str = DEFAULT_CLOUD_URL
    connect_timeout: float = 10.0
    # Deadline for the response head (and, for streams, the first event). A hung cloud
    # sends the request to a local backend within this bound.
    first_byte_timeout: float = 60.0
    # Longest silence allowed inside a stream once it has started.
    idle_timeout: float = 120.0
    # 401/403 are configuration problems: shown to the client unless this is on.
    failover_on_auth: bool = False
    # How long the cloud stays "out" when a quota error names no reset time.
    default_cooldown: float = 300.0
    # Overloaded / 5xx / network: how long to skip the cloud after a failure.
    error_cooldown: float = 15.0
    # Credit exhausted: "until the user acts"; re-check this often.
    credit_recheck: float = 1800.0


@dataclass(frozen=True)
class LocalBackendConfig:
    name: str
    url: str
    api: Literal["anthropic", "openai"] = "anthropic"
    model: str = ""
    context_window: int = 32768
    max_output_tokens: int = 4096
    api_key: str = ""
    connect_timeout: float = 5.0
    # Local prompt processing is slow on CPU; while waiting, streams get pings.
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0
    # "auto": the server's own count endpoint where it has one, else an estimate.
    count_tokens: Literal["auto", "server", "estimate"] = "auto"
    # Reasoning switch for OpenAI-compatible servers; "" leaves it off.
    reasoning_param: str = ""


@dataclass(frozen=True)
class RouteConfig:
    match: str
    backends: tuple[str, ...]


@dataclass(frozen=True)
class LogConfig:
    enabled: bool = True
    store_bodies: bool = False
    body_cap_bytes: int = 65536
    retention_days: float = 30.0


@dataclass(frozen=True)
class HooksConfig:
    command: str = ""
    webhook: str = ""


@dataclass(frozen=True)
class DiscoveryConfig:
    enabled: bool = True
    ports: tuple[int, ...] = DEFAULT_DISCOVERY_PORTS
    host: str = "127.0.0.1"
    timeout: float = 1.0


@dataclass(frozen=True)
class EmbeddedConfig:
    # "auto": start only when no local backend is configured or discovered.
    mode: Literal["auto", "always", "never"] = "auto"
    server_path: str = ""
    model_path: str = ""
    context_window: int = 8192
    max_output_tokens: int = 1024
    threads: int = 1
    parallel: int = 2
    extra_args: tuple[str, ...] = ()
    ready_timeout: float = 300.0


@dataclass(frozen=True)
class RecoveryConfig:
    # Continue a text-only cloud stream that died mid-way on a local model.
    continue_locally: bool = False


@dataclass(frozen=True)
class SharedConfig:
    redis_url: str = ""
    key_prefix: str = "nonstop:"


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    token: str = ""
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 30.0
    ping_interval: float = 10.0
    cloud: CloudConfig = field(default_factory=CloudConfig)
    local: tuple[LocalBackendConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    shared: SharedConfig = field(default_factory=SharedConfig)
    source: str = ""

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def with_listen(self, host: str | None = None, port: int | None = None) -> Config:
        h, p = split_listen(self.listen)
        cfg = replace(self, listen=join_listen(host or h, port if port is not None else p))
        check_exposure(cfg)
        return cfg

    def backends_for(self, model: str) -> list[LocalBackendConfig]:
        """Local backends for a client model name, in the order to try them."""
        by_name = {b.name: b for b in self.local}
        for route in self.routes:
            if fnmatch.fnmatchcase(model, route.match):
                return [by_name[n] for n in route.backends]
        return list(self.local)


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nonstop" / "config.toml"


def default_state_dir() -> Path:
    env = os.environ.get("NONSTOP_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nonstop"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError([f"listen: {listen!r} is not HOST:PORT; write e.g. \"127.0.0.1:8787\""])
    host = host.strip("[]")
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError([f"listen: port {p} is out of range; use 1-65535"])
    return host, p


def join_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: Config) -> None:
    if not is_loopback(cfg.host) and not cfg.token:
        raise ConfigError([
            f"listen: {cfg.host} is reachable from other machines, so an access token is "
            "required; set token = \"...\" in the config or NONSTOP_TOKEN in the environment"
        ])


# --- parsing -----------------------------------------------------------------------------

_SECTION_TYPES: dict[str, type] = {
    "cloud": CloudConfig,
    "log": LogConfig,
    "hooks": HooksConfig,
    "discovery": DiscoveryConfig,
    "embedded": EmbeddedConfig,
    "recovery": RecoveryConfig,
    "shared": SharedConfig,
}


def _check_type(key: str, value: Any, default: Any, problems: list[str]) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{key}: expected a number, got {value!r}")
            return default
        if value < 0:
            problems.append(f"{key}: must not be negative, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected a whole number, got {value!r}")
            return default
        if value < 0:
            problems.append(f"{key}: must not be negative, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return default
        item_type = type(default[0]) if default else str
        bad = [v for v in value if not isinstance(v, item_type) or isinstance(v, bool)]
        if bad:
            what = "whole numbers" if item_type is int else "strings"
            problems.append(f"{key}: expected a list of {what}, got {bad[0]!r}")
            return default
        return tuple(value)
    if default is MISSING:  # required keys are all strings
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _default_of(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[str], **given: Any) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = dict(given)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in known or key in given:
            hint = ", ".join(sorted(k for k in known if k not in given))
            problems.append(f"{full}: unknown key; the keys here are: {hint}")
            continue
        f = known[key]
        default = _default_of(f)
        kwargs[key] = _check_type(full, value, default, problems)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        missing = [n for n, f in known.items() if n not in kwargs and _default_of(f) is MISSING]
        problems.append(f"{prefix.rstrip('.')}: missing required key(s) {', '.join(missing) or exc}")
        return None


def _parse_local(items: Any, problems: list[str]) -> tuple[LocalBackendConfig, ...]:
    if not isinstance(items, list):
        problems.append("local: expected [[local]] tables (an array of tables)")
        return ()
    out: list[LocalBackendConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        prefix = f"local[{i}]."
        if not isinstance(item, dict):
            problems.append(f"local[{i}]: expected a table")
            continue
        item = dict(item)
        name = item.get("name") or f"local{i + 1}"
        item["name"] = name
        if "url" not in item:
            problems.append(f"{prefix}url: missing; set the server's base URL, e.g. \"http://127.0.0.1:8080\"")
            continue
        b = _build(LocalBackendConfig, item, prefix, problems)
        if b is None:
            continue
        if not isinstance(b.url, str) or not isinstance(b.name, str):
            continue
        if name in seen:
            problems.append(f"{prefix}name: {name!r} is used twice; give each backend its own name")
        seen.add(name)
        _check_url(f"{prefix}url", b.url, problems)
        if b.url.rstrip("/").endswith("/v1"):
            problems.append(
                f"{prefix}url: {b.url!r} ends in /v1; give the server's base URL without /v1 "
                f"(nonstop adds the path itself)"
            )
        if b.api not in ("anthropic", "openai"):
            problems.append(f"{prefix}api: {b.api!r} is not known; use \"anthropic\" or \"openai\"")
        if b.count_tokens not in ("auto", "server", "estimate"):
            problems.append(f"{prefix}count_tokens: use \"auto\", \"server\" or \"estimate\"")
        if b.context_window < 256:
            problems.append(f"{prefix}context_window: {b.context_window} is too small; give the model's window in tokens")
        if b.max_output_tokens < 1 or b.max_output_tokens >= b.context_window:
            problems.append(
                f"{prefix}max_output_tokens: must be at least 1 and below context_window ({b.context_window})"
            )
        out.append(b)
    return tuple(out)


def _parse_routes(data: Any, local: tuple[LocalBackendConfig, ...], problems: list[str]) -> tuple[RouteConfig, ...]:
    if not isinstance(data, dict):
        problems.append("routes: expected a table of \"model glob\" = \"backend\" (or a list of backends)")
        return ()
    names = {b.name for b in local}
    out = []
    for pattern, target in data.items():
        targets = [target] if isinstance(target, str) else target
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets) or not targets:
            problems.append(f"routes.{pattern!r}: expected a backend name or a list of names")
            continue
        for t in targets:
            if t not in names:
                problems.append(
                    f"routes.{pattern!r}: no [[local]] backend is named {t!r}; known: {', '.join(sorted(names)) or 'none'}"
                )
        out.append(RouteConfig(match=pattern, backends=tuple(targets)))
    return tuple(out)


def _check_url(key: str, url: str, problems: list[str]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(f"{key}: {url!r} is not an http(s) URL; write e.g. \"http://127.0.0.1:8080\"")


def parse_config(data: dict[str, Any], source: str = "") -> Config:
    problems: list[str] = []
    top = {f.name: f for f in fields(Config)}
    kwargs: dict[str, Any] = {"source": source}
    raw_routes: Any = None
    for key, value in data.items():
        if key in _SECTION_TYPES:
            if not isinstance(value, dict):
                problems.append(f"{key}: expected a [{key}] table")
                continue
            kwargs[key] = _build(_SECTION_TYPES[key], value, f"{key}.", problems)
        elif key == "local":
            kwargs["local"] = _parse_local(value, problems)
        elif key == "routes":
            raw_routes = value
        elif key == "state_dir":
            if not isinstance(value, str):
                problems.append("state_dir: expected a path string")
            else:
                kwargs["state_dir"] = Path(os.path.expanduser(value))
        elif key in top and key not in ("source",):
            kwargs[key] = _check_type(key, value, _default_of(top[key]), problems)
        else:
            known = sorted(k for k in top if k != "source")
            problems.append(f"{key}: unknown key; the top-level keys are: {', '.join(known)}")
    if raw_routes is not None:
        kwargs["routes"] = _parse_routes(raw_routes, kwargs.get("local", ()), problems)
    if kwargs.get("cloud") is not None and isinstance(kwargs["cloud"].url, str):
        _check_url("cloud.url", kwargs["cloud"].url, problems)
    emb = kwargs.get("embedded")
    if emb is not None and emb.mode not in ("auto", "always", "never"):
        problems.append(f"embedded.mode: {emb.mode!r} is not known; use \"auto\", \"always\" or \"never\"")
    if isinstance(kwargs.get("listen"), str):
        try:
            split_listen(kwargs["listen"])
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not kwargs.get("token"):
        kwargs["token"] = os.environ.get("NONSTOP_TOKEN", "")
    cfg = Config(**kwargs)
    check_exposure(cfg)
    return cfg


def load_config(path: str | Path | None = None) -> Config:
    """Load the config file; without one, the defaults (with NONSTOP_* overrides)."""
    explicit = path is not None
    p = Path(path) if path is not None else Path(os.environ.get("NONSTOP_CONFIG") or default_config_path())
    if not p.exists():
        if explicit:
            raise ConfigError([f"{p}: no such file; run `nonstop init` to write one"])
        return parse_config({}, source="")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        return parse_config(data, source=str(p))
    except ConfigError as exc:
        raise ConfigError([f"{p}: {m}" for m in exc.problems]) from None
