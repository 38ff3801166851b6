"""How long tasks waited, from the simulated start times: pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WaitStats:
    p50: float
    p95: float
    p99: float
    max: float
    over_slo: float  # share of tasks that waited longer than the objective
    slo: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of sorted values: a wait some task really had."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_stats(arrivals: Sequence[float], started: Sequence[float], end: float,
               slo: float) -> WaitStats:
    """Waits from arrival to the start of the run that finished; a task that never
    started has waited until `end` (and counts against the objective)."""
    waits = sorted((end if math.isnan(s) else s) - a
                   for a, s in zip(arrivals, started, strict=True))
    over = sum(1 for w in waits if w > slo)
    return WaitStats(
        p50=percentile(waits, 50), p95=percentile(waits, 95), p99=percentile(waits, 99),
        max=waits[-1] if waits else 0.0, over_slo=over / len(waits) if waits else 0.0, slo=slo,
    )
