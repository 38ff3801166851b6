"""The decision core: from rule recommendations to a service's new desired count.

A pure function of (inputs, counts, limits, behavior, history, now), after the
Kubernetes HPA's replica calculator: tolerance, stabilization windows (the
highest recommendation in the scale-down window wins, the lowest in the
scale-up window), rate policies over a period, then min/max. Every decision
carries a reason code. No clock, no I/O: `now` and the history are passed in,
and the next history is returned with the decision.

The history holds what really happened to the service, whoever did it: a desired
count read that differs from the one last seen or set was changed by someone else
(a person, another tool), and counts as a change for the rate policies and as a
recommendation for the scale-down window, as if the scaler had made it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

_UNLIMITED = 2**31 - 1  # no scale-up policy: no rate limit (max still applies)


class Reason(StrEnum):
    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    SCALE_DOWN_STABILIZED = "ScaleDownStabilized"
    SCALE_UP_LIMITED = "ScaleUpLimited"
    SCALE_DOWN_LIMITED = "ScaleDownLimited"
    AT_MAX = "AtMax"
    AT_MIN = "AtMin"
    HOLD = "Hold"
    NO_DATA = "NoData"
    GUARDED = "Guarded"
    FALLBACK = "Fallback"
    PAUSED = "Paused"


@dataclass(frozen=True)
class Policy:
    """At most `value` workers (or percent of the count) of change per `period` seconds."""

    type: Literal["workers", "percent"]
    value: float
    period: float


@dataclass(frozen=True)
class Direction:
    stabilization_window: float
    policies: tuple[Policy, ...]
    # "max": the policy allowing the most change applies; "min": the least;
    # "disabled": never move in this direction.
    select: Literal["max", "min", "disabled"] = "max"


def default_scale_up() -> Direction:
    # The HPA's: double or add 4, whichever is more, every 15 s; no window.
    return Direction(0.0, (Policy("percent", 100, 15), Policy("workers", 4, 15)))


def default_scale_down() -> Direction:
    return Direction(300.0, (Policy("percent", 100, 15),))


@dataclass(frozen=True)
class Behavior:
    scale_up: Direction
    scale_down: Direction
    tolerance: float = 0.1


@dataclass(frozen=True)
class Limits:
    min: int
    max: int
    fallback: int | None = None
    failure_threshold: int = 3


@dataclass(frozen=True)
class Counts:
    desired: int
    running: int
    pending: int


@dataclass(frozen=True)
class Inputs:
    """What the rules said this evaluation.

    `recommendations`: one count per rule that produced one. `failed`: some
    rule (or the activation query) could not be evaluated. `activation`: None
    without an activation query, else whether it was above 0. `guard`: None
    without a scale-down guard, else whether it allows scale-in (False also
    when it failed).
    """

    recommendations: tuple[int, ...]
    failed: bool = False
    activation: bool | None = None
    guard: bool | None = None


@dataclass(frozen=True)
class History:
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, recommendation)
    changes: tuple[tuple[float, int], ...] = ()  # (time, new count - old count)
    failures: int = 0  # consecutive evaluations with a failed rule
    # The desired count last read or set; None before the first read.
    desired: int | None = None
    # (time, count) set by someone else: the scale-down window keeps them as it keeps
    # recommendations, so a manual raise lasts at least one window. The scale-up window
    # does not: a manual cut must not stop the rules from asking for more.
    external: tuple[tuple[float, int], ...] = ()
    # (until, count): no scale-down below count before until. A scaler that starts with
    # no history of a service holds its first-read count for one scale-down window
    # (count None until that first read).
    hold: tuple[float, int | None] | None = None


@dataclass(frozen=True)
class Pause:
    """The service is out of the scaler's hands: held at `count`, or where it is (None)."""

    count: int | None = None


@dataclass(frozen=True)
class Decision:
    count: int
    reason: Reason
    recommendation: int | None  # the rules' (after activation and tolerance), before windows
    history: History  # the next history if the count is applied
    observed: History  # ... and if it is not (a dry run, a standby, a refused update)

    def direction(self, current: int) -> str:
        if self.count > current:
            return "up"
        return "down" if self.count < current else "none"

    def kept(self, applied: bool) -> History:
        """The history to carry to the next evaluation."""
        return self.history if applied else self.observed


# The most a pause tag may ask for: ECS runs at most 5,000 tasks in one service.
MAX_PAUSE_COUNT = 5000


