"""The least worker time any scaling policy could spend on a workload: pure arithmetic.

A clairvoyant policy with no idle worker still pays for three things:

- the work itself: every task's duration, shared by `concurrency` slots per worker;
- start-up: a launched worker is billed from launch, and works only after its
  start-up delay. A policy that keeps every task within the wait objective must
  at some moment run at least `needed` workers: the smallest fixed fleet that does
  (a varying fleet never serves a task sooner than a fixed one of its peak size),
  so at least `needed - initial` launches happen;
- the minimum: `min` workers are billed the whole time, busy or not.

    bound = max(work / concurrency + launches * mean start-up, min * duration)

It bounds the policies that keep every task within the objective (a policy that lets
tasks wait longer may launch fewer workers), with the start-up delay's mean as each
launch's cost. It is a bound, not a target: no real policy knows the future, and every
real fleet has a fraction of a worker idle after rounding up.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LowerBound:
    worker_seconds: float
    work_seconds: float  # sum of durations / concurrency
    needed: int | None  # smallest fixed fleet keeping every wait within the objective
    launches: int


def max_wait(arrivals: Sequence[float], durations: Sequence[float], slots: int) -> float:
    """The longest wait of FIFO service on `slots` identical slots, all free from the start."""
    if slots < 1:
        return math.inf if len(arrivals) else 0.0
    free = [0.0] * slots  # when each slot frees up; a heap
    longest = 0.0
    for arrival, duration in zip(arrivals, durations, strict=True):
        start = max(arrival, free[0])
        longest = max(longest, start - arrival)
        heapq.heapreplace(free, start + duration)
    return longest


def fleet_needed(arrivals: Sequence[float], durations: Sequence[float], concurrency: int,
                 slo: float, ceiling: int) -> int | None:
    """Smallest fixed worker count (<= ceiling) whose FIFO waits all stay within `slo`;
    None when even `ceiling` workers cannot."""
    if not len(arrivals):
        return 0
    if max_wait(arrivals, durations, ceiling * concurrency) > slo:
        return None
    low, high = 0, ceiling  # max_wait(low) > slo >= max_wait(high)
    while high - low > 1:
        mid = (low + high) // 2
        if max_wait(arrivals, durations, mid * concurrency) <= slo:
            high = mid
        else:
            low = mid
    return high


def lower_bound(arrivals: Sequence[float], durations: Sequence[float], *, concurrency: int,
                startup_mean: float, minimum: int, initial: int, maximum: int, slo: float,
                duration: float) -> LowerBound:
    work = math.fsum(durations) / concurrency
    needed = fleet_needed(arrivals, durations, concurrency, slo, max(maximum, 1))
    # No policy within `max` meets the objective: none is forced to launch anything.
    launches = 0 if needed is None else max(0, needed - initial)
    seconds = max(work + launches * startup_mean, minimum * duration)
    return LowerBound(seconds, work, needed, launches)
