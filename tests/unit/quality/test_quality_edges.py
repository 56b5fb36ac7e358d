"""The quality measurement at its edges: replies that break a scorer, streams cut by a
server's error, stored rows of another shape, readings that miss a digest or a server that
is down, runs of different suites, results that cannot be stored, and shadow replays that
must leave the live backend's health alone."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from nonstop.backends.base import Attempt, Reply, Usage, single
from nonstop.backends.registry import make_local_backend
from nonstop.cli.eval import render_history
from nonstop.config import Config, EvalConfig, LocalBackendConfig, parse_config
from nonstop.quality import auto as auto_mod
from nonstop.quality.auto import EvalWatch
from nonstop.quality.identity import ModelIdentity
from nonstop.quality.results import Score, judge, latest_scores, save_result
from nonstop.quality.runner import read_answer, run_suite
from nonstop.quality.score import Answer, Scorecard, no_answers, score_task, scorecard
from nonstop.quality.tasks import suite
from nonstop.quality.verdict import verdicts
from nonstop.server.runtime import Runtime
from nonstop.store.db import connect, migrate
from nonstop.wire.anthropic import estimate_tokens
from tests.support.fake_cloud import sse
from tests.support.scripted_model import scripted_app


def _task(tid: str):
    return next(t for t in suite() if t.id == tid)


# --- score.py -----------------------------------------------------------------------------------


def test_a_reply_of_deeply_nested_brackets_to_the_json_task_scores_nothing() -> None:
    """A small model stuck repeating `[[[[` nests past the JSON parser's depth: the task
    scores 0, and the eval goes on."""
    task = _task("format.json")
    answer = Answer(content=[{"type": "text", "text": "[" * 3000}], stop_reason="max_tokens", output_tokens=256)
    result = score_task(task, answer)
    assert result.marks["format"] == 0.0


@pytest.mark.parametrize(("text", "mark"), [
    ('{"name": "web", "port": 8080}', 1.0),
    ('{"port": 8080, "name": "web"}', 1.0),
    ('{"name": "web", "port": 8080.0}', 0.0),  # a float where an integer was asked
    ('{"name": "web", "port": "8080"}', 0.0),
    ('```json\n{"name": "web", "port": 8080}\n```', 0.5),
])
def test_the_json_task_takes_json_types_as_json_says_them(text: str, mark: float) -> None:
    """The JSON task compares with JSON's types: 8080.0 is not the integer asked for."""
    answer = Answer(content=[{"type": "text", "text": text}], stop_reason="end_turn", output_tokens=20)
    assert score_task(_task("format.json"), answer).marks["format"] == mark


# --- runner.py ----------------------------------------------------------------------------------


