"""A failover is visible everywhere a user looks: the request log (`nonstop logs` and the
API), `nonstop status`, /metrics, and the status line. Real processes: the fake cloud,
nonstop, and the recording local stand-in."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anthropic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration


def config(cloud: procs.Proc, local: procs.Proc) -> str:
    return nonstop_config(cloud.url, local=[{"name": "rec", "url": local.url}])


def cli(ns: procs.Proc, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "nonstop", *args, "--config", str(ns.extra["config"])],
        capture_output=True, text=True, timeout=30, cwd=procs.ROOT, stdin=subprocess.DEVNULL,
    )
    assert procs.PLANTED_KEY not in r.stdout + r.stderr, "a credential appeared in the command's output"
    return r


def status_json(ns: procs.Proc) -> tuple[int, dict[str, Any]]:
    r = cli(ns, "status", "--json")
    return r.returncode, json.loads(r.stdout)


def metrics(ns: procs.Proc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    code, _, body = rawhttp.request("GET", ns.url + "/metrics")
    assert code == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(m: dict, name: str, **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


def api_rows(ns: procs.Proc, query: str = "") -> list[dict[str, Any]]:
    code, _, body = rawhttp.request("GET", ns.url + "/_nonstop/api/requests" + query)
    assert code == 200, body
    return json.loads(body)["requests"]


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """The log is written off the request path: give it a moment."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def ask(ns: procs.Proc, stream: bool = False):
    c = anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0, timeout=30)
    params: dict[str, Any] = dict(model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "Say hello."}])
    if stream:
        with c.messages.stream(**params) as s:
            return s.get_final_message(), s.response.headers
    raw = c.messages.with_raw_response.create(**params)
    return raw.parse(), raw.headers


def test_a_failover_shows_up_everywhere(cloud, recorder_proc, nonstop_factory):
    ns = nonstop_factory(config(cloud, recorder_proc))

    # --- before: the cloud serves, and its quota headers are visible -----------------------------
    _, headers = ask(ns)
    assert headers["x-nonstop-backend"] == "cloud"

    code, st = status_json(ns)
    assert code == 0
    assert st["running"] is True
    assert st["cloud"]["state"] == "serving" and st["cloud"]["until"] is None
    assert st["utilization"]["5h"] == pytest.approx(0.42)
    assert [b["name"] for b in st["local"]] == ["rec"]

    line = cli(ns, "statusline").stdout.strip()
    assert "cloud" in line and "5h 42%" in line, line
    assert "local" not in line

    m = metrics(ns)
    assert sample(m, "nonstop_cloud_state") == 0
    assert sample(m, "nonstop_quota_utilization", window="5h") == pytest.approx(0.42)
    assert sample(m, "nonstop_requests_total", backend="cloud", outcome="ok") == 1

    human = cli(ns, "status")
    assert human.returncode == 0
    assert "cloud    serving" in human.stdout and "5h 42%" in human.stdout

    # --- the failover ------------------------------------------------------------------------
    procs.set_mode(cloud, "subscription_limit", reset_in=1800)
    t_fail = time.time()
    msg, headers = ask(ns, stream=True)
    assert headers["x-nonstop-backend"] == "rec"
    assert "subscription_limit" in headers["x-nonstop-failover"]
    assert msg.content

    # The request log, through the command...
    def failover_rows() -> list[dict[str, Any]]:
        r = cli(ns, "logs", "--json")
        assert r.returncode == 0, r.stderr
        return [json.loads(x) for x in r.stdout.splitlines() if json.loads(x)["backend"] == "rec"]

    rows = eventually(failover_rows)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["outcome"] == "ok" and row["status"] == 200
    assert "subscription_limit" in row["reason"]
    assert row["stream"] in (1, True)
    assert row["ttfb_ms"] is not None and row["output_tokens"] > 0

    r = cli(ns, "logs", "--json", "--backend", "cloud")
    assert [json.loads(x)["backend"] for x in r.stdout.splitlines()] == ["cloud"]
    table = cli(ns, "logs").stdout
    assert "rec" in table and "subscription_limit" in table

    # ...and through the API, with its filters.
    api = api_rows(ns)
    assert [x["backend"] for x in api] == ["cloud", "rec"]
    assert api[1]["id"] == row["id"]
    assert [x["backend"] for x in api_rows(ns, "?backend=local")] == ["rec"]
    assert api_rows(ns, f"?after_id={row['id']}") == []

    # status: the cloud is out until a time in the future, with the reason.
    code, st = status_json(ns)
    assert code == 0
    assert st["cloud"]["state"] == "out"
    assert st["cloud"]["until"] > time.time() + 1500
    assert st["cloud"]["reason"] == "subscription_limit"
    assert st["utilization"]["5h"] == pytest.approx(1.02)
    assert st["today"]["local"]["requests"] == 1 and st["today"]["cloud"]["requests"] == 1
    human = cli(ns, "status").stdout
    assert "out until" in human and "UTC" in human and "subscription_limit" in human

    # /metrics
    m = metrics(ns)
    assert sample(m, "nonstop_requests_total", backend="rec", outcome="ok") == 1
    assert sample(m, "nonstop_requests_total", backend="cloud", outcome="ok") == 1
    assert sample(m, "nonstop_failovers_total", reason="subscription_limit") == 1
    assert sample(m, "nonstop_cloud_state") == 1
    assert sample(m, "nonstop_cloud_out_until_seconds") == pytest.approx(st["cloud"]["until"])
    assert sample(m, "nonstop_quota_utilization", window="5h") == pytest.approx(1.02)
    assert sample(m, "nonstop_switches_total", to="local") == 1
    assert (sample(m, "nonstop_time_to_first_byte_seconds_count", backend="rec") or 0) >= 1

    # The status line.
    line = cli(ns, "statusline").stdout.strip()
    assert line.startswith("⌂ local rec"), line
    assert "cloud back" in line

    # --- after nonstop stops: status and logs read what it left on disk ------------------------------
    ns.stop()
    code, st = status_json(ns)
    assert code == 1
    assert st["running"] is False
    assert st["cloud"]["state"] == "out" and st["cloud"]["until"] > t_fail
    assert st["today"]["local"]["requests"] == 1
    r = cli(ns, "logs", "--json", "--backend", "local")
    assert r.returncode == 0
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == [row["id"]]
    assert cli(ns, "statusline").stdout.strip() == "⌂ nonstop not running"


