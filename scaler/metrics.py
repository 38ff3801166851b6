"""The scaler's own /metrics: families built fresh from its state at each scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter import metric_names as m
from exporter.families import family
from scaler.cycle import Scaler


class ScalerCollector:
    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        desired = family(m.SCALER_DESIRED)
        recommended = family(m.SCALER_RECOMMENDED)
        paused = family(m.SCALER_PAUSED)
        lease = family(m.SCALER_LEASE_HELD)
        current = family(m.SCALER_CURRENT)
        low = family(m.SCALER_MIN)
        high = family(m.SCALER_MAX)
        value = family(m.SCALER_RULE_VALUE)
        recommendation = family(m.SCALER_RULE_RECOMMENDATION)
        decisions = family(m.SCALER_DECISIONS)
        errors = family(m.SCALER_ERRORS)
        last_success = family(m.SCALER_LAST_SUCCESS)
        duration = family(m.SCALER_EVALUATION_DURATION)
        restarts = family(m.SCALER_WORKER_RESTARTS)
        # From the config, so dashboards and the "pinned at max" alert can compare with them.
        for service in self._scaler.config.services:
            low.add_metric([service.name], service.limits.min)
            high.add_metric([service.name], service.limits.max)
        for name, total in sorted(self._scaler.fleet.restarts().items()):
            restarts.add_metric([name], total)
        with self._scaler.lock:
            for name, state in sorted(self._scaler.states.items()):
                if state.decision is not None:
                    desired.add_metric([name], state.decision.count)
                    if state.decision.recommendation is not None:
                        recommended.add_metric([name], state.decision.recommendation)
                if state.counts is not None:
                    paused.add_metric([name], 1.0 if state.paused is not None else 0.0)
                if state.counts is not None:
                    for label, count in (("desired", state.counts.desired),
                                         ("running", state.counts.running),
                                         ("pending", state.counts.pending)):
                        current.add_metric([name, label], count)
                if state.evaluation is not None:
                    for outcome in state.evaluation.rules:
                        if outcome.value is not None:
                            value.add_metric([name, outcome.rule], outcome.value)
                        if outcome.recommendation is not None:
                            recommendation.add_metric([name, outcome.rule],
                                                      outcome.recommendation)
                for (direction, reason), total in sorted(state.decisions.items()):
                    decisions.add_metric([name, direction, reason], total)
                for kind, total in sorted(state.errors.items()):
                    errors.add_metric([name, kind], total)
                if state.last_success is not None:
                    last_success.add_metric([name], state.last_success)
            if self._scaler.last_duration is not None:
                duration.add_metric([], self._scaler.last_duration)
            if self._scaler.lease_held is not None:
                lease.add_metric([], 1.0 if self._scaler.lease_held else 0.0)
        yield from (desired, recommended, current, low, high, value, recommendation, decisions,
                    errors, last_success, duration, restarts, paused, lease)
