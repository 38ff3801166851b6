"""From query results to the decision core's inputs, for one service: pure.

Queries are run elsewhere (once each per cycle, however many rules share
them); this module only reads their results, so every way a result can be
wrong is a table test.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from scaler import promql_syntax
from scaler.config import RuleConfig, Selector, ServiceConfig
from scaler.decision import Counts, Inputs
from scaler.prometheus import Sample
from scaler.rules import Drain, RuleError, reduce_result


class SampleSet:
    """A query's samples, indexed by label values on first use by a selector.

    One grouped query (`sum by (queue)`) is read by every service of a for_each:
    a lookup per service keeps a cycle linear in the number of services. The index
    is built without a lock: services are evaluated one after another, in one thread.
    """

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = tuple(samples)
        self._indexes: dict[tuple[str, ...], dict[tuple[str, ...], list[float]]] = {}
        self._carried: dict[tuple[str, ...], bool] = {}

    def values(self, selector: Selector) -> list[float]:
        if not selector:
            return [sample.value for sample in self.samples]
        names = tuple(name for name, _ in selector)
        index = self._indexes.get(names)
        if index is None:
            index = {}
            for sample in self.samples:
                # As in PromQL, a missing label matches the empty value.
                key = tuple(sample.labels.get(name, "") for name in names)
                index.setdefault(key, []).append(sample.value)
            self._indexes[names] = index
        return list(index.get(tuple(value for _, value in selector), ()))

    def lacks(self, selector: Selector) -> bool:
        """True when there are series and none carries every label the selector names."""
        names = tuple(name for name, value in selector if value)
        if not self.samples or not names:
            return False
        carried = self._carried.get(names)
        if carried is None:
            carried = any(all(n in s.labels for n in names) for s in self.samples)
            self._carried[names] = carried
        return not carried


# A query's result: the samples Prometheus returned, or why there are none.
Result = SampleSet | Exception


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
    if _reads_zero(service) and service.health_query:
        found.append(service.health_query)
    return list(dict.fromkeys(found))


def _reads_zero(service: ServiceConfig) -> bool:
    # Only an empty result read as 0 needs the health query: it is sent for those alone.
    return any(rule.on_empty == "zero" for rule in service.rules)


def _unhealthy(service: ServiceConfig, results: Mapping[str, Result]) -> str | None:
    """Why the service's data source is not known to be healthy, or None when it is.

    Healthy: the health query returned at least one series, and every one of them is a
    number other than 0 (by default: every exporter scraped and read its broker, and none
    of those seen in the last 10 minutes is missing).
    """
    query = service.health_query
    if query is None or not _reads_zero(service):
        return None
    result = results.get(query)
    if result is None or isinstance(result, Exception):
        return f"health_query could not be read ({result or 'not run'})"
    values = [sample.value for sample in result.samples]
    if not values:
        return "health_query returned no series (an exporter is down, gone or failing?)"
    if any(math.isnan(v) or v == 0 for v in values):
        return "health_query is 0 (an exporter cannot read its broker?)"
    return None


@functools.cache  # selectors are few and fixed by the config; this runs every evaluation
def _show_selector(selector: Selector) -> str:
    return "{" + ", ".join(f"{name}={json.dumps(value)}" for name, value in selector) + "}"


def _selected(results: Mapping[str, Result], query: str, selector: Selector) -> list[float]:
    """The values of the series this service reads from a query's result."""
    result = results.get(query)
    if result is None:
        raise RuleError("not_run", "query was not run")
    if isinstance(result, Exception):
        raise RuleError(getattr(result, "kind", "query"), str(result))
    if result.lacks(selector):
        # A query written without `by (label)` (or a scalar) under a service's
        # match_labels: never a silent "no series", which on_empty: zero reads as 0.
        labels = ", ".join(name for name, value in selector if value)
        raise RuleError("no_label", f"query returned series without the label(s) {labels} "
                                    "that match_labels selects on; keep them (by (...)) or "
                                    "set match_labels: {} on the rule")
    return result.values(selector)


def _value(results: Mapping[str, Result], query: str, rule: RuleConfig,
           unhealthy: str | None) -> float:
    values = _selected(results, query, rule.match_labels)
    # Name the selector: with one query for many services, "no series" most often
    # means this service's label value is missing from the result.
    where = f" matching {_show_selector(rule.match_labels)}" if rule.match_labels else ""
    refused = unhealthy
    result = results[query]
    if refused is None and rule.match_labels and isinstance(result, SampleSet) and not (
            result.samples):
        # A grouped query with no series for any service: the source is gone, not a queue.
        refused = "the query returned no series for any service"
    return reduce_result(values, rule.aggregate, rule.on_empty, where, refused)


