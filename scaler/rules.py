"""What each rule recommends, given the value its query returned: pure arithmetic.

A rule's query result is first reduced to one number (`reduce_result`), strictly:
several series need an explicit `aggregate`, NaN and Inf are errors, and an empty
result means whatever the rule's `on_empty` says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Aggregate = Literal["sum", "max"]
OnEmpty = Literal["hold", "zero"]


class RuleError(ValueError):
    """The rule cannot recommend a count this time; `kind` labels the error metric."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def reduce_result(values: Sequence[float], aggregate: Aggregate | None, on_empty: OnEmpty,
                  where: str = "", zero_refused: str | None = None) -> float:
    """One number from a query's values; `where` says which series were read, if not all.

    `zero_refused` says why an empty result may not be read as 0 even with on_empty: zero
    (the data source is not known to be healthy): it then holds, as missing data does.
    """
    if not values:
        if on_empty == "zero" and zero_refused is None:
            return 0.0
        why = f"; on_empty: zero does not apply: {zero_refused}" if on_empty == "zero" else ""
        raise RuleError("no_data", f"query returned no series{where}{why}")
    if len(values) > 1 and aggregate is None:
        if where:
            advice = "narrow the query (several jobs or instances?) or set aggregate: sum or max"
        else:
            advice = ("set match_labels (e.g. {queue: \"...\"}, with `by (queue)` in the "
                      "query) so the service reads its own series, or aggregate: sum or max")
        raise RuleError("several_series", f"query returned {len(values)} series{where}; {advice}")
    for v in values:
        if not math.isfinite(v):
            raise RuleError("not_finite", f"query returned {v}")
    return max(values) if aggregate == "max" else math.fsum(values)


@dataclass(frozen=True)
class PerWorker:
    """ceil(value / target): `target` units of work per worker."""

    target: float

    def recommend(self, value: float, current: int, pending: int) -> int:
        return _count(value / self.target)


@dataclass(frozen=True)
class Drain:
    """Workers that clear `backlog` within `within` seconds from now.

    Tasks keep arriving at `arrival` per second, so the work to do by the deadline is
    backlog + arrival * within, at `throughput` tasks per worker per second. The
    `running` workers already started work all `within` seconds; a worker launched now
    does nothing for `startup` seconds, so only (within - startup) of its time counts:

        work <= running * throughput * within:
            n = ceil(work / (throughput * within))             (fewer may do)
        otherwise:
            n = running + ceil((work - running * throughput * within)
                               / (throughput * (within - startup)))

    With nothing running this is the plain (backlog + arrival * within) /
    (throughput * (within - startup)). Charging the start-up delay to workers that
    are already up would ask for within / (within - startup) times the workers a
    steady queue needs, and keep them.
    """

    within: float
    startup: float

    def recommend(self, backlog: float, throughput: float, arrival: float,
                  running: int = 0) -> int:
        if throughput <= 0:
            raise RuleError("bad_value", f"throughput must be > 0 (got {throughput:g})")
        if arrival < 0:
            raise RuleError("bad_value", f"arrival rate must be >= 0 (got {arrival:g})")
        work = max(0.0, backlog) + arrival * self.within
        existing = max(0, running) * throughput * self.within
        if work <= existing:
            return _count(work / (throughput * self.within))
        return min(MAX_RECOMMENDATION, max(0, running) + _count(
            (work - existing) / (throughput * (self.within - self.startup))))


@dataclass(frozen=True)
class Threshold:
    """Step up above `above`, down below `below`, hold between.

    Steps are taken from the desired count, which includes tasks still
    starting; while any are pending it does not step up again, so one burst
    is not answered twice before the first answer is up.
    """

    above: float | None
    below: float | None
    step: int
    factor: float | None

    def recommend(self, value: float, current: int, pending: int) -> int:
        if self.above is not None and value > self.above:
            if pending > 0:
                return current
            if self.factor is not None:
                return max(current + 1, _count(current * self.factor))
            return current + self.step
        if self.below is not None and value < self.below:
            if self.factor is not None:
                return max(0, min(current - 1, math.floor(current / self.factor)))
            return max(0, current - self.step)
        return current


@dataclass(frozen=True)
class Expression:
    """The query returns the count itself; a fraction rounds up."""

    def recommend(self, value: float, current: int, pending: int) -> int:
        return _count(value)


# No service runs more workers than this (ECS: 5,000 tasks per service); a larger
# recommendation means "as many as allowed", and stays an int every float can hold.
MAX_RECOMMENDATION = 1_000_000


def _count(x: float) -> int:
    if not math.isfinite(x):
        # 1e308 per worker at target 0.1: the arithmetic overflows, the value is no count.
        raise RuleError("not_finite", f"the rule's arithmetic gave {x} workers")
    # 4.0000000001 workers is 4: floating-point noise must not buy a worker.
    return min(MAX_RECOMMENDATION, max(0, math.ceil(round(x, 9))))
