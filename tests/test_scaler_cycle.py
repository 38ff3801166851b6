"""One evaluation cycle end to end, ECS through moto, queries from a table."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from exporter import metric_names as m
from scaler.config import parse_config
from scaler.cycle import Fleet, Scaler
from scaler.ecs import PAUSE_TAG, ecs_client
from scaler.metrics import ScalerCollector
from scaler.prometheus import QueryError, Sample
from tests.aws import CLUSTER, REGION, create_service, desired_count
from tests.scrape import collect, value

CONFIG = f"""
prometheus: {{url: 'http://p:9090'}}
interval: 1s
services:
  - name: "w-{{{{ item }}}}"
    for_each: [a, b]
    backend: {{cluster: {CLUSTER}, service: "celery-{{{{ item }}}}", region: {REGION}}}
    min: 1
    max: 8
    rules:
      - {{name: backlog, type: per_worker, query: 'backlog{{q="{{{{ item }}}}"}}', target: 10}}
    behavior:
      scale_down: {{stabilization_window: 0s}}
"""


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Queries:
    """Prometheus as a table: query -> values, or an exception to raise."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, promql: str) -> Sequence[Sample]:
        self.asked.append(promql)
        result = self.table[promql]
        if isinstance(result, Exception):
            raise result
        return [v if isinstance(v, Sample) else Sample({}, v) for v in result]


def make(ecs: Any, queries: Queries, *, dry_run: bool = False, text: str = CONFIG,
         clock: Clock | None = None) -> Scaler:
    config = parse_config(text, {})
    fleet = Fleet(config.services, lambda region, endpoint: ecs)
    return Scaler(config, queries, fleet, clock=clock or Clock(), timer=Clock(),
                  dry_run=dry_run)


@pytest.fixture
def services(ecs: Any) -> Any:
    create_service(ecs, "celery-a", 1)
    create_service(ecs, "celery-b", 1)
    return ecs


def test_a_cycle_scales_each_service_by_its_own_rules(services):
    queries = Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [0.0]})
    scaler = make(services, queries)
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()

    assert [(o.service, o.before, o.after, o.reason, o.applied) for o in outcomes] == [
        ("w-a", 1, 5, "ScaleUp", True), ("w-b", 1, 1, "AtMin", False)]
    assert desired_count(services, "celery-a") == 5
    assert sorted(queries.asked) == ['backlog{q="a"}', 'backlog{q="b"}']

    families = list(ScalerCollector(scaler).collect())
    declared = {spec.name.removesuffix("_total"): spec for spec in m.SCALER_METRICS}
    assert {f.name: f.documentation for f in families} == {
        name: spec.help for name, spec in declared.items()}
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_desired_replicas", service="w-a") == 5
    assert value(samples, "taskqueue_scaler_current_replicas", service="w-a",
                 state="desired") == 1
    assert value(samples, "taskqueue_scaler_min_replicas", service="w-a") == 1
    assert value(samples, "taskqueue_scaler_max_replicas", service="w-a") == 8
    assert value(samples, "taskqueue_scaler_rule_value", service="w-a", rule="backlog") == 45
    assert value(samples, "taskqueue_scaler_rule_recommendation", service="w-a",
                 rule="backlog") == 5
    assert value(samples, "taskqueue_scaler_decisions_total", service="w-a", direction="up",
                 reason="ScaleUp") == 1
    assert value(samples, "taskqueue_scaler_last_success_timestamp_seconds", service="w-a") == 1000


def test_one_grouped_query_is_sent_once_for_every_service(services):
    grouped = CONFIG.replace("""'backlog{q="{{ item }}"}'""", "'sum by (q) (backlog)'").replace(
        "    min: 1\n", '    min: 1\n    match_labels: {q: "{{ item }}"}\n')
    queries = Queries({"sum by (q) (backlog)": [Sample({"q": "b"}, 21.0),
                                                 Sample({"q": "a"}, 45.0)]})
    scaler = make(services, queries, text=grouped)
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()
    assert queries.asked == ["sum by (q) (backlog)"]
    assert [(o.service, o.after, o.reason) for o in outcomes] == [
        ("w-a", 5, "ScaleUp"), ("w-b", 3, "ScaleUp")]
    assert (desired_count(services, "celery-a"), desired_count(services, "celery-b")) == (5, 3)


def test_dry_run_decides_but_never_changes_a_service(services):
    scaler = make(services, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [45.0]}),
                  dry_run=True)
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()
    assert [(o.after, o.applied) for o in outcomes] == [(5, False), (5, False)]
    assert desired_count(services, "celery-a") == 1