def parse_pause(tag: str | None) -> tuple[Pause | None, str | None]:
    """The pause a service's tag value asks for, and a problem with the value, if any.

    No tag, "" or "false": not paused. "true": held where it is. A whole number: held at
    that count. Anything else still pauses (the operator meant to take the service out
    of the scaler's hands), held where it is, with a problem to report.
    """
    if tag is None:
        return None, None
    text = tag.strip().lower()
    if text in ("", "false"):
        return None, None
    if text == "true":
        return Pause(), None
    if text.isascii() and text.isdigit() and int(text) <= MAX_PAUSE_COUNT:
        return Pause(int(text)), None
    return Pause(), (f"pause tag value {tag[:40]!r} is neither true, false nor a count from 0 "
                     f"to {MAX_PAUSE_COUNT}: held where it is")


def restart_history(now: float, behavior: Behavior) -> History:
    """The history of a service the scaler knows nothing about: no scale-down for one
    scale-down window from `now`, at whatever count the first read finds."""
    return History(hold=(now + behavior.scale_down.stabilization_window, None))


def observe(history: History, desired: int, now: float) -> History:
    """The history after reading the service's desired count: a count other than the one
    last seen or set was changed by someone else, and is recorded as a change (for the
    rate policies) and for the scale-down window, as if the scaler had made it."""
    if history.hold is not None and history.hold[1] is None:
        history = replace(history, hold=(history.hold[0], desired))
    if history.desired is None or history.desired == desired:
        return replace(history, desired=desired)
    return replace(
        history, desired=desired,
        changes=(*history.changes, (now, desired - history.desired)),
        external=(*history.external, (now, desired)),
    )


def decide(
    inputs: Inputs, counts: Counts, limits: Limits, behavior: Behavior, history: History,
    now: float, pause: Pause | None = None,
) -> Decision:
    history = _pruned(observe(history, counts.desired, now), behavior, now)
    decision = _decide(inputs, counts, limits, behavior, history, now)
    if pause is None:
        return decision
    # Paused: the rules are still evaluated and recorded (the windows stay warm for the
    # resume), but the count is the operator's.
    count = counts.desired if pause.count is None else pause.count
    return _made(count, Reason.PAUSED, decision.recommendation, decision.observed,
                 counts.desired, now)


def _made(count: int, reason: Reason, recommendation: int | None, observed: History,
          current: int, now: float) -> Decision:
    applied = observed
    if count != current:
        applied = replace(observed, desired=count,
                          changes=(*observed.changes, (now, count - current)))
    return Decision(count, reason, recommendation, applied, observed)


def _pruned(history: History, behavior: Behavior, now: float) -> History:
    window = max(behavior.scale_up.stabilization_window, behavior.scale_down.stabilization_window)
    period = max((p.period for d in (behavior.scale_up, behavior.scale_down)
                  for p in d.policies), default=0.0)
    hold = history.hold if history.hold is None or history.hold[0] > now else None
    return replace(
        history,
        recommendations=tuple((t, r) for t, r in history.recommendations if t > now - window),
        external=tuple((t, r) for t, r in history.external
                       if t > now - behavior.scale_down.stabilization_window or t == now),
        changes=tuple((t, d) for t, d in history.changes if t > now - period),
        hold=hold,
    )


def _decide(
    inputs: Inputs, counts: Counts, limits: Limits, behavior: Behavior, history: History,
    now: float,
) -> Decision:
    current = counts.desired
    if inputs.failed or not inputs.recommendations:
        return _on_failure(current, limits, history, now)
    history = replace(history, failures=0)

    raw = max(inputs.recommendations)
    if limits.min == 0 and inputs.activation is not None:
        # Activation alone decides between zero and some workers, as KEDA's does.
        raw = max(raw, 1) if inputs.activation else 0
    if current > 0 and abs(raw - current) / current <= behavior.tolerance:
        raw = current

    history = replace(history, recommendations=(*history.recommendations, (now, raw)))
    wanted = _stabilized(history, behavior, current, now)

    limited = False
    if wanted > current:
        # Never below the current count: a manual raise in the period can put the count
        # at its start so low that its limit is under today's count (the HPA keeps it too).
        allowed = max(current, _up_limit(behavior.scale_up, current, history.changes, now))
        if current == 0:
            allowed = max(allowed, 1)  # a percentage of zero is zero: out of zero at once
        new, limited = min(wanted, allowed), allowed < wanted
    elif wanted < current:
        # ... and a scale-down never above it, after a manual cut.
        allowed = min(current, _down_limit(behavior.scale_down, current, history.changes, now))
        new, limited = max(wanted, allowed), allowed > wanted
    else:
        new = current
    new = min(max(new, limits.min), limits.max)

    guarded = False
    if new < current and inputs.guard is False:
        # The guard holds scale-in, but never above max.
        held = min(current, limits.max)
        if new < held:
            new, guarded = held, held == current

    reason = _reason(current, new, raw, wanted, limited, guarded, limits)
    return _made(new, reason, raw, history, current, now)