def _rule(rule: RuleConfig, results: Mapping[str, Result], counts: Counts,
          unhealthy: str | None) -> RuleOutcome:
    try:
        value = _value(results, rule.query, rule, unhealthy)
        if isinstance(rule.rule, Drain):
            throughput = rule.throughput
            if rule.throughput_query is not None:
                throughput = _value(results, rule.throughput_query, rule, unhealthy)
            arrival = 0.0
            if rule.arrival_query is not None:
                arrival = _value(results, rule.arrival_query, rule, unhealthy)
            assert throughput is not None
            # Workers being stopped (desired below running) will not help drain.
            running = min(counts.running, counts.desired)
            recommendation = rule.rule.recommend(value, throughput, arrival, running)
        else:
            recommendation = rule.rule.recommend(value, counts.desired, counts.pending)
    except RuleError as error:
        return RuleOutcome(rule.name, None, None, error.kind, f"rule {rule.name}: {error}")
    return RuleOutcome(rule.name, value, recommendation)


def _truth(results: Mapping[str, Result], query: str, selector: Selector) -> bool:
    """A query used as a condition: true when it returns a non-zero number."""
    values = [v for v in _selected(results, query, selector) if not math.isnan(v)]
    return any(v != 0 for v in values)


def evaluate(service: ServiceConfig, results: Mapping[str, Result], counts: Counts) -> Evaluation:
    unhealthy = _unhealthy(service, results)
    outcomes = tuple(_rule(rule, results, counts, unhealthy) for rule in service.rules)
    errors = [(o.error_kind, o.error) for o in outcomes if o.error_kind and o.error]
    failed = bool(errors)
    activation: bool | None = None
    if service.activation_query is not None:
        try:
            activation = _truth(results, service.activation_query, service.match_labels)
        except RuleError as error:
            errors.append((error.kind, f"activation_query: {error}"))
            failed = True
    guard: bool | None = None
    if service.scale_down_guard is not None:
        try:
            guard = _truth(results, service.scale_down_guard, service.match_labels)
        except RuleError as error:
            # Unknown is not yes: scale-in waits until the guard can be read.
            errors.append((error.kind, f"scale_down_guard: {error}"))
            guard = False
    recommendations = tuple(o.recommendation for o in outcomes if o.recommendation is not None)
    return Evaluation(
        outcomes, Inputs(recommendations, failed=failed, activation=activation, guard=guard),
        tuple(errors),
    )


def missing_metrics(service: ServiceConfig, evaluation: Evaluation) -> dict[str, frozenset[str]]:
    """Per rule that found no series, the metric names its queries read."""
    by_rule = {rule.name: rule for rule in service.rules}
    found: dict[str, frozenset[str]] = {}
    for outcome in evaluation.rules:
        rule = by_rule.get(outcome.rule)
        if outcome.error_kind != "no_data" or rule is None:
            continue
        names: set[str] = set()
        for query in (rule.query, rule.throughput_query, rule.arrival_query):
            if query:
                names |= _metric_names(query)
        found[outcome.rule] = frozenset(names)
    return found


@functools.lru_cache(maxsize=4096)
def _metric_names(query: str) -> frozenset[str]:
    # Once per query and process: a persistent "no series" asks every evaluation, and
    # parsing (regex matchers included) is not free. The queries are fixed by the config.
    try:
        return promql_syntax.metric_names(query)
    except ValueError:
        return frozenset()  # the config checked it; nothing to add


def explain_missing(service: ServiceConfig, evaluation: Evaluation,
                    known: frozenset[str]) -> Evaluation:
    """The evaluation with each "no series" error naming the metrics its rule reads that
    Prometheus has never stored (`known`: every name it holds): a typo, or a target or
    recording rule that is missing, not an empty queue."""
    unknown = {rule: sorted(names - known)
               for rule, names in missing_metrics(service, evaluation).items()
               if names - known}
    if not unknown:
        return evaluation
    rules, errors = [], list(evaluation.errors)
    for outcome in evaluation.rules:
        names = unknown.get(outcome.rule)
        if names and outcome.error:
            shown = ", ".join(names)
            what = "metric" if len(names) == 1 else "metrics"
            verb = "does" if len(names) == 1 else "do"
            message = (f"{outcome.error}; the {what} {shown} {verb} not exist in Prometheus "
                       "(no series of that name was ever stored: a typo, or a target or "
                       "recording rule that is missing)")
            errors = [(kind, message if text == outcome.error else text)
                      for kind, text in errors]
            outcome = replace(outcome, error=message)
        rules.append(outcome)
    return replace(evaluation, rules=tuple(rules), errors=tuple(errors))
