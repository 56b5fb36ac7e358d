"""`nonstop eval`, `nonstop models` and the verdict in `nonstop status`, run as a user runs
them, against a scripted model server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from nonstop import cli
from nonstop.cli import eval as eval_cmd
from nonstop.cli import models, status
from nonstop.cli.eval import from_status
from nonstop.config import CloudConfig, Config, DiscoveryConfig, EmbeddedConfig, LocalBackendConfig
from nonstop.quality.identity import ModelIdentity
from nonstop.quality.results import latest_scores
from nonstop.quality.score import Scorecard
from tests.support.scripted_model import FLAWED_OVERALL, STATE, scripted_app


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Threaded:
    """An aiohttp app served from a thread of its own: the commands run their own loop."""

    def __init__(self, app: web.Application):
        self.app = app
        self.port = _port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def flawed() -> Iterator[Threaded]:
    s = Threaded(scripted_app("flawed"))
    yield s
    s.close()


def config(tmp_path: Path, server: Threaded | str, cloud_url: str = "") -> Config:
    url = server if isinstance(server, str) else server.url
    return Config(listen=f"127.0.0.1:{_port()}", state_dir=tmp_path / "state", discovery=DiscoveryConfig(enabled=False),
                  embedded=EmbeddedConfig(mode="never"), cloud=CloudConfig(url=cloud_url or f"http://127.0.0.1:{_port()}"),
                  local=(LocalBackendConfig("llama", url, context_window=8192, max_output_tokens=2048),))


def test_eval_prints_a_table_stores_the_run_and_shows_it_everywhere(tmp_path: Path, flawed: Threaded,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, flawed)
    assert eval_cmd.main(cfg) == 0
    out, err = capsys.readouterr()
    assert "nonstop: evaluating llama" in err and "[18/18] long.fact" in err
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "75%" in rows["tool choice"] and "89%" in rows["stop"] and "0%" in rows["long context"]
    assert f"{FLAWED_OVERALL * 100:.0f}%" in rows["overall"]
    assert "choice.read        called Bash; wanted Read" in out
    assert "llama scores low" not in out  # 65% is not low

    assert status.cmd_status(cfg) == 1  # not running: the log on disk, with the verdict
    out = capsys.readouterr().out
    assert "eval: scripted-coder-7b q4_k_m, 8k: tools 75% · loop 75%" in out and "stale" not in out

    flawed.app[STATE]["model_path"] = "/models/another-coder-14b.Q4_K_M.gguf"  # a swapped model
    status.cmd_status(cfg)
    out = capsys.readouterr().out
    assert "stale: the model changed since the eval (was scripted-coder-7b q4_k_m, 8k, now another-coder-14b q4_k_m, 8k)" in out

    assert eval_cmd.main(cfg, show_history=True) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[2] == "llama" and f"{FLAWED_OVERALL * 100:.0f}%" in out


def test_eval_json_and_one_backend_and_another_model(tmp_path: Path, flawed: Threaded,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, flawed)
    assert eval_cmd.main(cfg, backend="llama", quick=True, as_json=True) == 0
    doc = json.loads(capsys.readouterr().out)
    (run,) = doc["backends"]
    assert doc["quick"] and run["backend"] == "llama" and run["model"]["quantisation"] == "Q4_K_M"
    assert run["scores"]["categories"]["long_context"] is None and len(run["tasks"]) == 8
    assert eval_cmd.main(cfg, backend="nope") == 2
    assert "no local backend named 'nope'; the backends are: llama" in capsys.readouterr().err
    assert eval_cmd.main(cfg, backend="llama", model="qwen3:8b", quick=True, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["backends"][0]["backend"] == "llama:qwen3:8b"


def test_eval_of_a_backend_that_is_down_stores_no_score_and_fails(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`nonstop eval` against a local server that is not running: no task gets an answer,
    so nothing is measured. No score is stored (a stopped server is not a model that fails
    everything, and a 0% would stay in `status`, `doctor`, the dashboard and routing) and
    the command exits 1: the backend could not be evaluated."""
    cfg = config(tmp_path, f"http://127.0.0.1:{_port()}")  # nothing listens there
    rc = eval_cmd.main(cfg, quick=True)
    out, _ = capsys.readouterr()
    stored = latest_scores(cfg.state_dir / "nonstop.db")
    assert "connection refused" in out  # every task failed to reach the server
    assert stored == {}, f"an eval in which the backend answered nothing was stored: {stored['llama'].overall!r}"
    assert rc == 1


