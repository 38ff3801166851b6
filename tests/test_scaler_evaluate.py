"""From query results to decision inputs: table tests."""

from __future__ import annotations

import math

import pytest

from scaler.config import DEFAULT_HEALTH_QUERY as HEALTH
from scaler.config import parse_config
from scaler.decision import Counts, Inputs
from scaler.evaluate import RuleOutcome, SampleSet, evaluate, explain_missing, queries_of
from scaler.prometheus import QueryError, Sample

CONFIG = """
prometheus: {url: 'http://p:9090'}
services:
  - name: w
    backend: {cluster: c, service: s, region: r}
    min: 0
    max: 50
    activation_query: activation
    scale_down_guard: guard
    rules:
      - {name: backlog, type: per_worker, query: backlog, target: 10}
      - {name: drain, type: drain, query: backlog, throughput_query: throughput,
         arrival_query: arrival, drain_within: 100s, startup_delay: 0s}
      - {name: age, type: threshold, query: age, above: 60, below: 5}
      - {name: several, type: expression, query: several, aggregate: max}
"""
SERVICE = parse_config(CONFIG, {}).services[0]
COUNTS = Counts(desired=3, running=2, pending=1)
GOOD = {"backlog": [95.0], "throughput": [0.5], "arrival": [1.0], "age": [30.0],
        "several": [2.0, 4.0], "activation": [1.0], "guard": [1.0]}


def results(table: dict) -> dict:
    """Plain values as unlabelled samples, as Prometheus returns for a scalar."""
    return {q: r if isinstance(r, Exception) else SampleSet([Sample({}, v) for v in r])
            for q, r in table.items()}


def test_queries_are_listed_once():
    assert queries_of(SERVICE) == ["backlog", "throughput", "arrival", "age", "several",
                                   "activation", "guard"]


def test_every_rule_recommends():
    evaluation = evaluate(SERVICE, results(GOOD), COUNTS)
    assert evaluation.rules == (
        RuleOutcome("backlog", 95.0, 10),
        RuleOutcome("drain", 95.0, 4),  # (95 + 1 * 100) / (0.5 * 100) = 3.9
        RuleOutcome("age", 30.0, 3),  # between the bounds: hold at desired
        RuleOutcome("several", 4.0, 4),
    )
    assert evaluation.inputs == Inputs((10, 4, 3, 4), failed=False, activation=True, guard=True)
    assert evaluation.errors == ()


@pytest.mark.parametrize(
    ("query", "result", "kind", "message"),
    [
        ("backlog", QueryError("timeout", "prometheus did not answer within 5s", query="backlog"),
         "timeout", "rule backlog: prometheus did not answer within 5s"),
        ("backlog", [], "no_data", "rule backlog: query returned no series"),
        ("backlog", [math.nan], "not_finite", "rule backlog: query returned nan"),
        ("age", [1.0, 2.0], "several_series",
         'rule age: query returned 2 series; set match_labels (e.g. {queue: "..."}, with '
         "`by (queue)` in the query) so the service reads its own series, or aggregate: "
         "sum or max"),
        ("throughput", [0.0], "bad_value", "rule drain: throughput must be > 0 (got 0)"),
    ],
)
def test_a_failed_rule_fails_the_service(query, result, kind, message):
    evaluation = evaluate(SERVICE, results({**GOOD, query: result}), COUNTS)
    assert evaluation.inputs.failed
    assert (kind, message) in evaluation.errors


def test_activation_and_guard_are_conditions():
    evaluation = evaluate(SERVICE, results({**GOOD, "activation": [0.0], "guard": []}), COUNTS)
    assert (evaluation.inputs.activation, evaluation.inputs.guard) == (False, False)
    assert not evaluation.inputs.failed


def test_a_guard_that_cannot_be_read_blocks_scale_in_without_failing_the_service():
    error = QueryError("http", "prometheus returned HTTP 500", query="guard")
    evaluation = evaluate(SERVICE, results({**GOOD, "guard": error}), COUNTS)
    assert evaluation.inputs.guard is False
    assert not evaluation.inputs.failed
    assert evaluation.errors == (("http", "scale_down_guard: prometheus returned HTTP 500"),)