def _on_failure(current: int, limits: Limits, history: History, now: float) -> Decision:
    failures = history.failures + 1
    history = replace(history, failures=failures)
    # Missing data never scales anything down, but `min` is a floor whatever the data: a
    # service found below it (a new ECS service at 0, a local backend starting) rises.
    floor = max(current, limits.min)
    if limits.fallback is not None and failures >= limits.failure_threshold:
        # Up to the fallback (never past max), never down: a count above max stays.
        return _made(max(floor, min(limits.fallback, limits.max)), Reason.FALLBACK, None,
                     history, current, now)
    return _made(floor, Reason.NO_DATA, None, history, current, now)


def _stabilized(history: History, behavior: Behavior, current: int, now: float) -> int:
    recent = history.recommendations
    up_window = behavior.scale_up.stabilization_window
    down_window = behavior.scale_down.stabilization_window
    # Scale up only to what every recommendation in the up window agrees on,
    # down only to the highest of the down window.
    up = min(r for t, r in recent if t > now - up_window or t == now)
    down = max(r for t, r in (*recent, *history.external)
               if t > now - down_window or t == now)
    if history.hold is not None and history.hold[1] is not None:
        down = max(down, history.hold[1])
    if up > current:
        return up
    if down < current:
        return down
    return current


def _up_limit(
    direction: Direction, current: int, changes: tuple[tuple[float, int], ...], now: float
) -> int:
    if direction.select == "disabled":
        return current
    if not direction.policies:
        return _UNLIMITED
    limits = []
    for p in direction.policies:
        start = _period_start(current, changes, now, p.period)
        if p.type == "workers":
            limits.append(start + math.floor(p.value))
        else:
            limits.append(math.ceil(start * (1 + p.value / 100)))
    return max(limits) if direction.select == "max" else min(limits)


def _period_start(current: int, changes: tuple[tuple[float, int], ...], now: float,
                  period: float) -> int:
    # The count the service had when the period began: every change in it undone, ups and
    # downs, the scaler's and anyone else's (as the HPA counts both directions).
    return max(0, current - sum(d for t, d in changes if t > now - period))


def _down_limit(
    direction: Direction, current: int, changes: tuple[tuple[float, int], ...], now: float
) -> int:
    if direction.select == "disabled":
        return current
    if not direction.policies:
        return 0
    limits = []
    for p in direction.policies:
        start = _period_start(current, changes, now, p.period)
        if p.type == "workers":
            limits.append(start - math.floor(p.value))
        else:
            limits.append(math.ceil(start * (1 - p.value / 100)))
    # The policy allowing the most change is the one with the lowest floor.
    return max(0, min(limits) if direction.select == "max" else max(limits))


def _reason(
    current: int, new: int, raw: int, wanted: int, limited: bool, guarded: bool, limits: Limits
) -> Reason:
    if new > current:
        if wanted > limits.max and new == limits.max:
            return Reason.AT_MAX
        if current < limits.min and new == limits.min:
            return Reason.AT_MIN
        return Reason.SCALE_UP_LIMITED if limited else Reason.SCALE_UP
    if new < current:
        if current > limits.max and new == limits.max:
            return Reason.AT_MAX
        if wanted < limits.min and new == limits.min:
            return Reason.AT_MIN
        return Reason.SCALE_DOWN_LIMITED if limited else Reason.SCALE_DOWN
    if guarded:
        return Reason.GUARDED
    if raw > current:
        return Reason.AT_MAX if current >= limits.max else Reason.SCALE_UP_LIMITED
    if raw < current:
        if current <= limits.min:
            return Reason.AT_MIN
        return Reason.SCALE_DOWN_LIMITED if limited else Reason.SCALE_DOWN_STABILIZED
    return Reason.HOLD