def test_a_failing_query_holds_only_its_service(services):
    services.update_service(cluster=CLUSTER, service="celery-a", desiredCount=6)
    error = QueryError("unreachable", "cannot reach prometheus", query='backlog{q="a"}')
    scaler = make(services, Queries({'backlog{q="a"}': error, 'backlog{q="b"}': [30.0]}))
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()
    assert [(o.before, o.after, o.reason) for o in outcomes] == [(6, 6, "NoData"),
                                                                   (1, 3, "ScaleUp")]
    assert desired_count(services, "celery-a") == 6
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_errors_total", service="w-a", kind="unreachable") == 1
    assert value(samples, "taskqueue_scaler_last_success_timestamp_seconds", service="w-a") is None


def test_a_missing_ecs_service_is_counted_and_the_others_still_scale(ecs):
    create_service(ecs, "celery-b", 1)  # celery-a does not exist
    scaler = make(ecs, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [45.0]}))
    try:
        first = scaler.run_once()
        second = scaler.run_once()  # and again: the loop goes on
    finally:
        scaler.close()
    assert [(o.service, o.after, o.reason) for o in first + second] == [
        ("w-a", None, "NoData"), ("w-b", 5, "ScaleUp"), ("w-a", None, "NoData"),
        ("w-b", 5, "Hold")]
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_errors_total", service="w-a",
                 kind="backend_not_found") == 2


def test_a_refused_update_is_not_counted_as_made(services, monkeypatch):
    scaler = make(services, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [10.0]}))
    client = services

    def denied(**kwargs: Any) -> None:
        from botocore.exceptions import ClientError
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                          "UpdateService")

    monkeypatch.setattr(client, "update_service", denied)
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()
    assert [(o.after, o.applied) for o in outcomes] == [(5, False), (1, False)]
    assert scaler.states["w-a"].history.changes == ()
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_errors_total", service="w-a",
                 kind="backend_denied") == 1


def test_a_clock_drives_stabilization_across_cycles(services):
    text = CONFIG.replace("stabilization_window: 0s", "stabilization_window: 60s")
    clock = Clock()
    queries = Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [0.0]})
    scaler = make(services, queries, text=text, clock=clock)
    try:
        assert scaler.run_once()[0].after == 5
        queries.table['backlog{q="a"}'] = [0.0]
        clock.now += 30
        assert (scaler.run_once()[0].after, scaler.states["w-a"].decision.reason) == (
            5, "ScaleDownStabilized")
        clock.now += 31
        assert scaler.run_once()[0].after == 1
    finally:
        scaler.close()
    assert desired_count(services, "celery-a") == 1


def test_fleet_makes_one_client_per_region_and_endpoint(aws_env):
    text = CONFIG.replace(f"region: {REGION}}}", "region: \"{{ 'eu-west-1' if item == 'a' "
                                                 f"else '{REGION}' }}}}\"}}")
    config = parse_config(text, {})
    made: list[tuple[str, str | None]] = []

    def factory(region: str, endpoint: str | None) -> Any:
        made.append((region, endpoint))
        return ecs_client(region, endpoint)

    Fleet(config.services, factory)
    assert made == [("eu-west-1", None), (REGION, None)]


def test_a_loop_with_no_finished_cycle_for_too_long_is_stalled(services):
    config = parse_config(CONFIG, {})  # interval 1s, query timeout 10s
    timer = Clock(0.0)
    scaler = Scaler(config, Queries({'backlog{q="a"}': [1.0], 'backlog{q="b"}': [1.0]}),
                    Fleet(config.services, lambda region, endpoint: services),
                    clock=Clock(), timer=timer)
    try:
        # 3 intervals + the cycle's query deadline (2 x 10 s) + 60 s.
        assert scaler.stall_after == 83
        timer.now = 83.0
        assert scaler.stalled() is None
        timer.now = 90.0
        assert scaler.stalled() == (
            "no evaluation cycle has finished in the 90s since start-up (interval 1s)")
        scaler.run_once()
        assert scaler.stalled() is None
        timer.now = 90.0 + 100
        assert scaler.stalled() == "the last evaluation cycle finished 100s ago (interval 1s)"
    finally:
        scaler.close()


def test_queries_still_out_at_the_deadline_hold_their_service_and_the_cycle_ends(services):
    answer = threading.Event()

    def slow(promql: str) -> list[Sample]:
        if promql == 'backlog{q="a"}':
            answer.wait(timeout=30)
        return [Sample({}, 45.0)]

    text = CONFIG.replace("prometheus: {url: 'http://p:9090'}",
                          "prometheus: {url: 'http://p:9090', timeout: 200ms}").replace(
        "interval: 1s", "interval: 100ms")
    scaler = make(services, slow, text=text)  # type: ignore[arg-type]
    try:
        assert scaler.query_deadline == 0.4
        outcomes = scaler.run_once()
        state = scaler.states["w-a"]
    finally:
        answer.set()
        scaler.close()
    assert [(o.service, o.after, o.reason) for o in outcomes] == [
        ("w-a", 1, "NoData"), ("w-b", 5, "ScaleUp")]
    assert state.evaluation is not None
    assert state.evaluation.errors == (
        ("timeout", "rule backlog: no answer within the evaluation's 0.4s deadline for queries"),)


