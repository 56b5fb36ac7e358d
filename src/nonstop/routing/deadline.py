"""How long to wait for the cloud's first byte, learned from the cloud in use.

A fixed deadline is wrong both ways: 60 s leaves a user watching a spinner for a minute
when the cloud hangs, although it usually answers in a fraction of a second; a short one
abandons a long-context request that legitimately takes 20 s to start. So nonstop keeps the
recent times to first byte of successful answers, by request size (buckets of powers of
four), and waits `multiplier` times the usual (the 90th percentile) for a request of that
size, within the configured floor and ceiling. A size with no history of its own borrows
the nearest one, scaled by size (reading the prompt takes time in proportion to it).

Pure: the caller passes measurements in; nothing here reads a clock.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field

SAMPLES = 64
# The slowest pace (tokens a second) a non-streamed answer is allowed to be written at: the
# cloud sends such an answer's head only once the answer is whole, so the wait for it
# grows with what it may write (max_tokens), on top of the wait for the cloud to start.
ANSWER_PACE = 10.0
MIN_SAMPLES = 5
SMALLEST = 4096  # bytes: the first bucket holds everything up to this size


def bucket_of(size: int) -> int:
    """0 for up to 4 KB, then one bucket per factor of four: the b with
    SMALLEST * 4**(b-1) < size <= SMALLEST * 4**b, counted from the bits of
    (size - 1) // SMALLEST (b doubled is that many bits, rounded up to even)."""
    return ((max(int(size) - 1, 0) // SMALLEST).bit_length() + 1) // 2


def bucket_size(bucket: int) -> int:
    """A representative size for a bucket (its upper bound)."""
    return int(SMALLEST * 4**bucket)


@dataclass
class FirstByteDeadlines:
    floor: float = 10.0
    ceiling: float = 60.0
    multiplier: float = 4.0
    samples: dict[int, deque[float]] = field(default_factory=dict)
    recorded: int = 0  # samples taken so far: a saved snapshot is current while it stays
    # Each bucket's samples in order, kept beside them: the deadline is read on every
    # request, and sorting the samples each time cost more than the rest of it.
    _ordered: dict[int, list[float]] = field(default_factory=dict, repr=False, compare=False)

    def record(self, size: int, seconds: float) -> None:
        if seconds < 0 or not math.isfinite(seconds):
            return
        b = bucket_of(size)
        values = self.samples.get(b)
        if values is None:
            values = self.samples[b] = deque(maxlen=SAMPLES)
        ordered = self._sorted(b)
        if len(values) == values.maxlen:
            del ordered[bisect_left(ordered, values[0])]
        values.append(seconds)
        insort(ordered, seconds)
        self.recorded += 1

    def usual(self, size: int) -> float | None:
        """The 90th percentile time to first byte for a request of this size, or None."""
        b = bucket_of(size)
        own = self.samples.get(b)
        if own is not None and len(own) >= MIN_SAMPLES:
            return _p90(self._sorted(b))
        known = [k for k, v in self.samples.items() if len(v) >= MIN_SAMPLES]
        if not known:
            return None
        nearest = min(known, key=lambda k: abs(k - b))
        scale = max(1.0, bucket_size(b) / bucket_size(nearest)) if b > nearest else 1.0
        return _p90(self._sorted(nearest)) * scale

    def _sorted(self, bucket: int) -> list[float]:
        """The bucket's samples in order."""
        values = self.samples.get(bucket, ())
        ordered = self._ordered.get(bucket)
        if ordered is None or len(ordered) != len(values):
            ordered = self._ordered[bucket] = sorted(values)
        return ordered

    def deadline(self, size: int) -> float:
        usual = self.usual(size)
        if usual is None:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.multiplier * usual))

    def describe(self) -> dict[str, float]:
        """The deadline now for each size that has history, by bucket's upper size."""
        return {_label(bucket_size(b)): round(self.deadline(bucket_size(b)), 2) for b in sorted(self.samples)}

    def snapshot(self) -> dict[str, list[float]]:
        return {str(b): list(v) for b, v in self.samples.items()}

    def restore(self, snap: object) -> None:
        if not isinstance(snap, dict):
            return
        for k, values in snap.items():
            if str(k).isdigit() and isinstance(values, list):
                self.samples[int(k)] = deque((float(v) for v in values if isinstance(v, int | float)), maxlen=SAMPLES)
                self._ordered.pop(int(k), None)


def _p90(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def _label(size: int) -> str:
    return f"<={size // 1024} KB" if size < 1024 * 1024 else f"<={size // (1024 * 1024)} MB"


def answer_wait(first_byte: float, max_tokens: object, longest: float) -> float:
    """How long to wait for a non-streamed answer's head: the first-byte deadline plus
    `max_tokens` written at ANSWER_PACE, never more than `longest` (which is also the wait
    when max_tokens is not a count)."""
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        return min(longest, first_byte + max_tokens / ANSWER_PACE)
    return longest
