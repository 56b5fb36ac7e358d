"""`nonstop status` and `nonstop logs`: rendering, filters, and reading the log on disk
when the gateway is not running."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.cli import status as st
from nonstop.config import parse_config
from nonstop.store.db import RequestRow, Store

NOW = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


def live(state: str = "serving", **cloud) -> dict:
    return {
        "running": True, "version": "0.1.0", "now": NOW, "pid": 42, "listen": "127.0.0.1:8787", "uptime": 3725,
        "cloud": {"state": state, "until": None, "reason": "", "detail": "", **cloud},
        "utilization": {"5h": 0.62, "7d": 0.17, "5h_reset": NOW + 3600, "7d_reset": NOW + 4 * 86400, "updated": NOW - 30},
        "local": [
            {"name": "llama", "url": "http://127.0.0.1:8080", "model": "qwen", "healthy": True},
            {"name": "spare", "url": "http://127.0.0.1:11434", "model": "", "healthy": False, "error": "connection refused"},
        ],
        "today": {"cloud": {"requests": 12, "input_tokens": 34_567, "output_tokens": 1_234},
                  "local": {"requests": 1, "input_tokens": 900, "output_tokens": 80}},
    }


# --- the status screen -----------------------------------------------------------------------------


def test_serving():
    out = st.render_status(live())
    lines = out.splitlines()
    assert lines[0] == "nonstop 0.1.0 running on 127.0.0.1:8787 (pid 42, up 1h 02m)"
    assert "cloud    serving" in out
    assert "5h 62% (resets 16:06 UTC) · 7d 17% (resets 2025-06-19 15:06 UTC) · seen 30s ago" in out
    assert "llama  up · http://127.0.0.1:8080 · qwen" in out
    assert "spare  down: connection refused · http://127.0.0.1:11434" in out
    assert "cloud  12 requests · 35k in / 1.2k out tokens" in out
    assert "local  1 request · 900 in / 80 out tokens" in out


def test_forecast_learned_deadlines_and_live_backend_details():
    doc = live()
    doc["forecast"] = {"conserving": True, "windows": [
        {"window": "5h", "utilization": 0.71, "runs_out": NOW + 1800, "resets": NOW + 3600, "method": "slope"},
        {"window": "7d", "utilization": 0.2, "runs_out": None, "resets": NOW + 86400, "method": "slope"}]}
    doc["cloud"]["first_byte_deadlines"] = {"<=64 KB": 10.0}
    doc["local"][0].update(window=8192, context_window=32768, inflight=2, prompt_tps=412.0, gen_tps=38.2, warmth="warm")
    doc["local"][1].update(window=4096, context_window=4096, demoted=True, demoted_why="connection refused")
    out = st.render_status(doc)
    assert ("forecast 5h 71% · out ~15:36 UTC, resets 16:06 UTC; 7d 20% · not forecast to run out, resets "
            "2025-06-16 15:06 UTC — conserving: background work and subagents go local first") in out
    assert "deadline <=64 KB waits 10s for the cloud's first byte (learned)" in out
    assert "8k window (configured 32k) · 2 in flight · 412 prompt tok/s · 38 output tok/s · warm" in out
    assert "4k window · demoted: connection refused" in out


def test_a_backend_whose_template_refuses_a_user_turn_after_tool_results_says_so():
    doc = live()
    doc["local"][0].update(window=8192, context_window=8192, folds_turns=True)
    out = st.render_status(doc)
    assert "8k window · its template refuses a user turn after tool results: text beside them sent inside the last" in out
    assert "refuses a user turn" not in st.backend_details(doc["local"][1])


def test_out_until_a_time_with_the_reason():
    out = st.render_status(live("out", until=NOW + 42 * 60, reason="subscription_limit", detail="usage limit (five_hour)"))
    assert "cloud    out until 15:48 UTC (in 42m) — subscription_limit: usage limit (five_hour)" in out


def test_out_with_the_deadline_passed():
    line = st.cloud_line({"state": "out", "until": NOW - 10, "reason": "overloaded"}, NOW)
    assert line == "out until 15:06 UTC (passed: the next request checks the cloud) — overloaded"


def test_probing():
    line = st.cloud_line({"state": "probing", "until": NOW, "reason": "subscription_limit"}, NOW)
    assert line.startswith("probing") and "subscription_limit" in line


def test_not_running_says_so_and_how_to_start():
    s = live("out", until=NOW + 60, reason="throttle")
    s.update(running=False, log="/tmp/x/nonstop.db")
    for b in s["local"]:
        b["healthy"] = None
    out = st.render_status(s)
    assert out.splitlines()[0] == ("nonstop is not running on 127.0.0.1:8787: start it with `nonstop serve` "
                                   "(one listening elsewhere: --host / --port)")
    assert "last known state, from /tmp/x/nonstop.db" in out
    assert "llama  unknown" in out


def test_no_utilization_yet():
    s = live()
    s["utilization"] = {"5h": None, "7d": None}
    assert "quota    not seen yet" in st.render_status(s)


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (125, "2m"), (3725, "1h 02m"), (90000, "1d 1h")])
def test_span(seconds, text):
    assert st.span(seconds) == text


# --- the log table --------------------------------------------------------------------------------


ROW = {
    "id": 7, "ts": NOW, "model": "claude-sonnet-4-5-20250929", "backend": "llama", "outcome": "ok", "status": 200,
    "reason": "subscription_limit: usage limit (five_hour)", "ttfb_ms": 812.4, "total_ms": 15_300.0,
    "input_tokens": 12_345, "output_tokens": 321, "error": "",
}


def test_render_row():
    line = st.render_row(ROW)
    assert line.startswith(time.strftime("%H:%M:%S", time.localtime(NOW)))
    assert "claude-sonnet-4-5-20250929 llama" in line
    for part in ("llama", "ok 200", "812ms", "15.3s", "12k/321", "subscription_limit: usage limit (five_hour)"):
        assert part in line
    assert len(st.LOG_HEADER.split()) >= 8


def test_render_row_error():
    line = st.render_row({**ROW, "backend": "", "outcome": "error", "status": 503, "reason": "overloaded",
                          "error": "nonstop could not get\nan answer", "ttfb_ms": None})
    assert " - " in line and "error 503" in line
    assert "overloaded; nonstop could not get an answer" in line


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"backend": "local"}, True), ({"backend": "cloud"}, False), ({"backend": "llama"}, True),
        ({"outcome": "ok"}, True), ({"outcome": "error"}, False),
        ({"model": "claude-*"}, True), ({"model": "CLAUDE-SONNET*"}, True), ({"model": "gpt*"}, False),
    ],
)
def test_filters(filters, keep):
    assert st.Filters(**filters).matches(ROW) is keep


def test_follow_yields_new_rows_until_interrupted():
    class Source:
        def __init__(self):
            self.calls = []
            self.batches = [[{"id": 3}], [], [{"id": 4}, {"id": 5}]]

        def rows(self, after_id, limit, f):
            self.calls.append(after_id)
            if not self.batches:
                raise KeyboardInterrupt
            return self.batches.pop(0)

    src = Source()
    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in st.follow_rows(src, [{"id": 1}, {"id": 2}], st.Filters(), sleep=lambda _: None):
            got.append(r["id"])
    assert got == [1, 2, 3, 4, 5]
    assert src.calls == [2, 3, 3, 5]


# --- with nonstop not running: the log on disk -------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline(tmp_path: Path):
    """A config whose gateway is not running, and a log it left behind."""
    cfg = parse_config({
        "listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "state"),
        "local": [{"name": "llama", "url": "http://127.0.0.1:8080"}],
    })
    store = Store(cfg.state_dir)
    store.open()
    now = time.time()
    store.log_request(RequestRow(ts=now - 5, model="claude-sonnet-4-5", backend="cloud", outcome="ok", status=200,
                                 ttfb_ms=300.0, total_ms=900.0, input_tokens=100, output_tokens=10))
    store.log_request(RequestRow(ts=now - 2, model="claude-sonnet-4-5", backend="llama", outcome="ok", status=200,
                                 reason="subscription_limit: usage limit (five_hour)", ttfb_ms=50.0, total_ms=400.0,
                                 input_tokens=90, output_tokens=20))
    store.log_request(RequestRow(ts=now - 1, model="claude-haiku-4-5", backend="", outcome="error", status=503,
                                 error="no backend"))
    store.save_state("quota", {"state": "out", "until": now + 600, "reason": "subscription_limit",
                               "detail": "usage limit (five_hour)", "since": now - 2,
                               "utilization": {"5h": 1.02, "7d": 0.64}})
    store.flush()
    store.close()
    return cfg


def test_status_falls_back_to_the_log(offline, capsys):
    assert st.cmd_status(offline, as_json=False) == 1
    out = capsys.readouterr().out
    assert "is not running" in out
    assert "cloud    out until" in out and "subscription_limit" in out
    assert "5h 102%" in out and "7d 64%" in out
    assert "llama  unknown" in out
    assert "cloud  1 request · 100 in / 10 out tokens" in out
    assert "local  1 request · 90 in / 20 out tokens" in out


def test_status_json_when_not_running(offline, capsys):
    assert st.cmd_status(offline, as_json=True) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["running"] is False
    assert doc["cloud"]["state"] == "out" and doc["cloud"]["until"] > time.time()
    assert doc["utilization"]["5h"] == 1.02
    assert [b["name"] for b in doc["local"]] == ["llama"]


@pytest.mark.parametrize("model_path", ["~nosuchuser-here/m.gguf", "/" + "a" * 300 + "/m.gguf"])
def test_offline_status_with_a_model_path_that_cannot_be_looked_at(tmp_path, capsys, model_path):
    """`config check` takes any path; the offline status must not fail on one the system
    cannot look at (an unknown user's ~, a name too long): the model is not found there."""
    cfg = parse_config({"listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "none"),
                        "embedded": {"mode": "auto", "model_path": model_path}})
    assert st.cmd_status(cfg, as_json=True) == 1
    assert json.loads(capsys.readouterr().out)["embedded_installed"] is False


def test_status_without_any_log(tmp_path, capsys):
    cfg = parse_config({"listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "none")})
    assert st.cmd_status(cfg) == 1
    out = capsys.readouterr().out
    assert "no request log found yet" in out and "unknown" in out
    assert not (tmp_path / "none").exists(), "reading the status must not create the state directory"


@pytest.mark.parametrize(("discovery", "mode", "installed", "line"), [
    (True, "auto", True, "`nonstop serve` finds the local servers running, or starts its own small model"),
    (True, "always", True, "`nonstop serve` finds the local servers running, or starts its own small model"),
    (True, "never", True, "`nonstop serve` finds the local servers running"),
    (True, "auto", False, "`nonstop serve` finds the local servers running"),
    (False, "auto", True, "`nonstop serve` starts its own small model"),
    (False, "auto", False, None),
    (False, "never", True, None),
])
def test_status_not_running_with_no_local_backend_says_what_serve_would_use(
    tmp_path, capsys, monkeypatch, discovery, mode, installed, line,
):
    """With no [[local]], a gateway started now finds the servers running (discovery on) or
    starts its embedded model (not off, and installed): that is no set-up problem. With
    neither, it is one, and doctor says what to do."""
    from nonstop.backends import llama_stack

    monkeypatch.setattr(llama_stack, "find_llama_server", lambda explicit="": tmp_path / "llama-server")
    monkeypatch.setattr(llama_stack, "find_bundled_model", lambda explicit="": tmp_path / "m.gguf" if installed else None)
    cfg = parse_config({"listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "none"),
                        "embedded": {"mode": mode}, "discovery": {"enabled": discovery}})
    assert st.cmd_status(cfg) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (f"local    none configured: {line}" if line else "local    none configured — run `nonstop doctor`") in lines


def test_status_not_running_names_the_address_it_looked_at(tmp_path, capsys):
    """Asked with --port N, the advice starts the gateway on N; asked without, it says how to
    look elsewhere."""
    cfg = parse_config({"listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "none")})
    assert st.cmd_status(cfg, serve="nonstop serve --port 9914") == 1
    out = capsys.readouterr().out
    assert f"nonstop is not running on {cfg.listen}: start it with `nonstop serve --port 9914`\n" in out
    assert "`nonstop serve --port 9914` finds the local servers running" in out
    assert "--host / --port" not in out


def test_status_and_logs_reach_a_gateway_on_the_address_given(tmp_path, monkeypatch, capsys):
    """`nonstop serve --port N` is found by `nonstop status --port N` (and logs, doctor, explain,
    claude), whatever the config's `listen` says."""
    from nonstop import cli

    seen: list[str] = []
    monkeypatch.setattr(st, "get_status", lambda cfg: seen.append(cfg.listen) or st.offline_status(cfg))
    monkeypatch.setattr(st, "cmd_logs", lambda cfg, **kw: seen.append(cfg.listen) or 0)
    config = tmp_path / "config.toml"
    config.write_text(f'listen = "127.0.0.1:9913"\nstate_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["status", "--config", str(config), "--port", "9914"]) == 1
    assert cli.main(["logs", "--config", str(config), "--host", "127.0.0.2", "--port", "9915"]) == 0
    assert cli.main(["status", "--config", str(config)]) == 1
    assert seen == ["127.0.0.1:9914", "127.0.0.2:9915", "127.0.0.1:9913"]
    assert "not running on 127.0.0.1:9913" in capsys.readouterr().out


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port where something accepts connections but never answers (a gateway whose
    event loop is stalled, or whose status read is waiting on the log)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


def test_status_does_not_call_a_gateway_that_is_slow_to_answer_not_running(tmp_path, silent_listener, capsys):
    """A gateway that takes the connection but does not answer in time is reported as
    not answering (busy?), not as "not running: start it with `nonstop serve`", advice
    that would only fail to bind the port it holds."""
    cfg = parse_config({"state_dir": str(tmp_path), "listen": f"127.0.0.1:{silent_listener}"})
    code = st.cmd_status(cfg)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "start it with `nonstop serve`" not in text, text
    assert code != 1 or "not running" not in text


def test_logs_from_the_log_file(offline, capsys):
    assert st.cmd_logs(offline, as_json=False, follow=False, limit=20) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0] == st.LOG_HEADER
    assert len(lines) == 4
    assert "llama" in lines[2] and "subscription_limit" in lines[2]
    assert "reading" in cap.err


def test_logs_json_with_filters(offline, capsys):
    assert st.cmd_logs(offline, as_json=True, follow=False, limit=20, backend="local") == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["backend"] for r in rows] == ["llama"]
    assert st.cmd_logs(offline, as_json=True, limit=20, outcome="error", model="claude-haiku*") == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["status"]) for r in rows] == [("claude-haiku-4-5", 503)]
    assert st.cmd_logs(offline, as_json=True, limit=1) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["outcome"] for r in rows] == ["error"], "the newest rows, oldest first"


def test_logs_without_gateway_or_log(tmp_path, capsys):
    cfg = parse_config({"listen": f"127.0.0.1:{_closed_port()}", "state_dir": str(tmp_path / "none")})
    assert st.cmd_logs(cfg) == 2
    assert "nonstop serve" in capsys.readouterr().err


# --- the fleet -----------------------------------------------------------------------------------


def _instance(name: str, labels: str) -> dict:
    return {"instance": name, "version": "1", "listen": "0.0.0.0:8082", "inflight": 0, "backends": {},
            "beat": 1000.0, "labels": labels}


def test_the_fleet_listing_warns_when_instances_label_accounts_differently() -> None:
    """Instances whose account labels differ (no shared account_salt, the Redis URL spelled
    two ways) share no account's state: `status --fleet` says so, naming them."""
    doc = {"redis": "ok", "instances": [_instance("a", "1111aaaa"), _instance("b", "2222bbbb"),
                                        _instance("c", "1111aaaa")], "accounts": {}}
    out = st.render_fleet(doc, 1001.0)
    [warning] = [line for line in out.splitlines() if line.startswith("warning")]
    assert "a, c: labels 1111aaaa" in warning and "b: labels 2222bbbb" in warning and "account_salt" in warning
    same = st.render_fleet({**doc, "instances": [_instance("a", "1111aaaa"), _instance("b", "1111aaaa")]}, 1001.0)
    assert "warning" not in same and same.startswith("fleet    2 instances sharing state through Redis")


def test_a_fleet_listing_cut_short_by_redis_is_shown_and_said_to_be_partial() -> None:
    doc = {"redis": "partial (ConnectionError)", "instances": [_instance("a", "1111aaaa")], "accounts": {}}
    out = st.render_fleet(doc, 1001.0)
    assert "1 instance sharing state through Redis; the listing is partial (ConnectionError)" in out
    assert "\n         a  v1" in out
    assert st.render_fleet({"redis": "unreachable"}, 1.0) == (
        "fleet    Redis unreachable: this instance runs on its own state")