def test_an_overflowing_rule_holds_its_own_service_and_the_others_scale(services, caplog):
    text = CONFIG.replace("target: 10}", "target: 0.1}")
    queries = Queries({'backlog{q="a"}': [1e308], 'backlog{q="b"}': [0.45]})
    scaler = make(services, queries, text=text)
    try:
        first = scaler.run_once()
        second = scaler.run_once()
    finally:
        scaler.close()
    assert [(o.service, o.after, o.reason) for o in first] == [
        ("w-a", 1, "NoData"), ("w-b", 5, "ScaleUp")]
    assert first[0].problems == ("rule backlog: the rule's arithmetic gave inf workers",)
    assert second[0].problems == first[0].problems
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_errors_total", service="w-a", kind="not_finite") == 2
    # Logged when it starts, not again while it lasts.
    assert caplog.text.count("the rule's arithmetic gave inf workers") == 1


def test_an_exception_in_one_services_evaluation_is_that_services_error(services, monkeypatch,
                                                                       caplog):
    import scaler.cycle as cycle

    real = cycle.evaluate

    def broken(service, results, counts):
        if service.name == "w-a":
            raise ZeroDivisionError("float division by zero")
        return real(service, results, counts)

    monkeypatch.setattr(cycle, "evaluate", broken)
    scaler = make(services, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [45.0]}))
    try:
        outcomes = scaler.run_once() + scaler.run_once()
    finally:
        scaler.close()
    assert [(o.service, o.after, o.reason, o.problems) for o in outcomes] == [
        ("w-a", 1, "NoData", ("evaluation failed: ZeroDivisionError: float division by zero",)),
        ("w-b", 5, "ScaleUp", ()),
        ("w-a", 1, "NoData", ("evaluation failed: ZeroDivisionError: float division by zero",)),
        ("w-b", 5, "Hold", ())]
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_errors_total", service="w-a", kind="internal") == 2
    assert caplog.text.count("Traceback") == 1


class FakeLease:
    identity = "me"

    def __init__(self, held: bool, until: float | None = None) -> None:
        self.status = type("Status", (), {"held": held, "holder": "me" if held else "other",
                                          "until": until, "error": None})()
        self.released = False

    def hold(self, now: float) -> Any:
        return self.status

    def release(self) -> None:
        self.released = True


@pytest.mark.parametrize(("held", "until", "note"), [
    (False, None, "standby: lease held by other"),
    (True, 999.0, "standby: the lease's safe time ran out during the evaluation"),
    # 5 s of safe time left, but one UpdateService may take 6 (the update budget).
    (True, 1005.0, "standby: the lease's safe time ran out during the evaluation"),
    (True, 1007.0, None),
])
def test_only_the_lease_holder_changes_services_while_its_lease_is_safe(services, held, until,
                                                                       note):
    config = parse_config(CONFIG, {})
    lease = FakeLease(held, until)
    scaler = Scaler(config, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [10.0]}),
                    Fleet(config.services, lambda region, endpoint: services), clock=Clock(),
                    timer=Clock(), lease=lease, update_budget=6.0)  # type: ignore[arg-type]
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()
    assert lease.released
    applied = note is None
    assert [(o.after, o.applied, o.note) for o in outcomes] == [(5, applied, note),
                                                                 (1, False, None)]
    assert desired_count(services, "celery-a") == (5 if applied else 1)
    samples = collect(ScalerCollector(scaler))
    assert value(samples, "taskqueue_scaler_lease_held") == (1 if held else 0)
    # A standby remembers what the rules said, not a change it did not make.
    assert scaler.states["w-a"].history.changes == (((1000.0, 4),) if applied else ())
    assert scaler.states["w-a"].history.recommendations == ((1000.0, 5),)


