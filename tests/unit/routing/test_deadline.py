"""The first-byte deadline learned from the cloud in use."""

from __future__ import annotations

import pytest

from nonstop.routing.deadline import MIN_SAMPLES, FirstByteDeadlines, bucket_of, bucket_size


def test_buckets_grow_by_four() -> None:
    assert [bucket_of(n) for n in (0, 4096, 4097, 16384, 16385, 65536, 1_000_000)] == [0, 0, 1, 1, 2, 2, 4]
    assert bucket_size(bucket_of(50_000)) >= 50_000


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
