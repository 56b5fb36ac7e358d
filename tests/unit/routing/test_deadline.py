"""The first-byte deadline learned from the cloud in use."""

from __future__ import annotations

import pytest

from nonstop.routing.deadline import (
    ANSWER_PACE,
    MIN_SAMPLES,
    SMALLEST,
    FirstByteDeadlines,
    answer_wait,
    bucket_of,
    bucket_size,
)


def test_buckets_grow_by_four() -> None:
    assert [bucket_of(n) for n in (0, 4096, 4097, 16384, 16385, 65536, 1_000_000)] == [0, 0, 1, 1, 2, 2, 4]
    assert bucket_size(bucket_of(50_000)) >= 50_000


def test_buckets_are_counted_as_the_factors_of_four_step_them() -> None:
    def stepped(size: int) -> int:  # the definition: one bucket per factor of four past 4 KB
        bucket, upper = 0, SMALLEST
        while size > upper:
            bucket, upper = bucket + 1, upper * 4
        return bucket

    edges = [SMALLEST * 4**k + d for k in range(12) for d in (-1, 0, 1)]
    for size in [-5, 0, 1, 2, 4095, *edges, 50_000, 2**40 + 3]:
        assert bucket_of(size) == stepped(size), size


def test_no_history_waits_the_ceiling() -> None:
    d = FirstByteDeadlines(floor=10, ceiling=60, multiplier=4)
    assert d.deadline(50_000) == 60


def test_a_fast_cloud_gives_the_floor() -> None:
    d = FirstByteDeadlines(floor=10, ceiling=60, multiplier=4)
    for _ in range(MIN_SAMPLES):
        d.record(50_000, 0.4)
    assert d.deadline(50_000) == 10


def test_a_cloud_that_usually_takes_20_s_for_long_contexts_is_waited_for() -> None:
    d = FirstByteDeadlines(floor=10, ceiling=60, multiplier=4)
    for _ in range(20):
        d.record(50_000, 0.8)
        d.record(800_000, 20.0)
    assert d.deadline(800_000) == 60  # 4 x 20 s, at the ceiling
    assert d.deadline(50_000) == 10


def test_a_size_without_history_borrows_the_nearest_scaled_up() -> None:
    d = FirstByteDeadlines(floor=1, ceiling=120, multiplier=4)
    for _ in range(MIN_SAMPLES):
        d.record(10_000, 2.0)
    # 16x larger requests: the prompt takes longer to read; never shorter than the known size.
    assert d.usual(200_000) is not None and d.usual(200_000) >= 2.0 * 16
    assert d.usual(1_000) == pytest.approx(2.0)


def test_p90_ignores_a_rare_slow_answer_but_follows_a_slow_cloud() -> None:
    d = FirstByteDeadlines(floor=0.1, ceiling=60, multiplier=4)
    for _ in range(30):
        d.record(1000, 0.5)
    d.record(1000, 30.0)
    assert d.deadline(1000) == pytest.approx(2.0)
    for _ in range(30):
        d.record(1000, 5.0)
    assert d.deadline(1000) == pytest.approx(20.0)


def test_snapshot_round_trip_and_garbage() -> None:
    d = FirstByteDeadlines()
    for _ in range(6):
        d.record(50_000, 1.0)
    e = FirstByteDeadlines()
    e.restore(d.snapshot())
    assert e.deadline(50_000) == d.deadline(50_000)
    e.restore({"x": [1], "3": "nope"})
    e.record(10, float("nan"))
    assert e.describe()


def test_the_usual_time_is_the_p90_of_the_last_samples_through_evictions_and_restores() -> None:
    """The samples are kept in order beside the window as they come and go: the p90 read
    is always that of the last SAMPLES answers, as sorting them would give."""
    import random
    from collections import deque

    from nonstop.routing.deadline import SAMPLES

    rng = random.Random(7)
    d = FirstByteDeadlines(floor=0, ceiling=1e9, multiplier=1)
    window: deque[float] = deque(maxlen=SAMPLES)
    for i in range(500):
        seconds = rng.choice([0.5, 1.0, 2.0, rng.random() * 10])  # repeats, as real times have
        d.record(50_000, seconds)
        window.append(seconds)
        if i == 250:  # another instance's snapshot replaces the window
            restored = [rng.random() for _ in range(SAMPLES)]
            d.restore({str(bucket_of(50_000)): restored})
            window = deque(restored, maxlen=SAMPLES)
        if len(window) >= MIN_SAMPLES:
            ordered = sorted(window)
            assert d.usual(50_000) == ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def test_a_non_streamed_answer_is_given_time_to_be_written() -> None:
    # Its head comes once it is whole: the wait to start, plus max_tokens at a slow pace.
    assert answer_wait(10.0, 1, 600.0) == 10.0 + 1 / ANSWER_PACE  # Claude Code's quota check
    assert answer_wait(10.0, 400, 600.0) == 10.0 + 400 / ANSWER_PACE
    assert answer_wait(10.0, 32000, 600.0) == 600.0  # never more than the longest
    for unknown in (None, "400", 0, -5, True, 4.5):  # not a count: the longest
        assert answer_wait(10.0, unknown, 600.0) == 600.0