def test_eval_results_are_still_shown_when_the_state_directory_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """When the state directory cannot be made or written (a read-only home or mount; here
    a regular file stands where its parent should be), `nonstop eval` still prints the
    scorecard of a run that may have taken minutes, and says that it could not store it."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory's parent should be")
    cfg = dataclasses.replace(config(tmp_path, f"http://127.0.0.1:{_port()}"), state_dir=blocker / "state")
    cats: dict[str, float | None] = dict.fromkeys(("tool_choice", "tool_input", "tool_loop", "stop", "format"), 0.75)
    card = Scorecard({**cats, "long_context": None}, 0.75)

    async def finished_run(*_: Any, **__: Any) -> list[eval_cmd.Run]:
        return [eval_cmd.Run("llama", ModelIdentity("llama", name="qwen3-coder-30b"), card, elapsed=240.0)]

    monkeypatch.setattr(eval_cmd, "_run", finished_run)
    try:
        eval_cmd.main(cfg, quick=True)
    except OSError as exc:
        pytest.fail(f"nonstop eval crashed after the run instead of showing its results: {exc!r}")
    out, err = capsys.readouterr()
    assert "overall" in out and "75%" in out  # the scorecard is shown
    assert "could not be stored" in err and "stored in" not in out


def test_cloud_needs_credentials_and_a_yes(tmp_path: Path, flawed: Threaded, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, flawed)
    assert eval_cmd.main(cfg, cloud=True, env={}) == 2
    assert "set ANTHROPIC_API_KEY" in capsys.readouterr().err
    env = {"ANTHROPIC_API_KEY": "sk-ant-test"}
    assert eval_cmd.main(cfg, cloud=True, env=env, ask=None) == 2
    assert "add --yes" in capsys.readouterr().err
    assert eval_cmd.main(cfg, cloud=True, env=env, ask=lambda q: "n") == 2
    assert "nothing was sent" in capsys.readouterr().err
    assert flawed.app[STATE]["answered"] == []


def test_cloud_side_by_side(tmp_path: Path, flawed: Threaded, capsys: pytest.CaptureFixture[str]) -> None:
    perfect = Threaded(scripted_app("perfect"))
    try:
        cfg = config(tmp_path, flawed, cloud_url=perfect.url)
        code = eval_cmd.main(cfg, quick=True, cloud=True, yes=True, env={"ANTHROPIC_AUTH_TOKEN": "tok-PLANTED-4242"})
        out, err = capsys.readouterr()
        assert code == 0 and "count against your quota" in err
        header = out.splitlines()[0].split()
        assert header == ["llama", "cloud"]
        assert perfect.app[STATE]["headers"]["Authorization"] == "Bearer tok-PLANTED-4242"
        assert b"PLANTED-4242" not in (cfg.state_dir / "nonstop.db").read_bytes()  # never stored
        assert "PLANTED-4242" not in out + err
    finally:
        perfect.close()


def test_models_lists_each_backends_model(tmp_path: Path, flawed: Threaded, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path, flawed)
    assert models.main(cfg) == 0
    out = capsys.readouterr().out
    assert "llama  llama.cpp at http" in out and "7.6B parameters · Q4_K_M · 4.7 GB" in out
    assert "context: trained 32k · configured 8k · server 8k" in out
    assert "tools: yes" in out and "eval: not evaluated — run `nonstop eval`" in out
    assert models.main(cfg, as_json=True) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "llama" and doc["key"] and doc["eval"] is None


def test_models_reads_the_embedded_model_file_without_starting_it(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.quality.test_identity import META, write_gguf

    path = write_gguf(tmp_path / "tiny-coder.Q8_0.gguf", {**META, "general.file_type": 7})
    cfg = Config(listen=f"127.0.0.1:{_port()}", state_dir=tmp_path / "state", discovery=DiscoveryConfig(enabled=False),
                 embedded=EmbeddedConfig(model_path=str(path), context_window=8192))
    assert models.main(cfg) == 0
    out = capsys.readouterr().out
    assert "embedded  model file at embedded (starts when needed): tiny-coder" in out and "Q8_0" in out


def test_the_commands_are_wired(tmp_path: Path, flawed: Threaded, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'listen = "127.0.0.1:{_port()}"\nstate_dir = "{tmp_path / "state"}"\n'
                    f'[[local]]\nname = "llama"\nurl = "{flawed.url}"\n[eval]\nauto = true\n')
    assert cli.main(["eval", "--config", str(path), "--history"]) == 0
    assert "no evaluations stored yet" in capsys.readouterr().out
    assert cli.main(["models", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["backend"] == "llama"


def test_a_gateways_backend_list_becomes_configs() -> None:
    b = from_status({"name": "embedded", "url": "http://127.0.0.1:5555", "api": "anthropic", "model": "smol",
                     "context_window": 8192, "window": 4096, "max_output_tokens": 1024})
    assert b == LocalBackendConfig("embedded", "http://127.0.0.1:5555", model="smol", context_window=4096,
                                   max_output_tokens=1024)
    assert from_status({"name": "x"}) is None
