"""Reading the configuration from TOML, with every problem named by its key and fix.

Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nonstop.config.model import (
    MIN_EXPOSED_TOKEN,
    WORKLOAD_CLASSES,
    ClassRoutingConfig,
    Config,
    ConfigError,
    EmbeddedConfig,
    LocalBackendConfig,
    RouteConfig,
    RoutingConfig,
    ShadowConfig,
    UserConfig,
    WarmupConfig,
    check_exposure,
    default_config_path,
    split_listen,
)
from nonstop.config.sections import SECTION_TYPES
from nonstop.redact import hidden_url

# --- parsing -----------------------------------------------------------------------------


def _check_type(key: str, value: Any, default: Any, problems: list[str]) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{key}: expected a number, got {value!r}")
            return default
        if not math.isfinite(value):
            problems.append(f"{key}: expected a finite number of seconds or a fraction, got {value!r}")
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


def _check_embedded(emb: EmbeddedConfig, problems: list[str]) -> None:
    """What the embedded server cannot start with. A value of the wrong type was reported
    and replaced by its default already, a negative one reported: zeros are left."""
    if 0 <= emb.context_window < 256:
        problems.append(f"embedded.context_window: {emb.context_window} is too small; give the window in tokens "
                        "(the default is 4096)")
    elif emb.context_window > 0 and (emb.max_output_tokens == 0 or emb.max_output_tokens >= emb.context_window):
        problems.append(f"embedded.max_output_tokens: must be at least 1 and below context_window ({emb.context_window})")
    for name, what in (("threads", "at least 1; the default is 1"), ("parallel", "at least 1; the default is 2"),
                       ("ready_timeout", "more than 0 seconds; the default is 300")):
        if getattr(emb, name) == 0:
            problems.append(f"embedded.{name}: must be {what}")


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
        window = item.get("context_window")
        if "max_output_tokens" not in item and isinstance(window, int) and not isinstance(window, bool):
            # Unset: a quarter of the window, at most the usual 4096.
            item["max_output_tokens"] = min(4096, max(1, window // 4))
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


_CLOUD_USE = ("first", "fallback", "never")
_PREFER = ("", "order", "fastest", "best")


def _parse_routing(data: Any, local: tuple[LocalBackendConfig, ...], problems: list[str]) -> RoutingConfig | None:
    if not isinstance(data, dict):
        problems.append("routing: expected a [routing] table")
        return None
    flat = {k: v for k, v in data.items() if k not in WORKLOAD_CLASSES}
    mark = len(problems)
    cfg = _build(RoutingConfig, flat, "routing.", problems, classes=())
    tables = ", ".join(f"[routing.{c}]" for c in WORKLOAD_CLASSES)
    problems[mark:] = [p + f"; or a class table: {tables}" if "unknown key" in p else p for p in problems[mark:]]
    if cfg is None:
        return None
    if not 0 < cfg.high_water <= 1.5:
        problems.append(f"routing.high_water: {cfg.high_water} is not a utilization; use a fraction such as 0.9")
    for name in cfg.conserve:
        if name not in WORKLOAD_CLASSES:
            problems.append(f"routing.conserve: {name!r} is not a workload class; use {', '.join(WORKLOAD_CLASSES)}")
    known = {b.name for b in local} | {"embedded"}
    classes = []
    for name in WORKLOAD_CLASSES:
        if name not in data:
            continue
        if not isinstance(data[name], dict):
            problems.append(f"routing.{name}: expected a [routing.{name}] table")
            continue
        rule = _build(ClassRoutingConfig, data[name], f"routing.{name}.", problems)
        if rule is None:
            continue
        if rule.cloud not in _CLOUD_USE:
            problems.append(f"routing.{name}.cloud: {rule.cloud!r} is not known; use \"first\", \"fallback\" or \"never\"")
        if rule.prefer not in _PREFER:
            problems.append(f"routing.{name}.prefer: {rule.prefer!r} is not known; use \"order\", \"fastest\" or \"best\"")
        for b in rule.backends:
            if b not in known:
                problems.append(f"routing.{name}.backends: no [[local]] backend is named {b!r}; known: {', '.join(sorted(known))}")
        classes.append((name, rule))
    return RoutingConfig(cfg.high_water, cfg.conserve, cfg.finish_local_tool_loops, tuple(classes))


MIN_TOKEN = MIN_EXPOSED_TOKEN
# The shortest gap between keep-alive pings: 0 would send them in a loop.
MIN_PING_INTERVAL = 0.1


def _parse_users(items: Any, problems: list[str]) -> tuple[UserConfig, ...]:
    if not isinstance(items, list):
        problems.append("users: expected [[users]] tables, each with a name and a token")
        return ()
    out: list[UserConfig] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"users[{i}]: expected a table with name and token")
            continue
        u = _build(UserConfig, item, f"users[{i}].", problems)
        if u is None or not isinstance(u.name, str) or not isinstance(u.token, str):
            continue
        if not u.name:
            problems.append(f"users[{i}].name: give each user a name (it labels their requests)")
        if not u.token.isascii():
            problems.append(f"users[{i}].token: use ASCII characters only (it travels in an HTTP header)")
        if len(u.token) < MIN_TOKEN:
            problems.append(f"users[{i}].token: at least {MIN_TOKEN} characters; make one with "
                            "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`")
        if any(o.name == u.name for o in out):
            problems.append(f"users[{i}].name: {u.name!r} is used twice")
        if any(o.token == u.token for o in out):
            problems.append(f"users[{i}].token: the same token as another user; give each their own")
        out.append(u)
    return tuple(out)


def _parse_accounts(data: Any, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        problems.append("accounts: expected a table of \"account label\" = \"friendly name\" "
                        "(the labels are shown by `nonstop status`)")
        return ()
    return tuple(data.items())


def _check_url(key: str, url: str, problems: list[str]) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number, or out of range, raises here
    except ValueError as exc:  # an unclosed IPv6 bracket, a bad port
        problems.append(f"{key}: {url!r} is not a valid URL ({exc}); write e.g. \"http://127.0.0.1:8080\" "
                        "or \"http://[::1]:8080\"")
        return
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(f"{key}: {url!r} is not an http(s) URL; write e.g. \"http://127.0.0.1:8080\"")


def _check_redis_url(url: str, problems: list[str]) -> None:
    """What redis-py's from_url takes (checked here: it would fail at start-up), named
    without its password."""
    shown = hidden_url(url)
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        problems.append(f"shared.redis_url: {shown!r} is not a valid URL ({exc}); write e.g. "
                        "\"redis://redis.internal:6379/0\"")
        return
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname if parts.scheme != "unix" else parts.path):
        problems.append(f"shared.redis_url: {shown!r} is not a Redis URL; write e.g. \"redis://redis.internal:6379/0\" "
                        "(rediss:// for TLS, unix:///path/to/socket)")


def _check_warmup(w: WarmupConfig | None, problems: list[str]) -> None:
    if w is None:
        return
    if isinstance(w.at_utilization, float) and not 0 < w.at_utilization <= 1.5:
        problems.append(f"warmup.at_utilization: {w.at_utilization} is not a utilization; use a fraction such as 0.8")
    if isinstance(w.keep_alive, float) and w.keep_alive < 60:
        problems.append(f"warmup.keep_alive: {w.keep_alive:g} seconds is too short to keep a model loaded; use 60 or more (the default is 900)")
    if isinstance(w.touch_every, float) and w.touch_every < 1:
        problems.append(f"warmup.touch_every: {w.touch_every:g} seconds is too often; use 1 or more (the default is 20)")


def parse_config(data: dict[str, Any], source: str = "") -> Config:
    problems: list[str] = []
    top = {f.name: f for f in fields(Config)}
    kwargs: dict[str, Any] = {"source": source}
    raw_routes: Any = None
    raw_routing: Any = None
    for key, value in data.items():
        if key == "routing":
            raw_routing = value
        elif key in SECTION_TYPES:
            if not isinstance(value, dict):
                problems.append(f"{key}: expected a [{key}] table")
                continue
            kwargs[key] = _build(SECTION_TYPES[key], value, f"{key}.", problems)
        elif key == "local":
            kwargs["local"] = _parse_local(value, problems)
        elif key == "routes":
            raw_routes = value
        elif key == "users":
            kwargs["users"] = _parse_users(value, problems)
        elif key == "accounts":
            kwargs["accounts"] = _parse_accounts(value, problems)
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
    if raw_routing is not None:
        kwargs["routing"] = _parse_routing(raw_routing, kwargs.get("local", ()), problems)
    cloud = kwargs.get("cloud")
    if cloud is not None and isinstance(cloud.url, str):
        _check_url("cloud.url", cloud.url, problems)
        if cloud.url.rstrip("/").endswith("/v1"):  # the client's path (/v1/messages) is added to it
            problems.append(f"cloud.url: {cloud.url!r} ends in /v1; give the base URL without /v1 "
                            "(for example https://api.anthropic.com)")
    if cloud is not None and cloud.first_byte_timeout == 0:
        problems.append("cloud.first_byte_timeout: must be more than 0 seconds (0 would fail every cloud request); "
                        "the default is 60")
    if cloud is not None and cloud.answer_timeout == 0:
        problems.append("cloud.answer_timeout: must be more than 0 seconds (0 would fail every non-streamed "
                        "request); the default is 600")
    shared = kwargs.get("shared")
    if shared is not None and shared.heartbeat == 0:
        problems.append("shared.heartbeat: must be more than 0 seconds; the default is 5")
    if shared is not None and isinstance(shared.redis_url, str) and shared.redis_url:
        _check_redis_url(shared.redis_url, problems)
    if kwargs.get("max_body_bytes") == 0:
        problems.append("max_body_bytes: must be more than 0 (0 would refuse every request with a body)")
    discovery = kwargs.get("discovery")
    if discovery is not None:
        bad = [p for p in discovery.ports if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535]
        if bad:
            problems.append(f"discovery.ports: {bad[0]!r} is not a port (1-65535)")
    emb = kwargs.get("embedded")
    if emb is not None and emb.mode not in ("auto", "always", "never"):
        problems.append(f"embedded.mode: {emb.mode!r} is not known; use \"auto\", \"always\" or \"never\"")
    if emb is not None:
        _check_embedded(emb, problems)
    if kwargs.get("head_timeout") == 0:
        problems.append("head_timeout: must be more than 0 seconds; the default is 5")
    if kwargs.get("slow_heads_per_client") == 0:
        problems.append("slow_heads_per_client: must be at least 1; the default is 32")
    if kwargs.get("body_timeout") == 0:
        problems.append("body_timeout: must be more than 0 seconds; the default is 10")
    if kwargs.get("body_min_rate") == 0:
        problems.append("body_min_rate: must be at least 1 byte a second; the default is 16384")
    ping = kwargs.get("ping_interval")
    if isinstance(ping, float) and ping < MIN_PING_INTERVAL:
        problems.append(f"ping_interval: {ping:g} seconds would flood the client with pings; "
                        f"use {MIN_PING_INTERVAL:g} or more (the default is 10)")
    token = kwargs.get("token")
    if isinstance(token, str) and token and not token.isascii():
        problems.append("token: use ASCII characters only (it travels in an HTTP header)")
    _check_warmup(kwargs.get("warmup"), problems)
    shadow = kwargs.get("shadow")
    if isinstance(shadow, ShadowConfig) and isinstance(shadow.sample, float) and shadow.sample > 1:
        problems.append(f"shadow.sample: {shadow.sample} is not a share; use a fraction such as 0.05 (5 %)")
    if isinstance(shadow, ShadowConfig) and shadow.backend and shadow.backend not in {b.name for b in kwargs.get("local", ())}:
        problems.append(f"shadow.backend: no [[local]] backend is named {shadow.backend!r}")
    if isinstance(kwargs.get("listen"), str):
        try:
            split_listen(kwargs["listen"])
        except ConfigError as exc:
            problems.extend(exc.problems)
    if not kwargs.get("token"):
        env_token = os.environ.get("NONSTOP_TOKEN", "")
        if env_token and not env_token.isascii():
            problems.append("NONSTOP_TOKEN: use ASCII characters only (it travels in an HTTP header)")
        kwargs["token"] = env_token
    if problems:
        raise ConfigError(problems)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    cfg = Config(**kwargs)
    check_exposure(cfg)
    return cfg


def load_config(path: str | Path | None = None) -> Config:
    """Load the config file; without one, the defaults (with NONSTOP_* overrides)."""
    env = os.environ.get("NONSTOP_CONFIG") if path is None else None
    # `~` as `nonstop init` reads it (a shell leaves it as it is after `--config=`).
    p = Path(path).expanduser() if path is not None else Path(env).expanduser() if env else default_config_path()
    if not p.exists():
        if path is not None:
            raise ConfigError([f"{p}: no such file; run `nonstop init` to write one"])
        if env:  # named on purpose: running on the defaults instead would hide the mistake
            raise ConfigError([f"NONSTOP_CONFIG={env}: no such file; run `nonstop init` to write one there, "
                               "or unset NONSTOP_CONFIG to use the defaults"])
        return parse_config({}, source="")
    try:
        raw = p.read_bytes()
        # An editor's byte-order mark is no part of the TOML.
        data = tomllib.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        return parse_config(data, source=str(p))
    except ConfigError as exc:
        raise ConfigError([f"{p}: {m}" for m in exc.problems]) from None
