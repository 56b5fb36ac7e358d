"""The OpenAI front door (/v1/chat/completions) at the edges of what clients send.

The contract: any body a client can send gets a valid answer or a clear 4xx in OpenAI's
error format, never a 500; and a request OpenAI would serve is not refused. Each test
posts to the whole door in process (App with a fake cloud that records what it is sent).

The cloud rules the "refused" tests check against are the real API's (its own 400
messages quoted in each test); the fake cloud here accepts everything, so those tests
look at the body nonstop sent.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from nonstop.server.app import App
from tests.support.inprocess import post

USER = {"role": "user", "content": "hi"}


async def _post(app: App, body: bytes) -> tuple[int, dict[str, Any]]:
    status, answer = await post(app, "/v1/chat/completions", body)
    return status, orjson.loads(answer)


def _with_call(arguments_json: str) -> bytes:
    """A conversation whose assistant turn called f with `arguments_json` (raw JSON text)."""
    return (
        '{"model":"m","messages":[{"role":"user","content":"hi"},'
        '{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":'
        + arguments_json
        + '}}]},{"role":"tool","tool_call_id":"c","content":"r"}]}'
    ).encode()


# --- deep nesting the parser takes but the encoders do not: a 400 ----------------------------------
#
# orjson.loads accepts 1024 levels; orjson.dumps stops at 254 (TypeError "Recursion limit
# reached") and the translator's json.dumps at Python's recursion limit (RecursionError).
# Neither is caught in doors/openai.py (only TranslationError is), so App.last_guard
# answers 500 "nonstop failed on this request".

DEEP_SCHEMA = '{"type":"object","properties":{"a":' * 300 + "{}" + "}}" * 300


@pytest.mark.parametrize("body", [
    pytest.param(('{"model":"m","messages":[{"role":"user","content":"hi"}],'
                  '"tools":[{"type":"function","function":{"name":"f","parameters":' + DEEP_SCHEMA + "}}]}").encode(),
                 id="tool-parameters-300-deep"),
    pytest.param(_with_call('{"x":' + "[" * 300 + "]" * 300 + "}"), id="call-arguments-object-300-deep"),
    pytest.param(_with_call(orjson.dumps('{"x":' + "[" * 300 + "]" * 300 + "}").decode()),
                 id="call-arguments-json-text-300-deep"),
    pytest.param(_with_call("[" * 1000 + "]" * 1000), id="call-arguments-list-1000-deep"),
])
async def test_deeply_nested_values_get_an_openai_400_not_a_500(recording_app, body) -> None:
    app, sent = recording_app
    orjson.loads(body)  # the body is JSON nonstop's own parser takes
    status, doc = await _post(app, body)
    assert status == 400, (status, doc)
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    assert sent == []


# --- valid OpenAI requests, translated into ones the cloud takes -----------------------------------


async def _sent_for(recording_app, req: dict[str, Any]) -> dict[str, Any]:
    app, sent = recording_app
    status, doc = await _post(app, orjson.dumps(req))
    assert status == 200, (status, doc)
    assert len(sent) == 1
    return orjson.loads(sent[0])


@pytest.mark.parametrize("stop", ["\n", ["\n\n", "END"], [" "]])
async def test_a_whitespace_only_stop_sequence_is_not_sent_to_the_cloud(recording_app, stop) -> None:
    """OpenAI accepts `stop: "\\n"` (a very common setting). The Messages API refuses the
    whole request: 400 "stop_sequences: each stop sequence must contain non-whitespace",
    so such a stop is dropped."""
    body = await _sent_for(recording_app, {"model": "m", "messages": [USER], "stop": stop})
    assert all(s.strip() for s in body.get("stop_sequences", [])), body.get("stop_sequences")
    if isinstance(stop, list) and "END" in stop:
        assert body["stop_sequences"] == ["END"]


@pytest.mark.parametrize("content", [" ", "\n", [{"type": "text", "text": "  "}]])
async def test_a_whitespace_only_user_message_is_not_sent_as_a_blank_text_block(recording_app, content) -> None:
    """OpenAI serves a user turn of only whitespace. The Messages API refuses any request
    holding a text block that is only whitespace: 400 "messages: text content blocks must
    contain non-whitespace text", so the blank text goes."""
    body = await _sent_for(recording_app, {"model": "m", "messages": [USER, {"role": "assistant", "content": "ok"},
                                                                       {"role": "user", "content": content}]})
    blank = [b for m in body["messages"] for b in m["content"]
             if b.get("type") == "text" and not b.get("text", "").strip()]
    assert blank == []


async def test_a_final_assistant_message_ending_in_whitespace_is_not_refused(recording_app) -> None:
    """OpenAI accepts a conversation whose last message is an assistant turn ending in
    whitespace. Translated as is, it becomes an Anthropic prefill, which the API refuses:
    400 "messages: final assistant content cannot end with trailing whitespace"."""
    body = await _sent_for(recording_app, {"model": "m", "messages": [USER, {"role": "assistant", "content": "Sure, "}]})
    last = body["messages"][-1]
    if last["role"] == "assistant":
        text = "".join(b.get("text", "") for b in last["content"] if b.get("type") == "text")
        assert text == text.rstrip(), repr(text)