def _stream(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(sse(name, data) for name, data in events)


CUT_MID_ANSWER = _stream([
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let"}}),
    ("error", {"type": "error", "error": {"type": "api_error",
                                          "message": "llama: the server closed the connection mid-response"}}),
])


class CutTarget:
    """Every reply starts, then the server dies mid-answer (an OOM kill, a crash)."""

    name = "llama"

    async def send(self, req: dict[str, Any]) -> Attempt:
        return Reply(200, [], single(CUT_MID_ANSWER), "llama", True, Usage())

    async def prompt_tokens(self, req: dict[str, Any]) -> int:
        return estimate_tokens(req)

    def long_context_tokens(self) -> int:
        return 4000

    def output_cap(self) -> int:
        return 0


async def test_a_stream_cut_by_an_error_mid_answer_is_no_answer_of_the_model() -> None:
    """A stream that ends in an error event after some content (the server crashed, the
    cloud said overloaded) is no answer of the model: the task carries the error, and a
    run in which every task was cut stores no score."""
    answer = await read_answer(Reply(200, [], single(CUT_MID_ANSWER), "llama", True, Usage()), 0.0)
    assert answer.error, "the error event was dropped: the cut stream is scored as the model's answer"
    results = await run_suite(CutTarget(), suite(quick=True), long_context=False)
    assert results is not None
    assert no_answers(results), f"every task was cut by a server error, yet a score would be stored: {scorecard(results).overall}"


async def test_a_stream_that_stops_before_its_message_stop_is_no_answer_of_the_model() -> None:
    """A stream that just stops after some content, with neither a message_stop nor an
    error event (the connection was cut), is no answer of the model either; one that ends
    with its message_stop is."""
    head = CUT_MID_ANSWER.split(b"event: error")[0]
    cut = await read_answer(Reply(200, [], single(head), "llama", True, Usage()), 0.0)
    assert cut.error, "a stream cut without an error event is scored as the model's answer"
    whole = head + _stream([
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ])
    answer = await read_answer(Reply(200, [], single(whole), "llama", True, Usage()), 0.0)
    assert not answer.error and answer.stop_reason == "end_turn"
    assert answer.content == [{"type": "text", "text": "Let"}]


# --- results.py / verdict.py --------------------------------------------------------------------


def test_a_row_whose_tasks_are_not_a_list_does_not_break_latest_scores(tmp_path: Path) -> None:
    """A stored row whose tasks are not a list (an older version, an edit by hand) is read
    with no tasks; status, doctor and the gateway's eval watch go on."""
    db = tmp_path / "nonstop.db"
    conn = connect(db)
    migrate(conn)
    with conn:
        conn.execute("INSERT INTO evals (ts, backend, model_key, model, suite, overall, scores, tasks) "
                     "VALUES (?, 'llama', 'k', '{}', '1:full', 0.8, '{}', 'null')", (time.time(),))
    conn.close()
    scores = latest_scores(db)
    assert scores["llama"].overall == 0.8


def _score(model: ModelIdentity, overall: float = 0.8, *, quick: bool = False, ts: float = 0.0) -> Score:
    return Score(backend=model.backend, overall=overall, categories={"tool_loop": 0.75}, tools=0.9,
                 tokens_per_s=30.0, first_token_s=2.0, first_token_tokens=20000, ts=ts, model=model,
                 suite="1", quick=quick)


def test_a_digest_missing_from_one_reading_does_not_make_the_score_stale() -> None:
    """A reading of an Ollama that missed the digest (a slow /api/tags) is compared by name,
    quantisation and size: the same model is not "changed since the eval"."""
    stored = ModelIdentity("ollama", server="ollama", name="qwen3-coder:30b", quantisation="Q4_K_M",
                           digest="sha256:06c1097efce0", size_bytes=18_556_700_761)
    now = ModelIdentity("ollama", server="ollama", name="qwen3-coder:30b", quantisation="Q4_K_M")
    judged = judge(_score(stored), now)
    assert not judged.stale, judged.stale_why


def test_status_with_a_llama_server_down_does_not_call_its_score_stale(tmp_path: Path) -> None:
    """llama-server serves the file it was started with; the name the config gives it while
    it is down (not a path) says nothing of which model: the score is not stale."""
    db = tmp_path / "nonstop.db"
    ident = ModelIdentity("llama", server="llamacpp", name="/models/qwen3-coder-30b-a3b-Q4_K_M.gguf",
                          file="/models/qwen3-coder-30b-a3b-Q4_K_M.gguf", quantisation="Q4_K_M",
                          size_bytes=18_556_700_761, configured_context=32768)
    cats = dict.fromkeys(("tool_choice", "tool_input", "tool_loop", "stop", "format"), 0.9)
    save_result(db, ident, Scorecard({**cats, "long_context": None}, 0.9), quick=False)
    found = verdicts(db, ["llama"], current={}, models={"llama": "qwen3-coder"})
    assert found["llama"]["stale"] is False, found["llama"]["stale_why"]


# --- cli/eval.py --------------------------------------------------------------------------------


def test_history_compares_a_run_with_one_of_the_same_suite_and_mode_or_says_it_does_not() -> None:
    """A quick run has no long-context task: `--history` compares a run with the one before
    it of the same suite and mode; without one, with the run before of the other mode, and
    says so (part of that change is the suite's)."""
    m1 = ModelIdentity("llama", name="/m/a-Q4_K_M.gguf", quantisation="Q4_K_M", digest="file-sha256:aaaa")
    m2 = ModelIdentity("llama", name="/m/a-Q8_0.gguf", quantisation="Q8_0", digest="file-sha256:bbbb")
    now = time.time()
    full = _score(m1, 0.95, quick=False, ts=now - 7200)
    quick = _score(m2, 0.70, quick=True, ts=now - 60)
    newest = render_history([quick, full], now).splitlines()[1]
    assert "(-25 pts against the full run before, model changed)" in newest
    quick2 = _score(m2, 0.75, quick=True, ts=now - 30)
    newest = render_history([quick2, quick, full], now).splitlines()[1]
    assert "(+5 pts)" in newest


# --- auto.py -------------------------------------------------------------------------------------


@pytest.fixture
async def scripted() -> AsyncIterator[TestServer]:
    s = TestServer(scripted_app("perfect"), host="127.0.0.1")
    await s.start_server()
    yield s
    await s.close()


def _watch(tmp_path: Path, url: str, session: aiohttp.ClientSession, *, idle_after: float, clock: Any = time.time):
    cfg = Config(state_dir=tmp_path / "state", eval=EvalConfig(auto=True, idle_after=idle_after),
                 local=(LocalBackendConfig("llama", url, context_window=8192, max_output_tokens=2048),))
    notes: list[str] = []
    backends = [make_local_backend(b, session) for b in cfg.local]
    return backends, EvalWatch(cfg, session, note=notes.append, clock=clock), notes


async def test_a_background_eval_whose_result_cannot_be_stored_says_so_and_waits(
        tmp_path: Path, scripted: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `[eval] auto`, a result that cannot be written (a read-only state folder, a full
    disk, a lock) is said ("the background eval failed"), and the run ends cleanly; it is
    tried again only once the backend has been idle again."""

    def cannot_write(*a: Any, **k: Any) -> int:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(auto_mod, "save_result", cannot_write)
    async with aiohttp.ClientSession() as session:
        backends, watch, notes = _watch(tmp_path, f"http://127.0.0.1:{scripted.port}", session, idle_after=0)
        await watch.check(backends)
        assert watch.running is not None
        await asyncio.wait({watch.running})
        exc = watch.running.exception()
    assert exc is None, f"the background eval task died with {exc!r}; notes: {notes}"
    assert any("failed" in n for n in notes)


async def test_a_backend_that_went_down_is_not_auto_evaluated(tmp_path: Path) -> None:
    """A server that answered once and then went away is not picked for a background run:
    its last reading is dropped when a reading finds it down."""
    app = scripted_app("perfect")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    t = [1000.0]
    async with aiohttp.ClientSession() as session:
        backends, watch, notes = _watch(tmp_path, url, session, idle_after=300, clock=lambda: t[0])
        await watch.check(backends)  # up, idle since t=1000, not due yet
        assert watch.running is None
        await server.close()  # the server goes away
        t[0] = 1400.0
        await watch.check(backends)
        started = watch.running
        if started is not None:
            await asyncio.wait({started})
    assert started is None, f"a background eval was started on a server that is down; notes: {notes}"


# --- server/shadow.py ------------------------------------------------------------------------------


async def test_a_shadow_replay_that_times_out_does_not_demote_the_live_backend(tmp_path: Path, serve: Any) -> None:
    """A shadow replay is not streamed, so the local server's whole answer must come within
    the head's deadline. One that misses it leaves the backend's health as it was: shadow
    work never changes how real requests are routed."""

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(1.0)
        return web.json_response({"id": "msg_l", "type": "message", "role": "assistant", "model": "local",
                                  "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                                  "stop_sequence": None, "usage": {"input_tokens": 8, "output_tokens": 2}})

    app = web.Application()
    app.router.add_post("/v1/messages", slow)
    url = await serve(app)
    rt = Runtime(parse_config({"state_dir": str(tmp_path), "shadow": {"sample": 1.0, "wait": 5}}))
    async with aiohttp.ClientSession() as session:
        backend = make_local_backend(LocalBackendConfig("llama", url, model="m", count_tokens="estimate",
                                                        connect_timeout=0.1, first_byte_timeout=0.3), session)
        rt.use_backends([backend])
        message = {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": {"output_tokens": 2}}
        from nonstop.server.shadow import Tap

        reply = Reply(200, [], single(orjson.dumps(message)), "cloud", False)
        tap = Tap(reply)
        _ = b"".join([c async for c in reply.body])
        assert rt.shadow.sample()
        rt.shadow.after({"model": "claude-sonnet-4-5", "max_tokens": 50,
                         "messages": [{"role": "user", "content": "hi"}]}, tap, "main", "req_x")
        for _i in range(100):
            if not rt.shadow.running and not rt.shadow.waiting:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
    assert not backend.state.demoted, f"a shadow replay demoted the live backend: {backend.state.demoted_why}"
    assert backend.state.failures == 0
