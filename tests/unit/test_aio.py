"""nonstop.aio.Deadline: asyncio.timeout_at's behaviour, with a deadline that may move later."""

from __future__ import annotations

import asyncio

import pytest

from nonstop.aio import Deadline


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


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    loop = asyncio.get_running_loop()

    async def inner() -> None:
        with Deadline(loop.time() + 10):
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
