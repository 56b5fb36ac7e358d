"""The configuration as nonstop uses it: one frozen object per section, with the
defaults a user gets without a config file. `nonstop.config.parse` builds it from TOML.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

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
    # The longest wait for the response head (and, for streams, the first content). The
    # deadline actually used is learned: first_byte_multiplier times the usual time to
    # first byte for a request of that size, never under first_byte_floor nor over this.
    first_byte_timeout: float = 60.0
    first_byte_floor: float = 10.0
    first_byte_multiplier: float = 4.0
    # The longest wait for a non-streamed answer, whose head the cloud sends only once the
    # whole answer is written (the SDKs' own default timeout for one). The wait used is
    # the learned first-byte deadline plus time to write max_tokens at a slow pace, not
    # more than this.
    answer_timeout: float = 600.0
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
    # Requests this server may have in flight at once, across every nonstop instance
    # sharing its state through Redis (0: no limit beyond the server's own slots).
    max_inflight: int = 0


@dataclass(frozen=True)
class RouteConfig:
    match: str
    backends: tuple[str, ...]


# The workload classes a routing rule can name (nonstop.routing.facts.Workload).
WORKLOAD_CLASSES = ("main", "subagent", "compaction", "background", "count_tokens")


@dataclass(frozen=True)
class ClassRoutingConfig:
    """`[routing.<class>]`: how one kind of work is routed."""

    # "first": the cloud, then local backends; "fallback": local backends first, the
    # cloud only when none can serve; "never": local backends only.
    cloud: Literal["first", "fallback", "never"] = "first"
    # Local backends for this class, in order; empty: all, in config order.
    backends: tuple[str, ...] = ()
    # Among local backends: "order" (as listed), "fastest" (first answer), "best"
    # (highest eval score); "" keeps the class's default.
    prefer: str = ""


@dataclass(frozen=True)
class RoutingConfig:
    # A quota window at or above this utilization, with too little history for a
    # forecast, counts as "will run out".
    high_water: float = 0.9
    # Classes sent to local backends first while a quota window is forecast to run out.
    conserve: tuple[str, ...] = ("background", "subagent")
    # Finish a tool loop a local model started on local models (the next user turn
    # goes back to the cloud).
    finish_local_tool_loops: bool = True
    classes: tuple[tuple[str, ClassRoutingConfig], ...] = ()


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
    # "auto": start only when no local backend is configured or discovered, or once every
    # discovered one has been down for standby_after seconds.
    mode: Literal["auto", "always", "never"] = "auto"
    server_path: str = ""
    model_path: str = ""
    # Small on purpose: Claude Code's first request is fitted down to about 600 tokens in a
    # 4k window (the system tier keeps the environment and the user's instructions), which
    # the bundled model reads in seconds on one thread; an 8k window took the request
    # as sent (4.2k tokens), over a minute before the first word on 2 cores.
    context_window: int = 4096
    # A 135M model writes about 30 tokens a second on one CPU thread, and has little to
    # say: a short cap bounds the answer's time (nonstop reports the cut as end of turn).
    # 64 still holds a tool call; 128 put a cold first answer at 14-15 s on 2 cores.
    max_output_tokens: int = 64
    # Measured on 2 cores with other work running: two threads ran at times ten times
    # slower than one, waiting on each other for a core.
    threads: int = 1
    parallel: int = 2
    extra_args: tuple[str, ...] = ()
    ready_timeout: float = 300.0
    # With mode "auto" and servers discovery found (none configured): how long all of them
    # may be down (failing their health checks, or demoted after failed requests) before
    # the embedded server starts beside them. 0: never.
    standby_after: float = 30.0


@dataclass(frozen=True)
class RecoveryConfig:
    # Continue a text-only cloud stream that died mid-way on a local model.
    continue_locally: bool = False


@dataclass(frozen=True)
class WarmupConfig:
    # Load local models before they are needed: when the cloud goes out, when a quota
    # window is forecast to run out, or when one reaches at_utilization.
    enabled: bool = True
    at_utilization: float = 0.8
    # Seconds Ollama keeps a warmed model after its last use. nonstop renews it halfway
    # while the cloud is out, so the model lapses on its own once nonstop stops asking.
    keep_alive: float = 900.0
    # Longest gap, in seconds, between the small requests that keep a llama-server
    # started with --sleep-idle-seconds from sleeping while the cloud is out.
    touch_every: float = 20.0


@dataclass(frozen=True)
class SharedConfig:
    redis_url: str = ""
    key_prefix: str = "nonstop:"
    # Accounts are salted hashes of credentials; a fleet needs one salt. Empty: derived
    # from redis_url and key_prefix (with Redis), else a random one kept in state_dir.
    account_salt: str = ""
    # Seconds between an instance's heartbeats (it is listed while they keep coming).
    heartbeat: float = 5.0


@dataclass(frozen=True)
class UserConfig:
    """`[[users]]`: one person's access token to a shared nonstop."""

    name: str
    token: str