def test_logs_follow_prints_new_rows(cloud, recorder_proc, nonstop_factory):
    ns = nonstop_factory(config(cloud, recorder_proc))
    procs.set_mode(cloud, "overloaded")
    ask(ns)
    assert eventually(lambda: api_rows(ns))
    # Started the way a script's background job or a CI runner starts it: with SIGINT
    # ignored, which Python keeps unless the command takes SIGINT back itself.
    argv = [sys.executable, "-m", "nonstop", "logs", "--follow", "--json", "-n", "1", "--config", str(ns.extra["config"])]
    p = subprocess.Popen(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=procs.ROOT, stdin=subprocess.DEVNULL,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in p.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Generous bounds for start-up on a loaded machine: the first line is the row
        # already logged, so once it is out the command is following.
        first = json.loads(lines.get(timeout=60))
        ask(ns)
        new = json.loads(lines.get(timeout=60))
        assert new["request_id"] != first["request_id"]
        assert new["backend"] in ("cloud", "rec")
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("`nonstop logs --follow` did not end within 30s of Ctrl-C")
        took = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        reader.join(timeout=10)
        if p.stdout:
            p.stdout.close()
        if p.stderr:
            p.stderr.close()
    assert code == 0
    # At once: it is sleeping between polls or reading the API when the signal comes.
    assert took < 2.0, f"`nonstop logs --follow` took {took:.1f}s to end after Ctrl-C"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_gateway_on_another_port_is_found_without_the_option(cloud, recorder_proc, tmp_path, stop):
    """`nonstop serve --port N` is found by `nonstop status` with no option: the gateway notes
    where it listens in its state directory, and takes the note back when it stops. A note
    left by a gateway that was killed is not trusted."""
    state = tmp_path / "state"
    cfg = procs.write_config(tmp_path, f'listen = "127.0.0.1:{procs.free_port()}"\nstate_dir = "{state}"\n'
                             + config(cloud, recorder_proc))
    port = procs.free_port()
    ns = procs.start_python(["-m", "nonstop", "serve", "--config", str(cfg), "--port", str(port)], port, "/health",
                            "nonstop", env={"NONSTOP_STATE_DIR": str(state)})
    ns.extra["config"] = cfg
    with ns:
        note = state / "listening" / f"{ns.proc.pid}.json"
        assert json.loads(note.read_text()) == {"listen": f"127.0.0.1:{port}", "pid": ns.proc.pid}
        code, doc = status_json(ns)
        assert code == 0 and doc["running"] is True and doc["listen"] == f"127.0.0.1:{port}"
        r = cli(ns, "doctor")
        assert f"running at http://127.0.0.1:{port}" in r.stdout, r.stdout
        ns.stop(stop)
    assert note.exists() == (stop == signal.SIGKILL)
    code, doc = status_json(ns)
    assert code == 1 and doc["running"] is False and doc["listen"] != f"127.0.0.1:{port}"


def test_two_gateways_sharing_a_state_directory_are_each_found(cloud, recorder_proc, tmp_path):
    """Each gateway keeps a note of its own: the later one's stop leaves the earlier one
    found by `nonstop status` with no option."""
    state = tmp_path / "state"
    cfg = procs.write_config(tmp_path, f'listen = "127.0.0.1:{procs.free_port()}"\nstate_dir = "{state}"\n'
                             + config(cloud, recorder_proc))

    def start() -> tuple[procs.Proc, int]:
        port = procs.free_port()
        ns = procs.start_python(["-m", "nonstop", "serve", "--config", str(cfg), "--port", str(port)], port,
                                "/health", "nonstop", env={"NONSTOP_STATE_DIR": str(state)})
        ns.extra["config"] = cfg
        return ns, port

    first, first_port = start()
    with first:
        second, second_port = start()
        with second:
            code, doc = status_json(first)
            assert code == 0 and doc["listen"] == f"127.0.0.1:{second_port}", "the newest comes first"
            second.stop(signal.SIGTERM)
        code, doc = status_json(first)
        assert code == 0 and doc["running"] is True and doc["listen"] == f"127.0.0.1:{first_port}"