def test_a_paused_service_is_held_by_its_tag_and_resumes_without_it(services, caplog):
    caplog.set_level("INFO", logger="scaler.cycle")
    arn = services.describe_services(cluster=CLUSTER, services=["celery-a"])["services"][0][
        "serviceArn"]
    services.tag_resource(resourceArn=arn, tags=[{"key": PAUSE_TAG, "value": "true"}])
    clock = Clock()
    scaler = make(services, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [10.0]}),
                  clock=clock)
    try:
        first = scaler.run_once()
        assert (first[0].after, first[0].reason, first[0].note) == (1, "Paused", "paused")
        assert value(collect(ScalerCollector(scaler)), "taskqueue_scaler_paused",
                     service="w-a") == 1
        assert value(collect(ScalerCollector(scaler)), "taskqueue_scaler_paused",
                     service="w-b") == 0
        # The rules are still evaluated and exported.
        assert value(collect(ScalerCollector(scaler)), "taskqueue_scaler_rule_recommendation",
                     service="w-a", rule="backlog") == 5
        services.tag_resource(resourceArn=arn, tags=[{"key": PAUSE_TAG, "value": "3"}])
        clock.now += 1
        assert (scaler.run_once()[0].after, desired_count(services, "celery-a")) == (3, 3)
        services.untag_resource(resourceArn=arn, tagKeys=[PAUSE_TAG])
        clock.now += 1
        assert (scaler.run_once()[0].after, desired_count(services, "celery-a")) == (5, 5)
    finally:
        scaler.close()
    assert "service=w-a paused by the tag taskqueue-autoscaler:paused=true: held where it " \
           "is (1), rules still evaluated" in caplog.text
    assert "service=w-a paused by the tag taskqueue-autoscaler:paused=3: held at 3" in caplog.text
    assert caplog.text.count("service=w-a resumed") == 1
    assert "service=w-b resumed" not in caplog.text  # never paused: nothing to say


def test_a_manual_raise_is_kept_for_the_scale_down_window(services):
    text = CONFIG.replace("stabilization_window: 0s", "stabilization_window: 60s")
    clock = Clock()
    scaler = make(services, Queries({'backlog{q="a"}': [15.0], 'backlog{q="b"}': [10.0]}),
                  text=text, clock=clock)
    try:
        assert scaler.run_once()[0].after == 2
        services.update_service(cluster=CLUSTER, service="celery-a", desiredCount=7)  # by hand
        clock.now += 3
        held = scaler.run_once()[0]
        assert (held.before, held.after, held.reason) == (7, 7, "ScaleDownStabilized")
        clock.now += 58
        assert scaler.run_once()[0].after == 7
        clock.now += 2  # 60 s after the manual raise
        assert scaler.run_once()[0].after == 2
    finally:
        scaler.close()
    assert desired_count(services, "celery-a") == 2


def test_credentials_that_cannot_be_loaded_are_an_error_of_the_services_not_the_scaler(
        services):
    from botocore.exceptions import CredentialRetrievalError

    failing = [True]  # the task role's endpoint does not answer at first

    def factory(region: str, endpoint: str | None) -> Any:
        if failing[0]:
            raise CredentialRetrievalError(provider="container-role", error_msg="403")
        return services

    config = parse_config(CONFIG, {})
    scaler = Scaler(config, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [10.0]}),
                    Fleet(config.services, factory), clock=Clock(), timer=Clock())
    try:
        first = scaler.run_once()
        failing[0] = False
        second = scaler.run_once()
    finally:
        scaler.close()
    assert [(o.after, o.reason) for o in first] == [(None, "NoData"), (None, "NoData")]
    assert first[0].problems == (
        "cannot read the service, kind=no_credentials: workers/celery-a: creating the ECS "
        "client failed: AWS credentials could not be loaded (CredentialRetrievalError): give "
        "the scaler's ECS task a task role, or set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",)
    assert [(o.after, o.reason) for o in second] == [(5, "ScaleUp"), (1, "Hold")]


def test_an_exception_while_setting_one_service_is_that_services_error(services, monkeypatch):
    config = parse_config(CONFIG, {})
    fleet = Fleet(config.services, lambda region, endpoint: services)
    real = fleet.set_desired

    def set_desired(name: str, count: int) -> None:
        if name == "w-a":
            raise ValueError("illegal environment variable name")
        real(name, count)

    monkeypatch.setattr(fleet, "set_desired", set_desired)
    scaler = Scaler(config, Queries({'backlog{q="a"}': [45.0], 'backlog{q="b"}': [45.0]}),
                    fleet, clock=Clock(), timer=Clock())
    try:
        outcomes = scaler.run_once()
    finally:
        scaler.close()
    assert [(o.service, o.after, o.applied, o.problems) for o in outcomes] == [
        ("w-a", 5, False, ("cannot set desired count to 5: ValueError: illegal environment "
                           "variable name",)),
        ("w-b", 5, True, ())]
    assert (desired_count(services, "celery-a"), desired_count(services, "celery-b")) == (1, 5)
    assert scaler.states["w-a"].history.changes == ()
    assert value(collect(ScalerCollector(scaler)), "taskqueue_scaler_errors_total",
                 service="w-a", kind="internal") == 1
