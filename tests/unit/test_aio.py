"""nonstop.aio: Deadline (asyncio.timeout_at with a deadline that may move later) and Silence
(a bound on each read of a body, with one timer for the whole body)."""

from __future__ import annotations

import asyncio

import pytest

from nonstop.aio import Deadline, Silence


async def test_a_block_that_outlasts_its_deadline_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), Deadline(loop.time() + 0.02):
        await asyncio.sleep(5)


async def test_a_block_that_ends_in_time_leaves_no_timer_and_no_cancel_behind() -> None:
    loop = asyncio.get_running_loop()
    with Deadline(loop.time() + 0.02) as d:
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)  # past the deadline: nothing fires
    assert not d.expired and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_deadline_moved_later_inside_the_block_holds_until_the_new_time() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError), Deadline(t0 + 0.02) as d:
        d.when = t0 + 0.15
        await asyncio.sleep(5)
    assert loop.time() - t0 >= 0.15


@pytest.mark.parametrize("kind", ["deadline", "silence"])
async def test_a_cancel_from_outside_stays_a_cancel(kind: str) -> None:
    loop = asyncio.get_running_loop()

    async def inner() -> None:
        with Deadline(loop.time() + 10) if kind == "deadline" else Silence(10) as bound:
            if isinstance(bound, Silence):
                bound.reading()
            await asyncio.sleep(5)

    task = asyncio.ensure_future(inner())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_exception_of_the_block_passes_through() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(KeyError), Deadline(loop.time() + 10):
        await asyncio.sleep(0)
        raise KeyError("x")


# --- Silence ---------------------------------------------------------------------------------


async def test_a_read_that_waits_past_the_limit_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError), Silence(0.05) as s:
        s.reading()
        await asyncio.sleep(5)
    assert s.expired and 0.05 <= loop.time() - t0 < 1


async def test_reads_that_each_end_in_time_are_never_cut_however_long_the_whole() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with Silence(0.05) as s:
        for _ in range(8):  # 8 x 0.03 s: far past the limit in all, each read under it
            s.reading()
            await asyncio.sleep(0.03)
            s.idle()
    assert not s.expired and loop.time() - t0 >= 0.2
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_time_between_reads_is_not_silence() -> None:
    """A slow consumer (the client) holds the body between reads: only the reads count."""
    with Silence(0.03) as s:
        s.reading()
        await asyncio.sleep(0)
        s.idle()
        await asyncio.sleep(0.1)  # the timer fires here, between reads: nothing is cut
        s.reading()
        await asyncio.sleep(0.01)
        s.idle()
    assert not s.expired


async def test_a_read_that_starts_after_a_timer_fired_between_reads_is_still_bound() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError), Silence(0.03) as s:
        s.reading()
        s.idle()
        await asyncio.sleep(0.06)  # the one timer fires between reads and is dropped
        t1 = loop.time()
        s.reading()
        await asyncio.sleep(5)
    assert 0.03 <= loop.time() - t1 < 1


async def test_one_timer_serves_the_whole_body() -> None:
    loop = asyncio.get_running_loop()
    armed = 0
    call_at = loop.call_at

    def counting(when: float, cb, *args):  # type: ignore[no-untyped-def]
        nonlocal armed
        armed += 1
        return call_at(when, cb, *args)

    loop.call_at = counting  # type: ignore[method-assign, assignment]
    try:
        with Silence(10) as s:
            for _ in range(100):
                s.reading()
                await asyncio.sleep(0)
                s.idle()
    finally:
        del loop.call_at  # type: ignore[method-assign]
    assert armed == 1


async def test_leaving_the_block_cancels_its_timer() -> None:
    with Silence(0.02) as s:
        s.reading()
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert not s.expired and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

