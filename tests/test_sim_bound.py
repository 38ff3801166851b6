"""The lower bound of worker time, on cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from scaler.simulation.bound import fleet_needed, lower_bound, max_wait
from scaler.simulation.summary import percentile, wait_stats


def test_max_wait_fifo():
    # Two slots; four 10 s tasks at t=0: two start at 0, two at 10.
    assert max_wait([0, 0, 0, 0], [10, 10, 10, 10], 2) == 10
    assert max_wait([0, 0, 0, 0], [10, 10, 10, 10], 4) == 0
    assert max_wait([0, 5], [10, 10], 1) == 5
    assert max_wait([0], [1], 0) == math.inf
    assert max_wait([], [], 0) == 0


def test_fleet_needed():
    arrivals, durations = [0, 0, 0, 0], [10, 10, 10, 10]
    assert fleet_needed(arrivals, durations, 2, 5.0, 10) == 2  # 1 worker: 10 s waits
    assert fleet_needed(arrivals, durations, 2, 10.0, 10) == 1
    assert fleet_needed(arrivals, durations, 1, 0.0, 3) is None  # not even the maximum
    assert fleet_needed([], [], 1, 0.0, 3) == 0


FOUR = ([100, 100, 100, 100], [10, 10, 10, 10])  # four 10 s tasks at t=100


def test_lower_bound_hand_computed():
    # 2 slots per worker: 20 s of work per slot. Waits within 5 s need 2 workers at
    # once; one is there, so one launch, 20 s of start-up billed before it works.
    # The best policy: stop the first worker at 0 (min 0), launch two at 80, stop both
    # at 110: 60 worker-s; the bound, 40, is below it, as a bound must be.
    b = lower_bound(*FOUR, concurrency=2, startup_mean=20.0, minimum=0, initial=1,
                    maximum=10, slo=5.0, duration=130.0)
    assert (b.work_seconds, b.needed, b.launches, b.worker_seconds) == (20.0, 2, 1, 40.0)
    # With min 1 the one worker is billed all 130 s: more than that.
    b = lower_bound(*FOUR, concurrency=2, startup_mean=20.0, minimum=1, initial=1,
                    maximum=10, slo=5.0, duration=130.0)
    assert b.worker_seconds == 130.0
    # Starting with 2 workers: no launch needed.
    b = lower_bound(*FOUR, concurrency=2, startup_mean=20.0, minimum=0, initial=2,
                    maximum=10, slo=5.0, duration=130.0)
    assert (b.launches, b.worker_seconds) == (0, 20.0)


def test_no_launch_is_charged_when_no_fleet_within_max_meets_the_objective():
    b = lower_bound(*FOUR, concurrency=2, startup_mean=20.0, minimum=0, initial=1,
                    maximum=1, slo=5.0, duration=130.0)
    assert (b.needed, b.launches, b.worker_seconds) == (None, 0, 20.0)


@pytest.mark.parametrize(("q", "expected"), [(50, 5), (90, 9), (99, 10), (100, 10), (1, 1)])
def test_percentile_nearest_rank(q, expected):
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], q) == expected


def test_wait_stats_count_unstarted_tasks_until_the_end():
    nan = math.nan
    stats = wait_stats([0, 0, 10, 20], [0, 70, 11, nan], end=100, slo=60)
    # Waits 0, 70, 1 and 80 (never started: until the end).
    assert (stats.p50, stats.max, stats.over_slo) == (1, 80, 0.5)
