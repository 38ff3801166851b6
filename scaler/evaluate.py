"""From query results to the decision core's inputs, for one service: pure.

Queries are run elsewhere (once each per cycle, however many rules share
them); this module only reads their results, so every way a result can be
wrong is a table test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scaler.config import RuleConfig, ServiceConfig
from scaler.decision import Counts, Inputs
from scaler.rules import Drain, RuleError, reduce_result

# A query's result: the values Prometheus returned, or why there are none.
Result = Sequence[float] | Exception


@dataclass(frozen=True)
class RuleOutcome:
    rule: str
    value: float | None
    recommendation: int | None
    error_kind: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Evaluation:
    rules: tuple[RuleOutcome, ...]
    inputs: Inputs
    errors: tuple[tuple[str, str], ...]  # (kind, one-line message), rule errors included


def queries_of(service: ServiceConfig) -> list[str]:
    """Every PromQL expression the service needs, each once."""
    found: list[str] = []
    for rule in service.rules:
        found += [q for q in (rule.query, rule.throughput_query, rule.arrival_query) if q]
    found += [q for q in (service.activation_query, service.scale_down_guard) if q]
    return list(dict.fromkeys(found))


def _value(results: Mapping[str, Result], query: str, rule: RuleConfig) -> float:
    result = results.get(query)
    if result is None:
        raise RuleError("not_run", "query was not run")
    if isinstance(result, Exception):
        raise RuleError(getattr(result, "kind", "query"), str(result))
    return reduce_result(result, rule.aggregate, rule.on_empty)


def _rule(rule: RuleConfig, results: Mapping[str, Result], counts: Counts) -> RuleOutcome:
    try:
        value = _value(results, rule.query, rule)
        if isinstance(rule.rule, Drain):
            throughput = rule.throughput
            if rule.throughput_query is not None:
                throughput = _value(results, rule.throughput_query, rule)
            arrival = 0.0
            if rule.arrival_query is not None:
                arrival = _value(results, rule.arrival_query, rule)
            assert throughput is not None
            recommendation = rule.rule.recommend(value, throughput, arrival)
        else:
            recommendation = rule.rule.recommend(value, counts.desired, counts.pending)
    except RuleError as error:
        return RuleOutcome(rule.name, None, None, error.kind, f"rule {rule.name}: {error}")
    return RuleOutcome(rule.name, value, recommendation)


def _truth(results: Mapping[str, Result], query: str) -> bool:
    """A query used as a condition: true when it returns a non-zero number."""
    result = results.get(query)
    if result is None or isinstance(result, Exception):
        raise RuleError(getattr(result, "kind", "not_run"), str(result or "query was not run"))
    values = [v for v in result if not math.isnan(v)]
    return any(v != 0 for v in values)


def evaluate(service: ServiceConfig, results: Mapping[str, Result], counts: Counts) -> Evaluation:
    outcomes = tuple(_rule(rule, results, counts) for rule in service.rules)
    errors = [(o.error_kind, o.error) for o in outcomes if o.error_kind and o.error]
    failed = bool(errors)
    activation: bool | None = None
    if service.activation_query is not None:
        try:
            activation = _truth(results, service.activation_query)
        except RuleError as error:
            errors.append((error.kind, f"activation_query: {error}"))
            failed = True
    guard: bool | None = None
    if service.scale_down_guard is not None:
        try:
            guard = _truth(results, service.scale_down_guard)
        except RuleError as error:
            # Unknown is not yes: scale-in waits until the guard can be read.
            errors.append((error.kind, f"scale_down_guard: {error}"))
            guard = False
    recommendations = tuple(o.recommendation for o in outcomes if o.recommendation is not None)
    return Evaluation(
        outcomes, Inputs(recommendations, failed=failed, activation=activation, guard=guard),
        tuple(errors),
    )
