"""A tool loop fails over to a real llama-server whose chat template has the two rules of
Mistral-family templates that Claude Code's conversations break: tool call ids must be
nine letters and digits (Claude Code's are 30 characters), and no user message may follow
tool results (Claude Code puts text beside results on most turns). Sent as they are, both
are refused there; through nonstop the request is answered over either API the server
speaks, the second rule learned from the first refusal.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.llama import require_llama, start_llama_server
from tests.support import procs, rawhttp
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "templates" / "mistral-rules.jinja"
CALL_ID = "toolu_01A09q90qw90lq917835lq9"
TOOL = {"name": "Read", "description": "Read a file", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]}}
HISTORY = [
    {"role": "user", "content": "What does setup.py say?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Reading it."},
        {"type": "tool_use", "id": CALL_ID, "name": "Read", "input": {"file_path": "setup.py"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": CALL_ID, "content": "from setuptools import setup\nsetup(name='x')"},
        {"type": "text", "text": "Now answer in one word."}]},
]


@pytest.fixture(scope="module")
def strict_server():
    require_llama()
    server = start_llama_server(ctx=4096, parallel=1, extra_args=["--chat-template-file", str(TEMPLATE)])
    yield server
    server.stop()


def test_the_template_refuses_claude_codes_ids_sent_as_they_are(strict_server) -> None:
    """The fixture is what it claims: the same loop, ids as Claude Code sends them, is an error."""
    body = {"model": "m", "max_tokens": 4, "messages": [
        {"role": "user", "content": "What does setup.py say?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "Read", "arguments": '{"file_path": "setup.py"}'}}]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": "setup(name='x')"},
    ]}
    status, _, raw = rawhttp.request("POST", strict_server.url + "/v1/chat/completions", body, timeout=120)
    assert status >= 400, raw[:300]
    assert b"length of 9" in raw


def test_the_template_refuses_a_user_message_after_tool_results(strict_server) -> None:
    body = {"model": "m", "max_tokens": 4, "messages": [
        {"role": "user", "content": "What does setup.py say?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "abcde1234", "type": "function", "function": {"name": "Read", "arguments": '{"file_path": "setup.py"}'}}]},
        {"role": "tool", "tool_call_id": "abcde1234", "content": "setup(name='x')"},
        {"role": "user", "content": "Now answer in one word."},
    ]}
    status, _, raw = rawhttp.request("POST", strict_server.url + "/v1/chat/completions", body, timeout=120)
    assert status >= 400, raw[:300]
    assert b"roles must alternate" in raw


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_fails_over_to_it(strict_server, cloud, nonstop_factory, api: str, stream: bool) -> None:
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(nonstop_config(cloud.url, local=[
        {"name": "strict", "url": strict_server.url, "api": api, "context_window": 4096, "max_output_tokens": 16},
    ]))
    # Greedy decoding: with the tools' grammar on, llama-server now and then fails a sampled
    # piece mid-stream ("Unexpected empty grammar stack after accepting piece"), which
    # nonstop rightly relays as a stream that ended early; this test is about the folds.
    body = {"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": stream, "tools": [TOOL], "messages": HISTORY,
            "temperature": 0}
    for _ in range(2):  # the first is refused once and sent again; the second goes folded at once
        status, headers, raw = rawhttp.request("POST", ns.url + "/v1/messages", body,
                                               {"x-api-key": procs.PLANTED_KEY}, timeout=300)
        assert status == 200, raw[:2000]
        assert headers.get("x-nonstop-backend") == "strict"
        if stream:
            assert b"event: message_stop" in raw and b"event: error" not in raw, raw[-500:]
        else:
            message = json.loads(raw)
            assert message["type"] == "message" and message["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert ns.output().count("refuses a user message right after tool results") == 1
    local = json.loads(rawhttp.request("GET", ns.url + "/_nonstop/api/status")[2])["local"]
    assert not local[0].get("demoted") and local[0]["folds_turns"] is True, local
