"""A non-streamed answer's head comes from the cloud only once the whole answer is written:
its wait allows for writing max_tokens (routing/deadline.py answer_wait), a body that
stalls after its head is still bound by the first-byte deadline, and its time is not
learned as a time to first byte."""

from __future__ import annotations

import asyncio
import time

import orjson

from nonstop.backends.base import Reply
from nonstop.backends.cloud import CloudBackend
from nonstop.backends.head import forward_headers
from nonstop.config import CloudConfig
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.deadline import FirstByteDeadlines

ANSWER = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                       "content": [{"type": "text", "text": "a long answer"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 11, "output_tokens": 900}})


def _answer(head_after: float, body_after: float = 0.0) -> list[tuple[float, bytes]]:
    """A 200 head `head_after` seconds after the request, its body `body_after` after that."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(ANSWER)
    return [(head_after, head), (body_after, ANSWER)]


async def _ask(url: str, answer_tokens: object, *, answer_timeout: float = 600.0) -> tuple[Reply | Verdict, float, int]:
    # A cloud that usually starts at once: the learned first-byte wait is the floor, 0.3 s.
    cfg = CloudConfig(url=url, first_byte_timeout=5.0, first_byte_floor=0.3, answer_timeout=answer_timeout)
    deadlines = FirstByteDeadlines(0.3, 5.0, 4.0)
    for _ in range(8):
        deadlines.record(10, 0.01)
    session = CloudBackend.make_session(cfg)
    try:
        backend = CloudBackend(cfg, session, deadlines=deadlines)
        before = deadlines.recorded
        t0 = time.monotonic()
        res = await backend.request("POST", b"/v1/messages", b"", forward_headers([(b"x-api-key", b"k")]), b"{}",
                                    stream=False, expect="json", answer_tokens=answer_tokens)
        took = time.monotonic() - t0
        if isinstance(res, Reply):
            b"".join([c async for c in res.body])
        await asyncio.sleep(0.01)  # what the reply teaches is learned a turn later
        return res, took, deadlines.recorded - before
    finally:
        await session.close()


async def test_an_answer_that_takes_longer_than_the_first_byte_wait_to_write_is_waited_for(raw_cloud):
    url = await raw_cloud(_answer(1.2))  # four times the learned wait: a long answer being written
    res, took, learned = await _ask(url, 900)
    assert isinstance(res, Reply) and res.status == 200, res
    assert took >= 1.2
    assert learned == 0  # how long an answer took to write is not how long the cloud takes to start


async def test_the_answer_s_wait_is_bounded(raw_cloud):
    url = await raw_cloud(_answer(3.0))
    res, took, _ = await _ask(url, 900, answer_timeout=0.8)  # never more than answer_timeout
    assert isinstance(res, Verdict) and res.kind == FailureKind.TIMEOUT and took < 2.0
    res, took, _ = await _ask(url, 3)  # 3 tokens at the slowest pace: 0.3 s more than the 0.3 s wait
    assert isinstance(res, Verdict) and res.kind == FailureKind.TIMEOUT and took < 2.0


async def test_a_body_that_stalls_after_its_head_is_bound_by_the_first_byte_wait(raw_cloud):
    url = await raw_cloud(_answer(0.0, 3.0))
    res, took, _ = await _ask(url, 900)  # 90 s allowed for the head, not for the body behind it
    assert isinstance(res, Verdict) and res.kind == FailureKind.TIMEOUT, res
    assert took < 2.0
