"""asyncio helpers the server and the backends share."""

from __future__ import annotations

import asyncio
from types import TracebackType


class _TaskBound:
    """A bound on a block of the current task: past it, `_expire` cancels the task and the
    block raises TimeoutError, as asyncio.timeout's does (a cancel from elsewhere stays a
    cancel). One timer at most at a time, cancelled when the block ends."""

    __slots__ = ("expired", "_loop", "_task", "_handle", "_cancelling")

    def __init__(self) -> None:
        self.expired = False
        self._handle: asyncio.TimerHandle | None = None

    def _bind(self) -> None:
        # The loop passed on: without it, current_task looks it up again, and in Python
        # 3.11 each lookup of the running loop is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError(f"{type(self).__name__} must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and self._task.uncancel() <= self._cancelling and et is asyncio.CancelledError:
            raise TimeoutError from exc


class Deadline(_TaskBound):
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

    __slots__ = ("when",)

    def __init__(self, when: float) -> None:
        super().__init__()
        self.when = when

    def __enter__(self) -> Deadline:
        self._bind()
        self._handle = self._loop.call_at(self.when, self._fire)
        return self

    def _fire(self) -> None:
        if self._loop.time() < self.when:  # moved later since the timer was armed
            self._handle = self._loop.call_at(self.when, self._fire)
            return
        self._expire()


class Silence(_TaskBound):
    """A bound on the silences of a body being read: once one read has waited `limit`
    seconds, the task is cancelled and the block raises TimeoutError (a cancel from
    elsewhere stays a cancel). What aiohttp's `sock_read` does, without its cost per
    chunk: aiohttp arms a new timer for every chunk the socket delivers, and cancels the
    last; this arms one for the whole body and moves it only when it fires early. Only
    the reads count: the time between them (the consumer's, such as a slow client's)
    is not the sender's silence.

        with Silence(120) as s:
            while more:
                s.reading()
                chunk = await read()
                s.idle()
                yield chunk
    """

    __slots__ = ("limit", "since")

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.since: float | None = None  # when the read under way began; None between reads

    def __enter__(self) -> Silence:
        self._bind()
        return self

    def reading(self) -> None:
        """A read begins now."""
        self.since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self.since + self.limit, self._fire)

    def idle(self) -> None:
        """The read is over."""
        self.since = None

    def _fire(self) -> None:
        self._handle = None
        if self.since is None:  # between reads: the next read arms it again
            return
        end = self.since + self.limit
        if self._loop.time() < end:  # a later read than the one it was armed for
            self._handle = self._loop.call_at(end, self._fire)
            return
        self._expire()
