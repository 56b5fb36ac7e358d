"""asyncio helpers the server and the backends share."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """`asyncio.timeout_at` for the request path, at a fraction of its cost: one timer,
    armed on entry and cancelled on exit. `when` (the loop's clock) may be moved later
    inside the block for nothing: a timer that fires before the deadline then in force is
    armed again for it. Past the deadline the task is cancelled and the block raises
    TimeoutError, as asyncio's does (a cancel from elsewhere stays a cancel).

        with Deadline(loop.time() + 5) as d:
            while more:
                await receive()
                d.when = started + allowed(size)
    """

    __slots__ = ("when", "expired", "_loop", "_task", "_handle", "_cancelling")

    def __init__(self, when: float) -> None:
        self.when = when
        self.expired = False

    def __enter__(self) -> Deadline:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_at(self.when, self._fire)
        return self

    def _fire(self) -> None:
        if self._loop.time() < self.when:  # moved later since the timer was armed
            self._handle = self._loop.call_at(self.when, self._fire)
            return
        self.expired = True
        self._task.cancel()

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._handle.cancel()
        if self.expired and self._task.uncancel() <= self._cancelling and et is asyncio.CancelledError:
            raise TimeoutError from exc