@dataclass(frozen=True)
class EvalConfig:
    # Re-run the quick eval in the background for a backend whose model changed (or was
    # never evaluated), once the backend has been idle for idle_after seconds.
    auto: bool = False
    idle_after: float = 600.0


@dataclass(frozen=True)
class ShadowConfig:
    # The share of the requests the cloud answered that are replayed on a local backend
    # and compared, once it is idle (0: off).
    sample: float = 0.0
    # The local backend to compare; empty: the first one.
    backend: str = ""
    # Seconds a sampled request waits for the local backends to be idle before it is dropped.
    wait: float = 600.0


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    token: str = ""
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    max_body_bytes: int = 32 * 1024 * 1024
    drain_timeout: float = 30.0
    ping_interval: float = 10.0
    # A request head not complete within this many seconds is dropped.
    head_timeout: float = 5.0
    # Connections from one address that may be slow (over a second) to send their head.
    slow_heads_per_client: int = 32
    # Once the head is complete, the body must arrive within body_timeout seconds plus
    # one second for every body_min_rate bytes received.
    body_timeout: float = 10.0
    body_min_rate: int = 16 * 1024
    cloud: CloudConfig = field(default_factory=CloudConfig)
    local: tuple[LocalBackendConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    shared: SharedConfig = field(default_factory=SharedConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    # Per-user access tokens for a shared instance, and friendly names for accounts.
    users: tuple[UserConfig, ...] = ()
    accounts: tuple[tuple[str, str], ...] = ()
    source: str = ""

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def with_listen(self, host: str | None = None, port: int | None = None, *, check: bool = True) -> Config:
        """This config listening on `host` / `port` instead; `check` holds the address to
        the exposure rules (off for a command that only dials it)."""
        h, p = split_listen(self.listen)
        cfg = replace(self, listen=join_listen(host or h, port if port is not None else p))
        if check:
            check_exposure(cfg)
        return cfg


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nonstop" / "config.toml"


def default_state_dir() -> Path:
    env = os.environ.get("NONSTOP_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nonstop"


def state_dir_fix(cfg: Config, env: Mapping[str, str] | None = None) -> str:
    """How to give nonstop another state directory, through what chose this one: the
    config's state_dir, else NONSTOP_STATE_DIR, else the default under XDG_STATE_HOME."""
    env = os.environ if env is None else env
    config = cfg.source or str(default_config_path())
    named = env.get("NONSTOP_STATE_DIR")
    if named and Path(named) == cfg.state_dir:
        return (f"set NONSTOP_STATE_DIR (it names this folder) to a folder nonstop can write, "
                f"or state_dir in {config}")
    default = Path(env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")) / "nonstop"
    if cfg.state_dir == default:
        return (f"set state_dir in {config}, or NONSTOP_STATE_DIR, to a folder nonstop can write "
                f"(this one is the default: $XDG_STATE_HOME/nonstop, else ~/.local/state/nonstop)")
    return f"set state_dir in {config} to a folder nonstop can write"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ConfigError([f"listen: {listen!r} is not HOST:PORT; write e.g. \"127.0.0.1:8787\""])
    host = host.strip("[]")
    p = int(port)
    if not 1 <= p <= 65535:
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


# The shortest token a gateway reachable from other machines takes (as for [[users]]).
MIN_EXPOSED_TOKEN = 12


def check_exposure(cfg: Config) -> None:
    if not is_loopback(cfg.host) and cfg.token and len(cfg.token) < MIN_EXPOSED_TOKEN:
        raise ConfigError([
            f"token: {cfg.host} is reachable from other machines, so the token needs at least "
            f"{MIN_EXPOSED_TOKEN} characters; make one with "
            "`python -c \"import secrets; print(secrets.token_urlsafe(24))\"`"
        ])
    if not is_loopback(cfg.host) and not cfg.token and not cfg.users:
        raise ConfigError([
            f"listen: {cfg.host} is reachable from other machines, so an access token is "
            "required; set token = \"...\" (or [[users]] tokens) in the config, or NONSTOP_TOKEN in the environment"
        ])
