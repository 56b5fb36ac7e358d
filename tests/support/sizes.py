"""A request size with set answers, for tests of the planner's size rules."""

from __future__ import annotations

from collections.abc import Callable


class Measured:
    """A routing.facts.SizeMeasure with set answers (or functions to call), that records
    what was asked of it."""

    def __init__(self, local: int | Callable[[], int], floor: int | Callable[[], int]):
        self.asked: list[str] = []
        self._local, self._floor = local, floor

    def local(self) -> int:
        self.asked.append("local")
        return self._local() if callable(self._local) else self._local

    def floor(self) -> int:
        self.asked.append("floor")
        return self._floor() if callable(self._floor) else self._floor
