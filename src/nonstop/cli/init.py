"""`nonstop init`: write a commented configuration file, prefilled with what is found.

The file is rendered from the config dataclasses themselves: every key they know is
written, either set or commented out with its default, and every key carries a comment.
A key added to the config without a comment here is an error at render time, so the
file cannot silently fall behind the loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from nonstop.backends.discovery import DiscoveredServer, describe, to_backend_config
from nonstop.config import (
    DEFAULT_LISTEN,
    SECTION_TYPES,
    Config,
    ConfigError,
    DiscoveryConfig,
    LocalBackendConfig,
    default_config_path,
    default_state_dir,
    parse_config,
)

# --- what each key means (shown above the key in the file) ---------------------------------

TOP_DOCS: dict[str, str] = {
    "listen": "Where Claude Code reaches nonstop (HOST:PORT). Keep 127.0.0.1 unless other "
              "machines must use it; any other address requires a token.",
    "token": "Access token clients must send in the x-nonstop-token header (`nonstop claude` "
             "adds it for Claude Code). Empty: no token, allowed on loopback only. "
             "NONSTOP_TOKEN in the environment sets it too.",
    "state_dir": "Folder for the request log, the cloud's quota state and the embedded "
                 "server's log. NONSTOP_STATE_DIR in the environment overrides the default.",
    "max_body_bytes": "Largest request body accepted, in bytes.",
    "drain_timeout": "On shutdown, seconds that requests still running get to finish.",
    "ping_interval": "Seconds between keep-alive `ping` events while a slow local model is "
                     "still reading the prompt, so the client does not give up.",
    "head_timeout": "Seconds a client gets to send a request's head (its first line and "
                    "headers); a connection that takes longer is closed.",
    "slow_heads_per_client": "Connections from one address that may take over a second to "
                             "send their request head; while that many are waiting, further "
                             "connections from the address are closed at once.",
    "body_timeout": "Seconds a client gets to send a request's body once its head has "
                    "arrived, plus one second for every body_min_rate bytes it sends; a "
                    "body that trickles slower gets a 408 and the connection is closed.",
    "body_min_rate": "The slowest pace, in bytes a second, at which a request body may keep "
                     "arriving after body_timeout.",
}

SECTION_DOCS: dict[str, dict[str, str]] = {
    "cloud": {
        "url": "The Anthropic API. Claude Code's own login (API key or subscription) passes "
               "through to it unchanged; nonstop stores no credentials.",
        "connect_timeout": "Seconds to open a connection to the cloud.",
        "first_byte_timeout": "The longest wait, in seconds, for the cloud's answer to start; "
                              "a cloud that hangs longer is treated as down and the request goes "
                              "local. The wait actually used is learned (below).",
        "first_byte_floor": "The shortest wait, in seconds, for the cloud's answer to start.",
        "first_byte_multiplier": "nonstop waits this many times the cloud's usual time to first "
                                 "byte for a request of that size (learned from recent answers), "
                                 "between first_byte_floor and first_byte_timeout.",
        "answer_timeout": "The longest wait, in seconds, for a non-streamed answer: the cloud "
                          "sends its head only once the whole answer is written. The wait used is "
                          "the learned first-byte wait plus time to write max_tokens, not more.",
        "idle_timeout": "Longest silence, in seconds, allowed inside a cloud stream once it "
                        "has started.",
        "failover_on_auth": "true: a rejected login (401/403) also goes local. Off by "
                            "default, because a revoked token should be fixed, not hidden.",
        "default_cooldown": "Seconds the cloud stays out when a quota error names no reset "
                            "time.",
        "error_cooldown": "Seconds to skip the cloud after it was overloaded, failed or was "
                          "unreachable.",
        "credit_recheck": "Seconds between re-checks of the cloud after 'credit balance too "
                          "low'.",
    },
    "local": {
        "name": "A name of your choice; the request log and [routes] use it.",
        "url": "The server's base URL, without /v1 (nonstop adds the path itself).",
        "api": "\"anthropic\" if the server speaks the Messages API (/v1/messages: llama.cpp, "
               "Ollama 0.14+, LM Studio 0.4.1+), else \"openai\" (/v1/chat/completions).",
        "model": "The model to ask for; empty: the client's model name is sent on (a server "
                 "with one model, such as llama-server, serves it whatever the name; Ollama "
                 "and LM Studio need the name of one of theirs here).",
        "context_window": "The model's window in tokens, as the server runs it. Claude Code's "
                          "first request alone is 9-27k tokens: 32768 or more works best.",
        "max_output_tokens": "Cap on each answer's length (Claude Code asks for up to 128000, "
                             "which keeps a small model rambling for minutes). Must be below "
                             "context_window; unset, a quarter of it, at most 4096.",
        "api_key": "Key the local server wants, if any (sent only to this server, never a "
                   "cloud credential).",
        "connect_timeout": "Seconds to open a connection to this server.",
        "first_byte_timeout": "Seconds to wait for the first token; prompt reading on a CPU "
                              "is slow.",
        "idle_timeout": "Longest silence, in seconds, inside a stream once it has started.",
        "count_tokens": "How prompts are measured against the window: \"auto\" (the server's "
                        "own counter where it has one, not asked for a request far inside the "
                        "window), \"server\" (every time) or \"estimate\".",
        "reasoning_param": "Reasoning switch for OpenAI-compatible servers; empty leaves it "
                           "off.",
        "max_inflight": "Requests this server may have in flight at once, across every nonstop "
                        "instance sharing state through Redis; 0: no limit beyond its own slots.",
    },
    "discovery": {
        "enabled": "Look for local model servers at start-up. Used only when no [[local]] "
                   "block is configured.",
        "ports": "Ports to probe: Ollama 11434, LM Studio 1234, llama.cpp 8080, vLLM 8000. A "
                 "port counts only if it answers like a model server.",
        "host": "Host to probe.",
        "timeout": "Seconds each probe may take.",
    },
    "embedded": {
        "mode": "\"auto\": start the bundled llama-server only when no [[local]] block is "
                "configured and discovery finds nothing, or once every server it found has "
                "been down for standby_after seconds; \"always\": start it as well; "
                "\"never\": do not start it.",
        "server_path": "llama-server to run; empty: the one the `embedded` extra installed, "
                       "else one on PATH.",
        "model_path": "GGUF model to serve; empty: the bundled SmolLM2-135M.",
        "context_window": "Window per request slot, in tokens. Small by default: requests "
                          "are fitted to it, and a small model reads a short prompt fast.",
        "max_output_tokens": "Cap on each answer's length; must be below context_window.",
        "threads": "CPU threads for llama-server (1 is steadiest on a small machine).",
        "parallel": "Requests served at once; each gets its own context_window.",
        "extra_args": "More llama-server arguments, e.g. [\"--n-gpu-layers\", \"99\"].",
        "ready_timeout": "Seconds to wait for the model to load.",
        "standby_after": "With mode \"auto\" and servers discovery found: seconds all of them "
                         "may be down before the bundled llama-server starts beside them; 0: "
                         "never.",
    },
    "log": {
        "enabled": "Keep a request log (SQLite in state_dir) for `nonstop logs` and the "
                   "dashboard.",
        "store_bodies": "Also store request and answer bodies (secrets are redacted). Off: "
                        "only metadata is kept.",
        "body_cap_bytes": "Largest body stored, in bytes.",
        "retention_days": "Days to keep log entries.",
    },
    "hooks": {
        "command": "Shell command run when nonstop switches between cloud and local (the "
                   "event arrives as JSON on stdin and in $NONSTOP_EVENT, its words in "
                   "$NONSTOP_MESSAGE); killed after 10 s.",
        "webhook": "URL that gets the same event as a JSON POST (10 s at most).",
    },
    "recovery": {
        "continue_locally": "Finish a text-only cloud answer that broke off mid-stream on a "
                            "local model.",
    },
    "shadow": {
        "sample": "Share of the requests the cloud answers that are replayed on a local model "
                  "once it is idle, and compared (same tool, same stop, length, latency), so "
                  "`nonstop status` shows how often the local model would have done what the "
                  "cloud did. Your answers are never delayed; nothing leaves the machine. 0: off.",
        "backend": "The local backend to compare; empty: the first one.",
        "wait": "Seconds a sampled request waits for the local backends to be idle.",
    },
    "eval": {
        "auto": "Re-run the quick eval (`nonstop eval --quick`) in the background when a "
                "local backend's model changes or was never evaluated, once the backend is "
                "idle; the scores show in `nonstop status`, `doctor` and the dashboard.",
        "idle_after": "Seconds a backend must have served no request (and the cloud been "
                      "serving) before an automatic eval starts on it.",
    },
    "warmup": {
        "enabled": "Load the local models before they are needed, so the first local answer "
                   "does not wait for a model to load: when the cloud goes out, when a quota "
                   "window is forecast to run out, or when one reaches at_utilization; and "
                   "keep them loaded while the cloud is out.",
        "at_utilization": "Warm the local models once a quota window's utilization (0..1) "
                          "reaches this.",
        "keep_alive": "Seconds Ollama keeps a warmed model loaded after its last use; "
                      "nonstop renews it halfway while the cloud is out.",
        "touch_every": "Longest gap, in seconds, between the small requests that keep a "
                       "llama-server started with --sleep-idle-seconds awake while the cloud "
                       "is out.",
    },
    "shared": {
        "redis_url": "Redis URL to share the cloud's quota state between several nonstop "
                     "instances; empty: not shared.",
        "key_prefix": "Prefix for nonstop's Redis keys.",
        "account_salt": "Secret mixed into the hashes that label accounts (never the "
                        "credentials themselves); every instance of a fleet needs the same. "
                        "Empty: derived from redis_url and key_prefix with Redis (so every instance "
                        "must spell the URL exactly alike, and a new Redis password relabels every "
                        "account: nonstop warns at start), else a random one kept in state_dir. "
                        "`nonstop status --fleet` warns when the instances' labels differ.",
        "heartbeat": "Seconds between an instance's heartbeats to the fleet.",
    },
    "routing": {
        "high_water": "A quota window at or above this utilization (0..1), with too little "
                      "history to forecast, counts as about to run out.",
        "conserve": "Kinds of work sent to local models first while a quota window is "
                    "forecast to run out before it resets, so the main conversation keeps the "
                    "cloud longer: main, subagent, compaction, background, count_tokens.",
        "finish_local_tool_loops": "A tool call a local model made gets its result answered "
                                   "by a local model too; the next message you type goes back "
                                   "to the cloud.",
    },
}

# Per-class tables under [routing]: not keys of RoutingConfig itself.
_NOT_KEYS = {"routing": {"classes"}}


# --- the command ----------------------------------------------------------------------------


def target_path(args: Any) -> Path:
    """Where `init` writes: --config, else $NONSTOP_CONFIG (which the loader also reads
    first), else the XDG default."""
    given = getattr(args, "config", None)
    if given:
        return Path(given).expanduser()
    env = os.environ.get("NONSTOP_CONFIG")
    return Path(env).expanduser() if env else default_config_path()


def cmd_init(
    args: Any,
    *,
    discovery_cfg: DiscoveryConfig | None = None,
    embedded_stack: Callable[[], tuple[Path | None, Path | None]] | None = None,
    out: Callable[[str], None] = print,
) -> int:
    path = target_path(args)
    if path.is_symlink():  # a link (a dotfiles manager's) stays a link: the file it names is written
        try:
            path = path.resolve()
        except (OSError, RuntimeError):  # (3.11 raises RuntimeError for a loop)
            out(f"nonstop: {path} is a symbolic link that leads to itself; give the path of the config file "
                "to write. Nothing was written.")
            return 1
    if path.exists() and not path.is_file():  # --force would move a folder or a device aside
        example = f"; for example {path / 'config.toml'}" if path.is_dir() else ""
        out(f"nonstop: {path} is not a file but a {'folder' if path.is_dir() else 'special file'}; "
            f"give the path of the config file to write{example}. Nothing was written.")
        return 1
    if path.exists() and not getattr(args, "force", False):
        out(f"nonstop: {path} already exists; nothing was written.")
        out("  To replace it, run `nonstop init --force` (the old file is kept as a .bak next "
            "to it); to write elsewhere, add `--config OTHER.toml`.")
        return 1
    dcfg = discovery_cfg or DiscoveryConfig()
    servers: list[DiscoveredServer] = []
    probed = not getattr(args, "no_discover", False)
    if probed:
        out(f"nonstop: looking for local model servers on ports "
            f"{', '.join(map(str, dcfg.ports))}...")
        servers = asyncio.run(find_servers(dcfg))
        for s in servers:
            out(f"  found {_clean(describe(s))}")
            for note in s.notes:
                out(f"    note: {_clean(note)}")
        if not servers:
            out("  none found")
    stack = (embedded_stack or _embedded_stack)()
    text = render_config(servers, discovery=dcfg, probed=probed, stack=stack)
    try:
        parse_config(tomllib.loads(text), source=str(path))
    except (ConfigError, tomllib.TOMLDecodeError) as exc:  # a bug here, never the user's
        out(f"nonstop: the generated configuration does not load, so nothing was written:\n{exc}")
        return 1
    try:
        backup = _write(path, text)
    except OSError as exc:  # a folder that cannot be made or written, a file where a folder should be
        out(f"nonstop: cannot write {path}: {exc.strerror or exc}; nothing was written")
        return 1
    out(f"nonstop: wrote {path}" + (f" (the previous file is now {backup.name})" if backup else ""))
    if servers:
        out(f"  local fallback: {', '.join(_clean(s.url) for s in servers)}")
    else:
        out("  local fallback: the embedded llama-server with the bundled model"
            + ("" if all(stack) else " (not installed yet: see the [embedded] section)"))
    out("  next: `nonstop doctor` checks the set-up; `nonstop claude` runs Claude Code "
        "through nonstop.")
    return 0


async def find_servers(dcfg: DiscoveryConfig) -> list[DiscoveredServer]:
    import aiohttp

    from nonstop.backends import discovery

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await discovery.discover(dcfg, session)


def _embedded_stack() -> tuple[Path | None, Path | None]:
    from nonstop.backends.llama_stack import find_bundled_model, find_llama_server

    return find_llama_server(), find_bundled_model()


# Numbered backups kept beside NAME.bak (the user's own file, kept for good): the newest.
KEEP_BACKUPS = 5


def _write(path: Path, text: str) -> Path | None:
    """Write atomically with owner-only permissions (a token may be added later); keep
    a replaced file as NAME.bak, or NAME.bak.N (one more than the newest) when that is
    taken: the first backup (the user's own file, before a first --force) is never
    overwritten or removed; of the numbered ones, the newest KEEP_BACKUPS stay."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        backup = None
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            if backup.exists():
                numbered = _numbered_backups(path)
                backup = path.with_name(f"{path.name}.bak.{(numbered[-1][0] if numbered else 0) + 1}")
            os.replace(path, backup)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for _, old in _numbered_backups(path)[:-KEEP_BACKUPS]:
        with contextlib.suppress(OSError):  # one that cannot be removed stays: nothing is lost
            old.unlink()
    return backup


def _numbered_backups(path: Path) -> list[tuple[int, Path]]:
    """NAME.bak.N beside `path`, oldest (lowest N) first."""
    prefix = path.name + ".bak."
    found = []
    for p in path.parent.glob(glob.escape(prefix) + "*"):
        n = p.name[len(prefix):]
        if n.isdigit() and p.is_file():
            found.append((int(n), p))
    return sorted(found)


# --- rendering ------------------------------------------------------------------------------


def render_config(
    servers: Sequence[DiscoveredServer],
    *,
    discovery: DiscoveryConfig | None = None,
    probed: bool = True,
    stack: tuple[Path | None, Path | None] = (None, None),
) -> str:
    """The whole file. Pure: what was found in, TOML text out."""
    dcfg = discovery or DiscoveryConfig()
    lines = [
        "# nonstop configuration, written by `nonstop init` on "
        + time.strftime("%Y-%m-%d %H:%M") + ".",
        "#",
        "# nonstop sits between Claude Code and the Anthropic cloud. When the cloud cannot "
        "serve (quota",
        "# used up, overloaded, offline) it answers from a local model instead. Run Claude "
        "Code through it",
        "# with `nonstop claude` (or ANTHROPIC_BASE_URL=http://" + DEFAULT_LISTEN + " claude).",
        "#",
        "# Lines starting with # are comments: remove the # to use a setting. Check the file "
        "with",
        "# `nonstop config check` and the whole set-up with `nonstop doctor`.",
        "",
    ]
    defaults = Config(state_dir=default_state_dir())
    for key in ("listen", "token", "state_dir", "max_body_bytes", "drain_timeout", "ping_interval",
                "head_timeout", "slow_heads_per_client", "body_timeout", "body_min_rate"):
        value = getattr(defaults, key)
        lines += _key(key, str(value) if key == "state_dir" else value, TOP_DOCS[key],
                      active=key == "listen")
    lines += _section("cloud", {"url": defaults.cloud.url})
    lines += _local_blocks(servers, dcfg, probed)
    lines += _routes_example(servers)
    lines += _routing_section(servers)
    lines += _discovery_section(dcfg, servers)
    lines += _embedded_section(servers, stack)
    for name in ("warmup", "log", "hooks", "recovery", "eval", "shadow", "shared"):
        lines += _section(name, {}, commented=True)
    lines += _team_section()
    return "\n".join(lines).rstrip() + "\n"


def _team_section() -> list[str]:
    return ["", *_comment(
        "A shared gateway for a team: one access token per person (sent as x-nonstop-token; "
        "the request log attributes requests to them, and each sees only their own stored "
        "bodies). With [[users]], nonstop may listen beyond loopback."
    ), "# [[users]]", '# name = "ann"', '# token = "a-long-random-token-for-ann"', "", *_comment(
        "Friendly names for accounts (each credential's quota is its own; `nonstop status` "
        "shows the labels):"
    ), "# [accounts]", '# "key:3f2a9c1e0b7d" = "ann (team key)"']


def _local_blocks(servers: Sequence[DiscoveredServer], dcfg: DiscoveryConfig, probed: bool) -> list[str]:
    lines = ["", "# --- local models " + "-" * 71]
    if servers:
        lines += _comment(
            "Servers nonstop found on this machine. They are tried in this order when the "
            "cloud cannot serve. While any [[local]] block is here, discovery does not run "
            "and the embedded server does not start (see [embedded])."
        )
        names: set[str] = set()
        for i, s in enumerate(servers):
            name = s.kind if s.kind not in names else f"{s.kind}-{i + 1}"
            names.add(name)
            lines += _local_block(s, to_backend_config(s, name=name), full_docs=i == 0)
        return lines
    if probed:
        why = (f"No local model server answered on {dcfg.host} port(s) "
               f"{', '.join(map(str, dcfg.ports))}, so none is set here.")
    else:
        why = "Discovery was skipped (--no-discover), so no server is set here."
    lines += _comment(
        why + " nonstop looks again each time it starts, and falls back to its embedded "
        "server. To use your own server (Ollama, llama.cpp, LM Studio, vLLM), start it and "
        "run `nonstop init --force`, or fill in a block like this one:"
    )
    example = LocalBackendConfig(name="ollama", url="http://127.0.0.1:11434", model="qwen3-coder:30b")
    lines.append("")
    lines.append("# [[local]]")
    lines += _keys("local", example, set(), commented=True)
    return lines


def _local_block(d: DiscoveredServer, b: LocalBackendConfig, full_docs: bool) -> list[str]:
    lines = [""]
    lines += _comment(f"Found: {describe(d)}.")
    if d.models and len(d.models) > 1:
        lines += _comment("It also offers: " + ", ".join(m for m in d.models if m != d.model)[:600])
    for note in d.notes:
        lines += _comment(f"Note: {note}.")
    lines.append("[[local]]")
    active = {"name", "url", "api", "model", "context_window", "max_output_tokens"}
    if full_docs:
        lines += _keys("local", b, active)
    else:
        lines += _comment("(each key is explained in the first [[local]] block)")
        for f in fields(b):
            value = getattr(b, f.name)
            text = f"{f.name} = {toml_value(value)}"
            lines.append(text if f.name in active else "# " + text)
    return lines


def _example_backend(servers: Sequence[DiscoveredServer]) -> str:
    """The backend the examples name: the first one found, else the commented [[local]]'s."""
    return servers[0].kind if servers else "ollama"


def _routes_example(servers: Sequence[DiscoveredServer]) -> list[str]:
    target = _example_backend(servers)
    return [
        "",
        *_comment(
            "Which local backends serve which model names, in order (shell-style globs; the "
            "first match wins). Without [routes], every request may use every [[local]] "
            "backend, in file order."
        ),
        "# [routes]",
        f"# \"claude-haiku-*\" = {toml_value(target)}",
        f"# \"*\" = [{toml_value(target)}]",
    ]


def _routing_section(servers: Sequence[DiscoveredServer]) -> list[str]:
    lines = _section("routing", {}, commented=True)
    lines += ["", *_comment(
        "A table per kind of work (main, subagent, compaction, background, count_tokens) "
        "says whether the cloud is used first, as a fallback or never (cloud), which local "
        "backends in what order (backends, by name; default: all), and what to prefer among "
        "them (prefer: order, fastest, best). For example, background work (titles, "
        "summaries) on local models while one is up:"
    ), "# [routing.background]", '# cloud = "fallback"',
        f"# backends = [{toml_value(_example_backend(servers))}]", '# prefer = "fastest"']
    return lines


def _discovery_section(dcfg: DiscoveryConfig, servers: Sequence[DiscoveredServer]) -> list[str]:
    active: dict[str, Any] = {}
    if dcfg.ports != DiscoveryConfig().ports:
        active["ports"] = list(dcfg.ports)
    if dcfg.host != DiscoveryConfig().host:
        active["host"] = dcfg.host
    return _section("discovery", active, commented=not active, source=dcfg)


def _embedded_section(servers: Sequence[DiscoveredServer], stack: tuple[Path | None, Path | None]) -> list[str]:
    from nonstop.backends.llama_stack import INSTALL_HINT

    binary, model = stack
    lines = ["", "# --- the embedded fallback " + "-" * 62]
    if servers:
        lines += _comment(
            "nonstop can also run its own llama-server with a small bundled model. With the "
            "[[local]] blocks above it stays off; set mode = \"always\" to keep it as a last "
            "resort."
        )
        return lines + _section("embedded", {}, commented=True)[1:]
    lines += _comment(
        "With no [[local]] server, nonstop starts its own llama-server on a free loopback "
        "port with the bundled SmolLM2-135M model (98 MB, nothing to download). It is tiny: "
        "it keeps a session answering while the cloud is out, but writes weak code. Point "
        "nonstop at a bigger model for real work."
    )
    if binary is not None and model is not None:
        lines += _comment(f"Installed: {binary} with {model.name}.")
    else:
        missing = " and ".join(
            what for what, found in (("llama-server", binary), ("the bundled model", model)) if found is None
        )
        lines += _comment(f"Not installed yet: {missing}. Install it with:")
        lines.append(f"#   {INSTALL_HINT}")
    return lines + _section("embedded", {"mode": "auto"})[1:]


# --- TOML pieces -----------------------------------------------------------------------------


def _section(name: str, active: Mapping[str, Any], *, commented: bool = False, source: Any = None) -> list[str]:
    cls = SECTION_TYPES[name]
    obj = source if source is not None else cls()
    header = f"[{name}]"
    lines = ["", "# " + header if commented else header]
    for f in fields(cls):
        if f.name in _NOT_KEYS.get(name, ()):
            continue
        value = active.get(f.name, getattr(obj, f.name))
        lines += _key(f.name, value, SECTION_DOCS[name][f.name], active=f.name in active and not commented)
    return lines


def _keys(section: str, obj: Any, active: set[str], *, commented: bool = False) -> list[str]:
    lines: list[str] = []
    for f in fields(obj):
        lines += _key(f.name, getattr(obj, f.name), SECTION_DOCS[section][f.name],
                      active=f.name in active and not commented)
    return lines


def _key(key: str, value: Any, doc: str, *, active: bool) -> list[str]:
    line = f"{key} = {toml_value(value)}"
    return [*_comment(doc), line if active else "# " + line]


def _comment(text: str, width: int = 88) -> list[str]:
    words = _clean(text).split()
    lines: list[str] = []
    current = "#"
    for w in words:
        if len(current) + 1 + len(w) > width and current != "#":
            lines.append(current)
            current = "#"
        current += " " + w
    if current != "#":
        lines.append(current)
    return lines


def _clean(text: str) -> str:
    """Text from a server, made safe for a one-line comment or terminal output."""
    return "".join(c if c.isprintable() else " " for c in str(text))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_string(value: str) -> str:
    out = ['"']
    for c in value:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
