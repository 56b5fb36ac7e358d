"""Error bodies and request ids."""

from __future__ import annotations

import os
import re

import orjson

from nonstop.wire.errors import anthropic_error, new_request_id

RID = re.compile(r"req_nonstop_[0-9a-f]{24}")


def test_request_ids_have_one_shape_and_do_not_repeat() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert all(RID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_its_parents_request_ids() -> None:
    """The generator is seeded again in a child: two processes never name two requests alike."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        os.write(w, "".join(new_request_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        theirs = set(RID.findall(f.read().decode()))
    os.waitpid(pid, 0)
    ours = {new_request_id() for _ in range(50)}
    assert len(theirs) == 50 and not theirs & ours


def test_an_error_body_carries_a_request_id() -> None:
    doc = orjson.loads(anthropic_error(529, "busy"))
    assert doc["error"]["type"] == "overloaded_error" and RID.fullmatch(doc["request_id"])


def test_a_prompt_too_long_names_a_count_over_the_maximum() -> None:
    # Claude Code compacts on these words; the count is over the maximum as they say,
    # also where the prompt fit and only the room for the answer did not.
    from nonstop.wire.errors import prompt_too_long_message

    assert prompt_too_long_message(40000, 32768) == "prompt is too long: 40000 tokens > 32768 maximum"
    assert prompt_too_long_message(913, 1024) == "prompt is too long: 1025 tokens > 1024 maximum"
