"""OpenAI-compatible local backends and the OpenAI front door, with real processes:
recorded edge-case streams replayed by a fake OpenAI server, a real llama-server through
its /v1/chat/completions, and the official anthropic and openai SDKs as clients."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest

from tests.support import procs, rawhttp, wirecheck
from tests.support.anthropic_stream import validate_anthropic_stream
from tests.support.config import nonstop_config

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openai_streams"
TOOLS = [
    {"name": "get_weather", "description": "Get the weather for a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]


@pytest.fixture(scope="module")
def fake_openai():
    with procs.start_fake_openai() as p:
        yield p


def cfg(cloud_url: str, local_url: str, *, api: str, model: str = "", window: int = 8192) -> str:
    oai = {"name": "oai", "url": local_url, "api": api, **({"model": model} if model else {}),
           "context_window": window, "max_output_tokens": 64}
    return nonstop_config(cloud_url, cloud={"first_byte_timeout": 5.0}, local=[oai])


def expected_content(events: list) -> list[dict]:
    """The final content blocks a client assembles from an Anthropic event list."""
    blocks: dict[int, dict] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif name == "content_block_delta":
            i, d = data["index"], data["delta"]
            if d["type"] == "text_delta":
                blocks[i]["text"] = blocks[i].get("text", "") + d["text"]
            elif d["type"] == "input_json_delta":
                partial[i] = partial.get(i, "") + d["partial_json"]
            elif d["type"] == "thinking_delta":
                blocks[i]["thinking"] = blocks[i].get("thinking", "") + d["thinking"]
    for i, js in partial.items():
        blocks[i]["input"] = json.loads(js) if js else {}
    return [blocks[i] for i in sorted(blocks)]


def summary(blocks: list[dict]) -> list[tuple]:
    out = []
    for b in blocks:
        if b["type"] == "text":
            out.append(("text", b["text"]))
        elif b["type"] == "tool_use":
            out.append(("tool_use", b["name"], json.dumps(b.get("input") or {}, sort_keys=True)))
        elif b["type"] == "thinking":
            out.append(("thinking", b["thinking"]))
    return out


FIXTURE_NAMES = sorted(p.name.removesuffix(".jsonl") for p in FIXTURES.glob("*.jsonl"))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_recorded_edge_case_streams_through_nonstop(cloud, fake_openai, nonstop_factory, name):
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(cfg(cloud.url, fake_openai.url, api="openai"))
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    body = {"model": f"fixture:{name}", "max_tokens": 200, "stream": True, "tools": TOOLS,
            "messages": [{"role": "user", "content": "go"}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "oai"
    events = wirecheck.anthropic_events(r.body)
    validate_anthropic_stream(events)
    assert summary(expected_content(events)) == summary(expected_content(expected))
    # The official SDK assembles the same message.
    c = anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0)
    with c.messages.stream(model=f"fixture:{name}", max_tokens=200, tools=TOOLS, messages=[{"role": "user", "content": "go"}]) as s:
        msg = s.get_final_message()
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    got = [b.model_dump() for b in msg.content]
    assert summary(got) == summary(expected_content(expected))


def test_real_llama_chat_completions_with_tools(cloud, llama, nonstop_factory):
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(cfg(cloud.url, llama.url, api="openai", model="smollm2"))
    c = anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0, timeout=120)
    with c.messages.stream(model="claude-sonnet-5", max_tokens=64, tools=TOOLS,
                           messages=[{"role": "user", "content": "What is the weather in Paris?"}]) as s:
        events = [(e.type, e.model_dump()) for e in s]
        msg = s.get_final_message()
        headers = s.response.headers
    assert headers["x-nonstop-backend"] == "oai"
    assert msg.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert msg.usage.input_tokens > 0 and msg.content
    raw = c.messages.with_raw_response.create(model="claude-sonnet-5", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    m2 = raw.parse()
    assert raw.headers["x-nonstop-backend"] == "oai" and m2.usage.input_tokens > 0
    assert events[0][0] == "message_start"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_front_door_cloud(cloud, recorder_proc, nonstop_factory, stream):
    ns = nonstop_factory(cfg(cloud.url, recorder_proc.url, api="anthropic"))
    c = openai.OpenAI(base_url=ns.url + "/v1", api_key=procs.PLANTED_KEY, max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]}}]
    if stream:
        chunks = list(c.chat.completions.create(model="claude-sonnet-5", stream=True, tools=tools, stream_options={"include_usage": True},
                                                messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == "Hello from the cloud."
        assert any(ch.choices and ch.choices[0].finish_reason == "stop" for ch in chunks)
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
    else:
        r = c.chat.completions.create(model="claude-sonnet-5", tools=tools, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        assert r.choices[0].message.content == "Hello from the cloud."
        assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens > 0
    sent = procs.cloud_requests(cloud)[-1]
    assert sent["path"] == "/v1/messages"
    body = json.loads(sent["body"])
    assert body["system"] and body["tools"][0]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_front_door_local_llama(cloud, llama, nonstop_factory, stream):
    procs.set_mode(cloud, "overloaded")
    ns = nonstop_factory(cfg(cloud.url, llama.url, api="anthropic", model="smollm2"))
    c = openai.OpenAI(base_url=ns.url + "/v1", api_key=procs.PLANTED_KEY, max_retries=0, timeout=120)
    msgs = [{"role": "user", "content": "Say hello."}]
    if stream:
        chunks = list(c.chat.completions.create(model="claude-sonnet-5", stream=True, messages=msgs, max_tokens=32))
        assert chunks and any(ch.choices and ch.choices[0].finish_reason for ch in chunks)
        assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    else:
        raw = c.chat.completions.with_raw_response.create(model="claude-sonnet-5", messages=msgs, max_tokens=32)
        r = raw.parse()
        assert raw.headers["x-nonstop-backend"] == "oai"
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > 0


def test_openai_front_door_errors_are_openai_shaped(cloud, recorder_proc, nonstop_factory):
    ns = nonstop_factory(cfg(cloud.url, recorder_proc.url, api="anthropic"))
    c = openai.OpenAI(base_url=ns.url + "/v1", api_key=procs.PLANTED_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="claude-sonnet-5", messages="not a list")  # type: ignore[arg-type]
    assert info.value.body and "message" in info.value.body
    procs.set_mode(cloud, "auth")
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="claude-sonnet-5", messages=[{"role": "user", "content": "hi"}])
    status, _, body = rawhttp.request("POST", ns.url + "/v1/chat/completions", b"{not json")
    assert status == 400 and "error" in json.loads(body)


def test_a_local_chunk_that_is_not_json_ends_the_stream_with_an_error(cloud, fake_openai, nonstop_factory):
    # A piece of the answer nonstop cannot read is not skipped without a word (the client
    # would take the rest for the whole answer, or run a tool call whose arguments were in
    # it): what came before goes out, then a well-formed error.
    _, r, events, text = _through_the_fake(cloud, fake_openai, nonstop_factory, "fixture:broken/junk_mid_stream")
    assert events[-1][0] == "error", events[-3:]
    assert "cannot read" in events[-1][1]["error"]["message"]
    assert text == "one"


def _through_the_fake(cloud, fake_openai, nonstop_factory, model: str):
    """One streamed Messages request for `model`, with the cloud out: the fake OpenAI
    server answers it. nonstop, the raw exchange, its events and their text."""
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(cfg(cloud.url, fake_openai.url, api="openai"))
    body = {"model": model, "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    r = rawhttp.exchange("POST", ns.url + "/v1/messages", json=body, headers={"x-api-key": procs.PLANTED_KEY})
    assert r.status == 200 and r.headers["x-nonstop-backend"] == "oai"
    events = wirecheck.anthropic_events(r.body)
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "text_delta"]
    return ns, r, events, "".join(texts)


def test_a_local_server_that_ignores_stream_is_streamed_from_its_whole_answer(cloud, fake_openai, nonstop_factory):
    # The server answers a stream request with the whole completion (it ignores
    # `stream`): a valid answer, which the client gets as the stream it asked for.
    ns, r, _, text = _through_the_fake(cloud, fake_openai, nonstop_factory, "whole:fixture:plain_text")
    v = wirecheck.check_anthropic(r.status, r.headers["content-type"], r.body, stream=True)
    assert v.outcome == "ok", (v.problem, r.body[-400:])
    assert text.strip()
    # The official SDK reads it as one message too.
    c = anthropic.Anthropic(base_url=ns.url, api_key=procs.PLANTED_KEY, max_retries=0, timeout=60)
    with c.messages.stream(model="whole:fixture:plain_text", max_tokens=200, messages=[{"role": "user", "content": "go"}]) as s:
        msg = s.get_final_message()
    assert msg.stop_reason == "end_turn" and msg.content[0].text.strip()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_front_door_legacy_functions_round_trip(cloud, fake_openai, nonstop_factory, stream):
    """An older client's `functions`: the call comes back as `function_call` (not
    `tool_calls`), and its `role: function` result reaches the model as that call's result."""
    procs.set_mode(cloud, "subscription_limit")
    ns = nonstop_factory(cfg(cloud.url, fake_openai.url, api="openai"))
    c = openai.OpenAI(base_url=ns.url + "/v1", api_key=procs.PLANTED_KEY, max_retries=0)
    functions = [{"name": "get_weather", "description": "Get the weather for a city",
                  "parameters": TOOLS[0]["input_schema"]}]
    ask = {"role": "user", "content": "weather in Paris?"}
    kw = {"model": "fixture:single_tool_call", "functions": functions, "function_call": "auto", "messages": [ask]}
    if stream:
        chunks = list(c.chat.completions.create(stream=True, **kw))
        calls = [ch.choices[0].delta.function_call for ch in chunks if ch.choices and ch.choices[0].delta.function_call]
        name, args = calls[0].name, "".join(fc.arguments or "" for fc in calls)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert not any(ch.choices and ch.choices[0].delta.tool_calls for ch in chunks)
    else:
        r = c.chat.completions.create(**kw)
        assert r.choices[0].message.tool_calls is None
        name, args = r.choices[0].message.function_call.name, r.choices[0].message.function_call.arguments
        finish = [r.choices[0].finish_reason]
    assert name == "get_weather" and json.loads(args) == {"city": "Paris", "unit": "c"}
    assert finish == ["function_call"]
    sent = json.loads(rawhttp.request("GET", fake_openai.url + "/_recorded")[2])[-1]["body"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]

    follow = c.chat.completions.create(model="fixture:plain_text", functions=functions, messages=[
        ask, {"role": "assistant", "content": None, "function_call": {"name": name, "arguments": args}},
        {"role": "function", "name": name, "content": "18 C, sunny"}])
    assert follow.choices[0].finish_reason == "stop" and follow.choices[0].message.content
    sent = json.loads(rawhttp.request("GET", fake_openai.url + "/_recorded")[2])[-1]["body"]
    call_id = sent["messages"][1]["tool_calls"][0]["id"]
    assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][2]["role"] == "tool" and sent["messages"][2]["tool_call_id"] == call_id
    assert "18 C, sunny" in json.dumps(sent["messages"][2]["content"])
