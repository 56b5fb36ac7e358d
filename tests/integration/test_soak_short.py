"""A short run of the fault-injection soak (tests/soak/soak.py): 600 requests at
concurrency 16 through a randomly failing cloud and a local backend that is killed and
restarted, while other clients send their heads and bodies slowly. One run, several
assertions on its report, so each broken promise shows up by name."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support.procs import ROOT

pytestmark = pytest.mark.integration

REQUESTS = 600
CONCURRENCY = 16


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("soak") / "soak-report.md"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "soak" / "soak.py"), "--requests", str(REQUESTS),
         "--concurrency", str(CONCURRENCY), "--settle", "3", "--max-settle", "32", "--kill-every", "2",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    elapsed = time.monotonic() - t0
    assert out.with_suffix(".json").exists(), f"no report written:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.with_suffix(".json").read_text())
    data["_exit"] = proc.returncode
    data["_elapsed"] = elapsed
    data["_markdown"] = out.read_text()
    return data


def test_finishes_quickly(report):
    assert report["_elapsed"] < 120, f"the short soak took {report['_elapsed']:.0f}s"
    assert report["requests"] == REQUESTS


def test_faults_were_injected_and_local_was_restarted(report):
    faults = {k: v for k, v in report["faults"].items() if k != "ok"}
    assert len(faults) >= 10, report["faults"]
    assert report["local_restarts"] >= 1


def test_nothing_lost_and_nothing_hung(report):
    assert report["lost"] == 0, report["examples"]
    assert report["latency_s"]["max"] < report["options"]["deadline"]


def test_one_log_row_per_request(report):
    assert report["log_rows"] == report["log_rows_expected"]
    assert report["integrity"] == "ok"


def test_no_traceback_and_no_leaked_credential(report):
    assert report["checks"]["no traceback in nonstop's log"], report["examples"]
    assert report["checks"]["no credential leaked"], report["examples"]


def test_no_5xx_of_nonstops_own_making(report):
    assert report["checks"]["no 5xx of nonstop's own making"], report["server_errors"]
    assert all(k.startswith("503 ") for k in report["server_errors"]), report["server_errors"]


def test_the_new_faults_are_in_the_mix(report):
    from tests.soak.soak import NEW_FAULTS

    # The fake cloud deals its faults from a shuffled deck that holds every new one: a run
    # whose cloud saw a whole deck met each of them. (How many requests reach the cloud
    # depends on the machine's speed: a starved run may see less than a deck.)
    assert set(NEW_FAULTS) <= set(report["deck"]), report["deck"]
    if report["cloud_requests"] >= len(report["deck"]):
        assert report["checks"]["every new fault was injected"], report["faults"]


def test_slow_clients_are_closed_within_their_deadlines(report):
    slow = report["slow_clients"]
    assert not slow["violations"], slow["violations"]
    assert set(slow["counts"]) == {"slow_head", "partial_head", "silent", "slow_body", "partial_body"}, slow["counts"]


def test_resources_do_not_grow(report):
    assert report["checks"]["file descriptors do not grow"], report["fd"]
    assert report["checks"]["memory does not grow"], report["rss_mb"]


def test_every_response_is_complete_and_valid(report):
    assert report["violations"] == {}, "\n".join(json.dumps(e) for e in report["examples"])


def test_report_is_written_and_exit_code_matches(report):
    assert "# nonstop soak report" in report["_markdown"]
    assert report["_exit"] == (0 if report["ok"] else 1)


# --- the checker the soak relies on -----------------------------------------------------------


def _ev(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


START = _ev("message_start", {"type": "message_start", "message": {"content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}})
BLOCK = _ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
DELTA = _ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
STOP = _ev("content_block_stop", {"type": "content_block_stop", "index": 0})
MDELTA = _ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}})
MSTOP = _ev("message_stop", {"type": "message_stop"})
ERROR = _ev("error", {"type": "error", "error": {"type": "api_error", "message": "broken"}})
PING = _ev("ping", {"type": "ping"})


@pytest.mark.parametrize("body,outcome", [
    (START + PING + BLOCK + DELTA + STOP + MDELTA + MSTOP, "ok"),
    (START + BLOCK + DELTA + ERROR, "error"),
    (START + BLOCK + DELTA + STOP + MDELTA, "violation"),  # no message_stop
    (START + DELTA, "violation"),  # delta for a block never started
    (START + BLOCK + DELTA + STOP + DELTA, "violation"),  # delta after the block's stop
    (START + BLOCK + DELTA + STOP + MDELTA + MSTOP + PING, "violation"),  # after message_stop
    (START + BLOCK + DELTA + b'event: content_block_delta\ndata: {"type": "content_blo\n\n' + ERROR, "violation"),
    (START + BLOCK + DELTA + ERROR + MSTOP, "violation"),
    (START.replace(b'"input_tokens": 5', b'"input_tokens": 0') + BLOCK + STOP + MDELTA + MSTOP, "violation"),
    (START + BLOCK.replace(b'"text": ""', b'"text": "x"') + STOP + MDELTA + MSTOP, "violation"),
    (START + BLOCK + DELTA + STOP + MDELTA + MSTOP[:-1], "violation"),  # last event unterminated
    (b"", "violation"),
])
def test_wirecheck_anthropic_stream(body, outcome):
    from tests.support import wirecheck

    assert wirecheck.check_anthropic(200, "text/event-stream", body, stream=True).outcome == outcome


@pytest.mark.parametrize("body,outcome", [
    (b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n', "ok"),
    (b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\ndata: [DONE]\n\n', "violation"),
    (b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}\n\n', "violation"),
    (b'data: {"error":{"message":"x","type":"api_error"}}\n\ndata: [DONE]\n\n', "error"),
    (b'data: {"error":{"message":"x","type":"api_error"}}\n\n'
     b'data: {"object":"chat.completion.chunk","choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n', "violation"),
])
def test_wirecheck_openai_stream(body, outcome):
    from tests.support import wirecheck

    assert wirecheck.check_openai(200, "text/event-stream", body, stream=True).outcome == outcome


def test_wirecheck_error_bodies():
    from tests.support import wirecheck

    err = b'{"type":"error","error":{"type":"api_error","message":"x"}}'
    assert wirecheck.check_anthropic(503, "application/json", err, stream=True).outcome == "error"
    assert wirecheck.check_anthropic(200, "application/json", err, stream=False).outcome == "violation"
    assert wirecheck.check_anthropic(500, "text/plain", b"Internal Server Error", stream=False).outcome == "violation"
    assert wirecheck.check_openai(400, "application/json", b'{"error":{"message":"m","type":"t"}}', stream=False).outcome == "error"
    assert wirecheck.check_openai(400, "application/json", err, stream=False).outcome == "violation"
