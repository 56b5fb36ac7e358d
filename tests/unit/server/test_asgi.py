"""Reading a request body: whole, bounded, and its problems as answers to give."""

from __future__ import annotations

import pytest

from nonstop.server.asgi import BadBody, ClientGone, Message, read_json_body


def receiving(*chunks: bytes, gone: bool = False):
    msgs: list[Message] = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                           for i, c in enumerate(chunks)]
    if gone:
        msgs = msgs[:-1] + [{"type": "http.disconnect"}]

    async def receive() -> Message:
        return msgs.pop(0)

    return receive


async def test_a_json_body_arrives_whole_with_its_document():
    body, doc = await read_json_body({"headers": []}, receiving(b'{"a": ', b"[1, 2]}"), 100)
    assert body == b'{"a": [1, 2]}' and doc == {"a": [1, 2]}


@pytest.mark.parametrize("chunks,status,words", [
    ((b"x" * 101,), 413, "larger than the 100 byte limit (max_body_bytes)"),
    ((b'{"a": ', b"[1, 2"), 400, "not valid JSON"),
    ((b"",), 400, "not valid JSON"),
])
async def test_a_body_nonstop_cannot_take_says_why(chunks, status, words):
    with pytest.raises(BadBody) as err:
        await read_json_body({"headers": []}, receiving(*chunks), 100)
    assert err.value.status == status and words in err.value.message
    assert err.value.etype == ("request_too_large" if status == 413 else "invalid_request_error")


async def test_a_declared_length_over_the_limit_is_refused_before_reading():
    async def receive() -> Message:
        raise AssertionError("the body was read")

    with pytest.raises(BadBody) as err:
        await read_json_body({"headers": [(b"content-length", b"5000")]}, receive, 100)
    assert err.value.status == 413


async def test_a_client_that_leaves_mid_body_is_gone():
    with pytest.raises(ClientGone):
        await read_json_body({"headers": []}, receiving(b'{"a"', b"", gone=True), 100)