async def test_an_empty_user_message_is_not_refused(recording_app) -> None:
    """`{"role": "user", "content": ""}` is a valid Chat Completions request: the turn is
    kept, with text saying it was empty."""
    app, _ = recording_app
    status, doc = await _post(app, orjson.dumps({"model": "m", "messages": [{"role": "user", "content": ""}]}))
    assert status == 200, (status, doc)


async def test_temperature_and_top_p_are_not_both_sent_to_the_cloud(recording_app) -> None:
    """OpenAI clients commonly send both (`temperature: 0.7, top_p: 1`). Current Claude
    models (Sonnet 4.5 and later) refuse that: 400 "`temperature` and `top_p` cannot both be
    specified for this model. Please use only one.", so temperature is kept and top_p goes."""
    body = await _sent_for(recording_app, {"model": "claude-sonnet-4-5", "messages": [USER],
                                          "temperature": 0.7, "top_p": 1})
    assert not ("temperature" in body and "top_p" in body), body


@pytest.mark.parametrize("parameters", [{}, {"properties": {"tz": {"type": "string"}}}], ids=["empty", "without type"])
async def test_a_function_whose_parameters_lack_a_type_gets_an_object_input_schema(recording_app, parameters) -> None:
    """`"parameters": {}` is how many OpenAI clients declare a function without arguments,
    and OpenAI takes a schema without `type`. The Messages API requires the object type:
    400 "tools.0.custom.input_schema.type: Field required"."""
    body = await _sent_for(recording_app, {"model": "m", "messages": [USER], "tools": [
        {"type": "function", "function": {"name": "now", "description": "the time", "parameters": parameters}}]})
    schema = body["tools"][0]["input_schema"]
    assert schema["type"] == "object" and schema.get("properties", {}) == parameters.get("properties", {})


async def test_a_whitespace_only_system_message_is_not_sent_as_a_blank_text_block(recording_app) -> None:
    """Clients that build prompts from templates send a system or developer message of
    only a newline beside the real one. The Messages API refuses whitespace-only text:
    400 "system: text content blocks must contain non-whitespace text"; the blank one goes."""
    body = await _sent_for(recording_app, {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "\n"}, USER]})
    assert body["system"] == "Be brief."


async def test_a_request_of_only_system_messages_gets_an_openai_400(recording_app) -> None:
    """The Messages API needs a user turn and nonstop does not invent one: the client is
    told so in OpenAI's format (docs/compatibility.md)."""
    app, sent = recording_app
    status, doc = await _post(app, orjson.dumps({"model": "m", "messages": [{"role": "system", "content": "Write a haiku."}]}))
    assert status == 400 and "user" in doc["error"]["message"] and set(doc["error"]) == {"message", "type", "param", "code"}
    assert sent == []


async def test_the_clouds_prompt_too_long_error_carries_the_context_length_code(tmp_path) -> None:
    """Clients (litellm, hence Aider) trim the conversation on `context_length_exceeded`.
    nonstop's own "prompt is too long" has that code; the cloud's, relayed as a final 400,
    has it too."""
    from nonstop.backends.base import Reply, Usage, single
    from nonstop.backends.cloud import CloudBackend
    from nonstop.config import parse_config

    app = App(parse_config({"state_dir": str(tmp_path), "log": {"enabled": False}}))
    cloud = CloudBackend(app.cfg.cloud, session=None)  # type: ignore[arg-type]
    refusal = {"type": "error", "request_id": "req_1",
               "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}

    async def request(method, raw_path, query, headers, body, **kw):  # noqa: ANN001, ANN003
        return Reply(400, [(b"content-type", b"application/json")], single(orjson.dumps(refusal)), "cloud", False, Usage())

    cloud.request = request  # type: ignore[method-assign]
    app.rt.use_backends([], cloud=cloud)
    status, doc = await _post(app, orjson.dumps({"model": "claude-sonnet-4-5", "messages": [USER]}))
    assert status == 400 and doc["error"]["code"] == "context_length_exceeded", doc


# --- the door's paths and methods ----------------------------------------------------------------


async def test_the_door_answers_without_v1_too(recording_app) -> None:
    """An OpenAI client set to nonstop's address without /v1 posts to /chat/completions."""
    app, sent = recording_app
    status, answer = await post(app, "/chat/completions", orjson.dumps({"model": "m", "messages": [USER]}))
    assert status == 200 and orjson.loads(answer)["choices"][0]["message"]["content"] == "ok"
    assert len(sent) == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_another_method_on_the_door_is_an_openai_405(recording_app, path, method) -> None:
    """The door is nonstop's own: a GET is not passed to the cloud (whose answer would be
    Anthropic-shaped), it is refused in the door's format, saying which method to use."""
    from tests.support.inprocess import exchange

    app, sent = recording_app
    status, headers, body = await exchange(app, method, path)
    doc = orjson.loads(body)
    assert status == 405 and headers[b"allow"] == b"POST"
    assert set(doc["error"]) == {"message", "type", "param", "code"} and "use POST" in doc["error"]["message"]
    assert sent == []
