"""Waiting for a condition instead of sleeping a fixed time, so that a test holds on a
loaded machine: the bound is generous, and an idle machine still goes at full speed.

    wait_for(lambda: status(ns)["cloud"]["state"] == "serving", 30, "the cloud to be serving")
    wait_until(deadline_epoch, "the quota's reset time")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """The first true value `check()` returns; AssertionError naming `what` if none
    comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def wait_until(epoch: float, what: str, slack: float = 0.2, limit: float = 60.0) -> None:
    """Sleep until the wall clock passes `epoch` (plus `slack`): a deadline nonstop
    reported. AssertionError if that is more than `limit` seconds away."""
    left = epoch + slack - time.time()
    assert left <= limit, f"{what} is {left:.0f} s away, more than the {limit:g} s a test may wait"
    if left > 0:
        time.sleep(left)