def test_a_failed_activation_query_fails_the_service():
    error = QueryError("unreachable", "cannot reach prometheus", query="activation")
    evaluation = evaluate(SERVICE, results({**GOOD, "activation": error}), COUNTS)
    assert evaluation.inputs.failed
    assert evaluation.errors == (("unreachable", "activation_query: cannot reach prometheus"),)


GROUPED = """
prometheus: {url: 'http://p:9090'}
services:
  - name: "w-{{ ecs }}"
    # Service names (ECS's and ours) have no quote: the weird queue's service is named apart.
    for_each: [{queue: a, ecs: a}, {queue: b, ecs: b}, {queue: 'we"ird', ecs: weird}]
    match_labels: {queue: "{{ queue }}"}
    min: 0
    max: 50
    backend: {cluster: c, service: "s-{{ ecs }}", region: r}
    activation_query: sum by (queue) (waiting)
    rules:
      - {name: backlog, type: per_worker, query: sum by (queue) (backlog), target: 10}
      - {name: fleet, type: expression, query: fleet_floor, match_labels: {}}
      - {name: age, type: threshold, query: age, above: 60, match_labels: {queue: c},
         on_empty: zero}
"""
BY_QUEUE = {q: SampleSet(samples) for q, samples in {
    "sum by (queue) (backlog)": [Sample({"queue": "a"}, 45.0), Sample({"queue": "b"}, 5.0),
                                 Sample({"queue": 'we"ird'}, 101.0)],
    "sum by (queue) (waiting)": [Sample({"queue": "a"}, 1.0), Sample({"queue": "b"}, 0.0)],
    "fleet_floor": [Sample({}, 2.0)],
    "age": [Sample({"queue": "a"}, 90.0)],
    HEALTH: [Sample({"instance": "exporter:9808"}, 1.0)],
}.items()}


def test_one_grouped_query_serves_every_service_its_own_series():
    services = parse_config(GROUPED, {}).services
    assert {q for s in services for q in queries_of(s)} == set(BY_QUEUE)
    a, b, x = (evaluate(s, BY_QUEUE, COUNTS) for s in services)
    assert [o.value for o in a.rules] == [45.0, 2.0, 0.0]
    assert a.inputs == Inputs((5, 2, 3), failed=False, activation=True, guard=None)
    assert [o.value for o in b.rules] == [5.0, 2.0, 0.0]
    assert b.inputs.activation is False
    # Label values are compared as they are, never escaped as PromQL would need.
    assert services[2].rules[0].match_labels == (("queue", 'we"ird'),)
    assert x.rules[0].recommendation == 11
    assert x.errors == ()  # activation: no series for x is "not active", not an error
    assert x.inputs.activation is False


def test_a_label_value_missing_from_a_grouped_result_names_the_selector():
    service = parse_config(GROUPED, {}).services[1]
    missing = {**BY_QUEUE, "sum by (queue) (backlog)": SampleSet([Sample({"queue": "a"}, 45.0)])}
    evaluation = evaluate(service, missing, COUNTS)
    assert evaluation.inputs.failed
    assert evaluation.errors == (
        ("no_data", 'rule backlog: query returned no series matching {queue="b"}'),)
    doubled = {**BY_QUEUE, "sum by (queue) (backlog)": SampleSet([
        Sample({"queue": "b", "shard": "1"}, 1.0), Sample({"queue": "b", "shard": "2"}, 2.0)])}
    assert evaluate(service, doubled, COUNTS).errors == (
        ("several_series", 'rule backlog: query returned 2 series matching {queue="b"}; '
                           "narrow the query (several jobs or instances?) or set aggregate: "
                           "sum or max"),)
    weird = parse_config(GROUPED, {}).services[2]
    gone = {**BY_QUEUE, "sum by (queue) (backlog)": SampleSet([])}
    assert evaluate(weird, gone, COUNTS).errors == (
        ("no_data", 'rule backlog: query returned no series matching {queue="we\\"ird"}'),)


def test_series_without_the_selected_label_are_an_error_even_with_on_empty_zero():
    service = parse_config(GROUPED, {}).services[0]
    ungrouped = {**BY_QUEUE, "age": SampleSet([Sample({}, 90.0)]),
                 "sum by (queue) (waiting)": SampleSet([Sample({"job": "x"}, 3.0)])}
    evaluation = evaluate(service, ungrouped, COUNTS)
    hint = ("query returned series without the label(s) {} that match_labels selects on; "
            "keep them (by (...)) or set match_labels: {{}} on the rule")
    assert evaluation.errors == (
        ("no_label", "rule age: " + hint.format("queue")),
        ("no_label", "activation_query: " + hint.format("queue")),
    )
    assert evaluation.inputs.failed


