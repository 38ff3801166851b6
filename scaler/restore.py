"""What a starting scaler decided before it stopped, read back from its own series.

A redeploy or a crash must not reset the stabilization windows and rate policies: a
scaler that restarted during a lull would otherwise drop every service straight to its
current recommendation. The scaler exports, for each service, its recommendation
(`taskqueue_scaler_recommended_replicas`) and the desired count it read
(`taskqueue_scaler_current_replicas{state="desired"}`); Prometheus keeps them. At start-up
one range query for each, over the longest window or policy period of the config, gives
back the recommendations (for the windows), the changes of the desired count (for the
rate policies, whoever made them) and the last desired count seen (so a change made while
the scaler was down counts as someone else's). A service with nothing to read back holds
its count for one scale-down window (`restart_history`).

`histories_from` is pure; `restore` does the two queries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from exporter import metric_names as m
from scaler.config import ScalerConfig, ServiceConfig
from scaler.decision import History, restart_history
from scaler.prometheus import QueryError, RangeSeries

log = logging.getLogger(__name__)

RangeQuery = Callable[[str, float, float, float], Sequence[RangeSeries]]


@dataclass(frozen=True)
class Restored:
    histories: dict[str, History]
    restored: tuple[str, ...]  # services whose history was read back
    error: str | None = None  # why nothing could be read, if so


def span(service: ServiceConfig) -> float:
    """Seconds of the past the service's decisions depend on."""
    behavior = service.behavior
    windows = (behavior.scale_up.stabilization_window, behavior.scale_down.stabilization_window)
    periods = (p.period for d in (behavior.scale_up, behavior.scale_down) for p in d.policies)
    return max((*windows, *periods), default=0.0)


def queries(matchers: str) -> tuple[str, str]:
    """The recommendation and the desired-count queries, one series per service."""
    desired = ", ".join(x for x in ('state="desired"', matchers) if x)
    # max across instances: during a rolling deploy, or with a standby, several scalers
    # export the same service; the higher recommendation is the safe one to hold.
    return (f"max by (service) ({m.SCALER_RECOMMENDED.name}{{{matchers}}})",
            f"max by (service) ({m.SCALER_CURRENT.name}{{{desired}}})")


def histories_from(
    services: Sequence[ServiceConfig], recommendations: Sequence[RangeSeries],
    desired: Sequence[RangeSeries], now: float,
) -> Restored:
    """Each service's history from the two range results; a service without any point of
    its recommendation starts with `restart_history`."""
    by_service = {s.labels.get("service", ""): s.points for s in recommendations}
    desired_by = {s.labels.get("service", ""): s.points for s in desired}
    histories: dict[str, History] = {}
    restored: list[str] = []
    for service in services:
        points = by_service.get(service.name, ())
        if not points:
            histories[service.name] = restart_history(now, service.behavior)
            continue
        counts = [(t, round(v)) for t, v in desired_by.get(service.name, ())]
        changes = tuple((t, count - before) for (_, before), (t, count)
                        in pairwise(counts) if count != before)
        restored_points = [(t, round(v)) for t, v in points]
        # What the rules said while the scaler was down is unknown: the last recommendation
        # read back is taken to have held until now, so a restart after a gap longer than
        # the window still holds it for one window (never less than no history at all).
        restored_points.append((now, restored_points[-1][1]))
        histories[service.name] = History(
            recommendations=tuple(restored_points),
            changes=changes,
            desired=counts[-1][1] if counts else None,
        )
        restored.append(service.name)
    return Restored(histories, tuple(restored))


def restore(config: ScalerConfig, query_range: RangeQuery, now: float) -> Restored:
    """The services' histories from Prometheus, or the restart default when it cannot
    answer (never an exception: the scaler starts either way)."""
    services = config.services
    if not config.restore.enabled:
        return Restored({s.name: restart_history(now, s.behavior) for s in services}, ())
    longest = max((span(s) for s in services), default=0.0)
    if longest <= 0:
        return Restored({}, ())  # no window, no period: nothing to remember
    # The scaler's own interval is the resolution its series have at best.
    step = max(1.0, config.interval)
    recommended, current = queries(config.restore.matchers)
    try:
        found = [query_range(q, now - longest, now, step) for q in (recommended, current)]
    except (QueryError, ValueError) as error:
        fallback = {s.name: restart_history(now, s.behavior) for s in services}
        return Restored(fallback, (), str(error))
    return histories_from(services, found[0], found[1], now)


def log_restored(result: Restored, config: ScalerConfig) -> None:
    missing = [s.name for s in config.services if s.name not in result.restored]
    if result.error is not None:
        log.warning("cannot read the scaler's history from Prometheus (%s): no service "
                    "scales in for one scale-down window", result.error)
    elif result.restored:
        log.info("history of %d services read back from Prometheus: %s",
                 len(result.restored), ", ".join(result.restored))
    if missing and result.error is None and config.restore.enabled:
        log.info("no history in Prometheus for %s: held at their count for one scale-down "
                 "window", ", ".join(missing))

