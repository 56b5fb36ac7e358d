"""server/hooks: a switch notice goes to the user's command (the event as JSON on stdin
and in NONSTOP_EVENT, its words in NONSTOP_MESSAGE) and webhook; a hook that fails, or
hangs, is logged and never holds nonstop."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from nonstop.config import HooksConfig
from nonstop.server import hooks

EVENT = {"event": "switch", "to": "local", "message": "cloud out until 17:00; serving on llama"}


async def test_the_command_gets_the_event_on_stdin_and_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    script = ("import json, os, sys; json.dump({'stdin': sys.stdin.read(), 'event': os.environ['NONSTOP_EVENT'], "
              f"'message': os.environ['NONSTOP_MESSAGE']}}, open({str(out)!r}, 'w'))")
    await hooks.notify(HooksConfig(command=f"{sys.executable} -c \"{script}\""), EVENT)
    got = json.loads(out.read_text())
    assert json.loads(got["stdin"]) == EVENT and json.loads(got["event"]) == EVENT
    assert got["message"] == EVENT["message"]


async def test_the_webhook_gets_the_event_as_json(serve) -> None:
    seen: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        seen.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    await hooks.notify(HooksConfig(webhook=await serve(app) + "/hook"), EVENT)
    assert seen == [EVENT]


async def test_a_failing_hook_is_logged_and_does_not_raise(serve, caplog: pytest.LogCaptureFixture) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", refuse)
    with caplog.at_level(logging.WARNING, logger="nonstop"):
        await hooks.notify(HooksConfig(webhook=await serve(app) + "/hook"), EVENT)
        await hooks.notify(HooksConfig(webhook="http://127.0.0.1:1/hook"), EVENT)
    assert "hook webhook answered HTTP 500" in caplog.text and "hook webhook failed" in caplog.text


async def test_a_command_that_hangs_is_killed_at_the_timeout(monkeypatch, tmp_path: Path, caplog) -> None:
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT", 0.5)
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nonstop"):
        await hooks.notify(HooksConfig(command=f"exec {sys.executable} -c \"{script}\""), EVENT)
    assert time.monotonic() - started < 5
    assert "hook command failed: TimeoutError" in caplog.text
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