def test_an_empty_label_value_selects_series_without_that_label():
    samples = SampleSet([Sample({"queue": "a"}, 1.0), Sample({"queue": "a", "shard": "2"}, 2.0)])
    assert samples.values((("queue", "a"), ("shard", ""))) == [1.0]
    assert not samples.lacks((("shard", ""),))


def test_every_query_of_a_service_reads_through_its_selector():
    text = """
prometheus: {url: 'http://p:9090'}
services:
  - name: w
    match_labels: {queue: a}
    min: 0
    max: 50
    backend: {cluster: c, service: s, region: r}
    scale_down_guard: idle
    rules:
      - {name: drain, type: drain, query: depth, throughput_query: speed, arrival_query: arrivals,
         drain_within: 100s}
"""
    service = parse_config(text, {}).services[0]

    def by_queue(a: float, b: float) -> SampleSet:
        return SampleSet([Sample({"queue": "a"}, a), Sample({"queue": "b"}, b)])

    found = {"depth": by_queue(100, 5000), "speed": by_queue(1, 0.01),
             "arrivals": by_queue(0, 50), "idle": by_queue(0, 1)}
    evaluation = evaluate(service, found, COUNTS)
    assert evaluation.rules == (RuleOutcome("drain", 100.0, 1),)  # (100 + 0) / (1 * 100)
    assert evaluation.inputs.guard is False


def test_a_sample_set_answers_each_selector_from_its_own_index():
    samples = SampleSet([Sample({"queue": "a", "shard": "1"}, 1.0),
                         Sample({"queue": "a", "shard": "2"}, 2.0),
                         Sample({"queue": "b"}, 3.0)])
    assert samples.values(()) == [1.0, 2.0, 3.0]
    assert samples.values((("queue", "a"),)) == [1.0, 2.0]
    assert samples.values((("queue", "a"), ("shard", "2"))) == [2.0]
    assert samples.values((("queue", "b"), ("shard", "1"))) == []  # b has no shard label
    assert samples.values((("queue", "c"),)) == []


STARTUP_CONFIG = """
prometheus: {url: 'http://p:9090'}
services:
  - name: w
    backend: {cluster: c, service: s, region: r}
    min: 0
    max: 50
    rules:
      - {name: drain, type: drain, query: backlog, throughput: 30/min, drain_within: 100s,
         startup_delay: 40s}
"""


@pytest.mark.parametrize(
    ("counts", "workers"),
    [
        # 95 tasks, 0.5/s per worker, 100 s: a running worker drains 50, a new one 30.
        (Counts(desired=3, running=2, pending=1), 2),  # the two running suffice
        (Counts(desired=3, running=1, pending=2), 3),  # 1 + ceil(45 / 30): pending ones start late
        (Counts(desired=1, running=3, pending=0), 3),  # two of the three are being stopped
        (Counts(desired=3, running=0, pending=3), 4),  # ceil(95 / 30)
    ],
)
def test_drain_charges_the_startup_delay_only_to_workers_not_yet_running(counts, workers):
    service = parse_config(STARTUP_CONFIG, {}).services[0]
    evaluation = evaluate(service, results({"backlog": [95.0]}), counts)
    assert evaluation.rules == (RuleOutcome("drain", 95.0, workers),)


ZERO = """
prometheus: {url: 'http://p:9090'}
services:
  - name: "w-{{ queue }}"
    for_each: [{queue: a}, {queue: b}]
    match_labels: {queue: "{{ queue }}"}
    min: 0
    max: 50
    backend: {cluster: c, service: "s-{{ queue }}", region: r}
    rules:
      - {name: backlog, type: per_worker, query: sum by (queue) (backlog), target: 10,
         on_empty: zero}
  - name: single
    min: 0
    max: 50
    backend: {cluster: c, service: single, region: r}
    rules:
      - {name: backlog, type: per_worker, query: 'sum(backlog{queue="c"})', target: 10,
         on_empty: zero}
"""
REFUSED = "rule backlog: query returned no series{}; on_empty: zero does not apply: {}"


