"""`nonstop eval`: how good is each local stand-in, measured on this machine's own stack.

Runs the suite (nonstop.quality.tasks) against every local backend: the configured
[[local]] ones, else those a running gateway reports, else what the gateway would find
(discovery, then the embedded server, started for the run and stopped after). Each task
goes through the backend exactly as live traffic does; scores are stored with the
model's identity, so `status`, `doctor` and the dashboard can show them, and
`--history` whether an update made things better or worse.

`--cloud` runs the same suite on the cloud with the user's own credentials from the
environment (ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN; never stored), for a baseline.
It spends quota, so it asks first unless `--yes`.

Exit codes: 0 when every backend asked for was evaluated, 1 when one could not be, 2
for a refusal (no backend, no credentials, not confirmed, a gateway wanting a token).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from nonstop.backends.local import LocalBackend
from nonstop.cli.common import db_path
from nonstop.cli.status import NotRunning, Refused, api_get
from nonstop.config import Config, LocalBackendConfig
from nonstop.quality.advice import LOW_SCORE
from nonstop.quality.identity import ModelIdentity
from nonstop.quality.results import Score, history, save_result
from nonstop.quality.score import Scorecard, TaskResult, Unanswered, no_answers
from nonstop.quality.tasks import CATEGORIES, CATEGORY_NAMES, CLIENT_MODEL, Task, suite
from nonstop.quality.verdict import ago, pct, summary

MAX_NOTES = 12


class EvalRefused(Exception):
    """The run cannot start; the message says why and what to do."""


@dataclass
class Backends:
    """The local backends to evaluate, where they came from, and the embedded server
    started for them (stopped when the run ends)."""

    configs: list[LocalBackendConfig]
    source: str  # "config", "gateway", "discovered", "embedded" or "" (none)
    embedded: Any = None


@dataclass
class Run:
    name: str
    identity: ModelIdentity
    card: Scorecard | None
    error: str = ""
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)


# --- which backends ------------------------------------------------------------------------------


def from_status(entry: Mapping[str, Any]) -> LocalBackendConfig | None:
    """A backend as a running gateway reports it (its status document's `local[]`)."""
    name, url = entry.get("name"), entry.get("url")
    if not isinstance(name, str) or not isinstance(url, str) or not url:
        return None
    window = entry.get("window") or entry.get("context_window")
    window = window if isinstance(window, int) and window > 0 else LocalBackendConfig.context_window
    out = entry.get("max_output_tokens")
    return LocalBackendConfig(
        name=name, url=url, api="openai" if entry.get("api") == "openai" else "anthropic",
        model=str(entry.get("model") or ""), context_window=window,
        max_output_tokens=out if isinstance(out, int) and 0 < out < window else max(1, min(4096, window // 4)),
    )


def gateway_backends(cfg: Config) -> list[LocalBackendConfig] | None:
    """The running gateway's backends, or None when it is not running."""
    try:
        st = api_get(cfg, "/_nonstop/api/status")
    except NotRunning:
        return None
    local = st.get("local") if isinstance(st, dict) else None
    found = [from_status(e) for e in local if isinstance(e, dict)] if isinstance(local, list) else []
    return [b for b in found if b is not None]


async def find_backends(cfg: Config, session: aiohttp.ClientSession, *, start_embedded: bool = True,
                        echo: Callable[[str], None] = print) -> Backends:
    if cfg.local:
        return Backends(list(cfg.local), "config")
    running = await asyncio.to_thread(gateway_backends, cfg)
    if running:
        return Backends(running, "gateway")
    if not start_embedded:
        from nonstop.backends import discovery

        found = await discovery.discover(cfg.discovery, session) if cfg.discovery.enabled else []
        names: set[str] = set()
        configs = []
        for s in found:  # named as the gateway names them
            name = s.kind if s.kind not in names else f"{s.kind}-{len(names) + 1}"
            names.add(name)
            configs.append(discovery.to_backend_config(s, name=name))
        return Backends(configs, "discovered" if configs else "")
    from nonstop.server.autoconfig import auto_backends

    echo("nonstop: no local backend configured and no gateway running: looking for one as the gateway would")
    auto = await auto_backends(cfg, session, have_configured=False)
    source = "embedded" if auto.embedded is not None and len(auto.backends) == 1 else "discovered"
    return Backends(auto.backends, source if auto.backends else "", auto.embedded)


# --- running -------------------------------------------------------------------------------------


def _progress(name: str, total: int, echo: Callable[[str], None]) -> Callable[[Task, TaskResult], None]:
    done = 0

    def report(task: Task, result: TaskResult) -> None:
        nonlocal done
        done += 1
        mark = "ok" if result.passed else "miss"
        took = f" {result.first_token_s + (result.generate_s or 0):.1f}s" if result.first_token_s is not None else ""
        echo(f"  {name} [{done:>2}/{total}] {task.id:<18} {mark}{took}")

    return report


async def evaluate_local(b: LocalBackendConfig, session: aiohttp.ClientSession, *, quick: bool,
                         echo: Callable[[str], None], ping_interval: float) -> Run:
    from nonstop.backends.registry import make_local_backend
    from nonstop.quality.runner import evaluate_backend

    backend: LocalBackend = make_local_backend(b, session, ping_interval=ping_interval)
    total = len(suite(quick)) + (0 if quick else 1)
    echo(f"nonstop: evaluating {b.name} at {b.url} ({total} tasks)")
    started = time.monotonic()
    identity, card = await evaluate_backend(backend, session, quick=quick, progress=_progress(b.name, total, echo))
    return Run(b.name, identity, card, elapsed=time.monotonic() - started)


def cloud_headers(env: Mapping[str, str]) -> dict[str, str]:
    key, token = env.get("ANTHROPIC_API_KEY", ""), env.get("ANTHROPIC_AUTH_TOKEN", "")
    if key:
        return {"x-api-key": key}
    if token:
        return {"authorization": f"Bearer {token}"}
    raise EvalRefused("--cloud needs your credentials in the environment: set ANTHROPIC_API_KEY (or "
                      "ANTHROPIC_AUTH_TOKEN); a claude.ai login cannot be used from here")


async def evaluate_cloud(cfg: Config, headers: dict[str, str], model: str, *, quick: bool,
                         echo: Callable[[str], None]) -> Run:
    from nonstop.backends.cloud import CloudBackend
    from nonstop.quality.runner import CloudTarget, run_suite
    from nonstop.quality.score import scorecard

    cloud = CloudBackend(cfg.cloud, CloudBackend.make_session(cfg.cloud))
    total = len(suite(quick)) + (0 if quick else 1)
    echo(f"nonstop: evaluating the cloud ({model}, {total} tasks)")
    started = time.monotonic()
    try:
        results = await run_suite(CloudTarget(cloud, headers, model), suite(quick), long_context=not quick,
                                  progress=_progress("cloud", total, echo))
    finally:
        await cloud.session.close()
    identity = ModelIdentity("cloud", server="cloud", name=model)
    why = no_answers(results or [])
    if why:  # a refused key, no network: nothing measured, no score stored
        return Run("cloud", identity, None, error=f"no task got an answer ({why})"[:300], elapsed=time.monotonic() - started)
    return Run("cloud", identity, scorecard(results or []), elapsed=time.monotonic() - started)


def confirm_cloud(quick: bool, yes: bool, ask: Callable[[str], str] | None, echo: Callable[[str], None]) -> None:
    from nonstop.quality.runner import CLOUD_LONG_CONTEXT_TOKENS
    from nonstop.wire.anthropic import estimate_tokens

    tasks = suite(quick)
    tokens = sum(estimate_tokens(t.request()) for t in tasks) + (0 if quick else CLOUD_LONG_CONTEXT_TOKENS)
    echo(f"nonstop: --cloud sends {len(tasks) + (0 if quick else 1)} requests to the cloud with your own credentials "
         f"(about {round(tokens / 1000)}k input tokens): they count against your quota or bill.")
    if yes:
        return
    if ask is None:
        raise EvalRefused("--cloud spends quota: run it where you can answer the question, or add --yes")
    if ask("Run the suite on the cloud? [y/N] ").strip().lower() not in ("y", "yes"):
        raise EvalRefused("not confirmed; nothing was sent to the cloud")


# --- rendering (pure) -----------------------------------------------------------------------------


def _cell(v: float | None) -> str:
    return pct(v) if v is not None else "—"


def _speed(card: Scorecard | None) -> tuple[str, str]:
    if card is None:
        return "—", "—"
    first = "—"
    if card.first_token_s is not None:
        first = f"{card.first_token_s:.1f} s at {card.first_token_tokens / 1000:.1f}k tokens"
    rate = f"{card.tokens_per_s:.0f} tok/s" if card.tokens_per_s else "—"
    return first, rate


def render_table(runs: list[Run]) -> str:
    """One column per backend: each category's score, the speed, the overall score."""
    rows: list[tuple[str, list[str]]] = [("model", [r.identity.label() if r.identity.name else "?" for r in runs])]
    for c in CATEGORIES:
        rows.append((CATEGORY_NAMES[c], [_cell(r.card.categories.get(c)) if r.card else "—" for r in runs]))
    speeds = [_speed(r.card) for r in runs]
    rows.append(("first token", [s[0] for s in speeds]))
    rows.append(("output speed", [s[1] for s in speeds]))
    rows.append(("overall", [_cell(r.card.overall) if r.card else (r.error or "—") for r in runs]))
    head = [""] + [r.name for r in runs]
    width0 = max(len(label) for label, _ in rows)
    widths = [max(len(head[i + 1]), *(len(cells[i]) for _, cells in rows)) for i in range(len(runs))]
    lines = ["  ".join([" " * width0, *(h.ljust(w) for h, w in zip(head[1:], widths, strict=True))]).rstrip()]
    for label, cells in rows:
        lines.append("  ".join([label.ljust(width0), *(c.ljust(w) for c, w in zip(cells, widths, strict=True))]).rstrip())
    return "\n".join(lines)


def render_notes(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        if r.card is None:
            continue
        misses = [t for t in r.card.tasks if t.notes and not all(v >= 1.0 for v in t.marks.values())]
        if not misses:
            continue
        out.append(f"{r.name}: what went wrong")
        for t in misses[:MAX_NOTES]:
            out.append(f"  {t.id:<18} {'; '.join(t.notes)}"[:200])
        if len(misses) > MAX_NOTES:
            out.append(f"  … and {len(misses) - MAX_NOTES} more (--json has them all)")
    return out


def render_verdicts(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        if r.card is None or r.name == "cloud":
            continue
        if r.card.overall is not None and r.card.overall < LOW_SCORE:
            out.append(f"{r.name} scores low ({pct(r.card.overall)}): expect Claude Code sessions on this model to "
                       "stall or go wrong; docs/quality.md says how to read the scorecard and what to try")
    return out


def render_history(scores: list[Score], now: float) -> str:
    if not scores:
        return "no evaluations stored yet — run `nonstop eval`"
    lines = [f"{'when':<16} {'backend':<12} {'model':<34} {'overall':>7}  summary"]
    # Each run is compared with the one before it of the same suite and mode. Without one,
    # with the run before of the other mode, and said so: a quick run has no long-context
    # task, so part of such a change is the suite's.
    same: dict[tuple[str, str, bool], Score] = {}
    last: dict[str, Score] = {}
    for s in reversed(scores):  # oldest first
        change = ""
        kind = (s.backend, s.suite, s.quick)
        before = same.get(kind) or last.get(s.backend)
        if before is not None and before.overall is not None and s.overall is not None:
            delta = round((s.overall - before.overall) * 100)
            against = "" if before is same.get(kind) else f" against the {'quick' if before.quick else 'full'} run before"
            change = (f" ({'+' if delta >= 0 else ''}{delta} pts{against}"
                      + (", model changed)" if before.model.key != s.model.key else ")"))
        same[kind] = last[s.backend] = s
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.ts))
        mode = " quick" if s.quick else ""
        lines.append(f"{when:<16} {s.backend:<12} {s.model.label()[:34]:<34} {_cell(s.overall):>7}  "
                     f"{summary(s)}{mode}{change} · {ago(now - s.ts)}")
    return "\n".join([lines[0], *reversed(lines[1:])])


def run_json(r: Run) -> dict[str, Any]:
    return {"backend": r.name, "model": r.identity.to_dict(), "error": r.error, "seconds": round(r.elapsed, 1),
            "scores": r.card.to_dict() if r.card else None,
            "tasks": [t.to_dict() for t in r.card.tasks] if r.card else []}


# --- the command ---------------------------------------------------------------------------------


def main(cfg: Config, *, backend: str = "", model: str = "", quick: bool = False, as_json: bool = False,
         cloud: bool = False, cloud_model: str = "", yes: bool = False, show_history: bool = False,
         env: Mapping[str, str] | None = None, ask: Callable[[str], str] | None = None) -> int:
    env = os.environ if env is None else env
    if show_history:
        scores = history(db_path(cfg.state_dir), backend)
        print(json.dumps([s.to_dict() for s in scores], indent=2) if as_json else render_history(scores, time.time()))
        return 0
    if ask is None and sys.stdin.isatty():
        ask = input

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        runs = asyncio.run(_run(cfg, backend=backend, model=model, quick=quick, cloud=cloud,
                                cloud_model=cloud_model or env.get("ANTHROPIC_MODEL", "") or CLIENT_MODEL,
                                yes=yes, env=env, ask=ask, echo=echo))
    except (EvalRefused, Refused) as exc:
        print(f"nonstop: {exc}", file=sys.stderr)
        return 2
    stored = ""
    for r in runs:
        if r.card is not None:
            try:
                save_result(db_path(cfg.state_dir), r.identity, r.card, quick=quick)
                stored = str(db_path(cfg.state_dir))
            except (OSError, sqlite3.Error) as exc:  # the results are shown all the same
                print(f"nonstop: the results could not be stored in {db_path(cfg.state_dir)} ({exc}); "
                      "check that state_dir is a folder nonstop can write", file=sys.stderr)
    if as_json:
        print(json.dumps({"quick": quick, "backends": [run_json(r) for r in runs]}, indent=2, ensure_ascii=False))
    else:
        print(render_table(runs))
        notes = render_notes(runs) + render_verdicts(runs)
        if notes:
            print()
            print("\n".join(notes))
        if stored:
            print(f"\nstored in {stored}; `nonstop status` shows the verdicts, `nonstop eval --history` the runs")
    return 0 if runs and all(r.card is not None for r in runs) else 1


async def _run(cfg: Config, *, backend: str, model: str, quick: bool, cloud: bool, cloud_model: str, yes: bool,
               env: Mapping[str, str], ask: Callable[[str], str] | None, echo: Callable[[str], None]) -> list[Run]:
    headers = cloud_headers(env) if cloud else {}
    if cloud:
        confirm_cloud(quick, yes, ask, echo)
    runs: list[Run] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        found = await find_backends(cfg, session, echo=echo)
        try:
            configs = _pick(found.configs, backend, model, cloud)
            for b in configs:
                try:
                    runs.append(await evaluate_local(b, session, quick=quick, echo=echo, ping_interval=cfg.ping_interval))
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    runs.append(Run(b.name, ModelIdentity(b.name, name=b.model), None, error=f"{type(exc).__name__}: {exc}"[:200]))
                except Unanswered as exc:  # nothing measured: no score is stored
                    runs.append(Run(b.name, ModelIdentity(b.name, name=b.model), None, error=str(exc)[:300]))
        finally:
            if found.embedded is not None:
                await found.embedded.stop()
    if cloud:
        runs.append(await evaluate_cloud(cfg, headers, cloud_model, quick=quick, echo=echo))
    return runs


def _pick(configs: list[LocalBackendConfig], backend: str, model: str, cloud: bool) -> list[LocalBackendConfig]:
    if backend:
        picked = [b for b in configs if b.name == backend]
        if not picked:
            names = ", ".join(b.name for b in configs) or "none"
            raise EvalRefused(f"no local backend named {backend!r}; the backends are: {names}")
        configs = picked
    if model:
        if len(configs) != 1:
            raise EvalRefused("--model needs --backend: the server whose other model to evaluate")
        b = configs[0]
        # Another model on the same server is scored under its own name, so the backend's
        # own score stays the one of the model it serves.
        configs = [b if model == b.model else replace(b, name=f"{b.name}:{model}", model=model)]
    if not configs and not cloud:
        raise EvalRefused("no local backend to evaluate: configure a [[local]] server, start one nonstop can "
                          "discover, or install the embedded one (`nonstop doctor` says how)")
    return configs