def zero_case(health: list[Sample] | Exception | None, backlog: list[Sample],
              text: str = ZERO) -> list[tuple[float | None, tuple]]:
    table: dict = {"sum by (queue) (backlog)": SampleSet(backlog),
                   'sum(backlog{queue="c"})': SampleSet([])}
    if health is not None:
        table[HEALTH] = health if isinstance(health, Exception) else SampleSet(health)
    return [(e.rules[0].value, e.errors) for e in
            (evaluate(s, table, COUNTS) for s in parse_config(text, {}).services)]


def test_on_empty_zero_reads_zero_only_while_the_source_is_healthy():
    # Healthy, and queue b has no series while queue a has: b is idle, 0.
    assert zero_case([Sample({"instance": "e:1"}, 1.0), Sample({"instance": "e:2"}, 1.0)],
                     [Sample({"queue": "a"}, 20.0)]) == [(20.0, ()), (0.0, ()), (0.0, ())]


@pytest.mark.parametrize(("health", "why"), [
    # An exporter that cannot read its broker says so.
    ([Sample({"instance": "e:1"}, 1.0), Sample({"instance": "e:2"}, 0.0)],
     "health_query is 0 (an exporter cannot read its broker?)"),
    # An exporter that is down has no series at all (stale in Prometheus).
    ([], "health_query returned no series (an exporter is down, gone or failing?)"),
    ([Sample({}, math.nan)], "health_query is 0 (an exporter cannot read its broker?)"),
    (QueryError("timeout", "prometheus did not answer within 5s", query=HEALTH),
     "health_query could not be read (prometheus did not answer within 5s)"),
])
def test_on_empty_zero_holds_while_the_source_is_not_known_to_be_healthy(health, why):
    found = zero_case(health, [Sample({"queue": "a"}, 20.0)])
    assert found == [
        (20.0, ()),
        (None, (("no_data", REFUSED.format(' matching {queue="b"}', why)),)),
        (None, (("no_data", REFUSED.format("", why)),)),
    ]


def test_a_grouped_query_with_no_series_for_anyone_holds_even_when_healthy():
    found = zero_case([Sample({}, 1.0)], [])
    why = "the query returned no series for any service"
    assert found[:2] == [
        (None, (("no_data", REFUSED.format(' matching {queue="a"}', why)),)),
        (None, (("no_data", REFUSED.format(' matching {queue="b"}', why)),)),
    ]
    # An ungrouped query's empty answer is this service's alone: the health query decides.
    assert found[2] == (0.0, ())


def test_health_query_false_reads_empty_as_zero_and_is_never_sent():
    text = ZERO.replace("services:", "health_query: false\nservices:")
    services = parse_config(text, {}).services
    assert all(HEALTH not in queries_of(s) for s in services)
    assert zero_case(None, [Sample({"queue": "a"}, 20.0)], text) == [
        (20.0, ()), (0.0, ()), (0.0, ())]


def test_the_health_query_is_sent_only_for_services_that_read_empty_as_zero():
    services = parse_config(ZERO + """
  - name: holds
    min: 0
    max: 5
    backend: {cluster: c, service: holds, region: r}
    health_query: up{job="custom"} == 1
    rules:
      - {name: backlog, type: per_worker, query: 'sum(backlog{queue="d"})', target: 10}
""", {}).services
    assert [HEALTH in queries_of(s) for s in services] == [True, True, True, False]
    assert 'up{job="custom"} == 1' not in queries_of(services[3])


def test_no_series_names_the_metrics_prometheus_never_stored():
    service = parse_config(GROUPED, {}).services[1]
    missing = {**BY_QUEUE, "sum by (queue) (backlog)": SampleSet([Sample({"queue": "a"}, 1.0)])}
    evaluation = evaluate(service, missing, COUNTS)
    explained = explain_missing(service, evaluation, frozenset({"waiting", "fleet_floor"}))
    message = ('rule backlog: query returned no series matching {queue="b"}; the metric '
               "backlog does not exist in Prometheus (no series of that name was ever "
               "stored: a typo, or a target or recording rule that is missing)")
    assert explained.errors == (("no_data", message),)
    assert explained.rules[0].error == message
    assert explained.inputs == evaluation.inputs
    # A name Prometheus holds: the queue is just not there; the message says nothing more.
    assert explain_missing(service, evaluation, frozenset({"backlog"})) == evaluation
