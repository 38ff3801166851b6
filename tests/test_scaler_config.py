"""Scaler config: typed objects from YAML, and every error with its key path."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from scaler.config import (
    ConfigError,
    RestoreConfig,
    load_config,
    parse_config,
    promql_string,
)
from scaler.decision import Limits, Policy
from scaler.lease import LeaseConfig
from scaler.rules import Drain, PerWorker, Threshold

VALID = """
prometheus:
  url: http://prometheus:9090/
  timeout: 5s
  headers: {X-Scope-OrgID: team-a}
  bearer_token_env: PROM_TOKEN
interval: 10s
services:
  - name: "worker-{{ queue }}"
    for_each:
      - {queue: default}
      - {queue: emails}
    vars: {cluster: prod, per_worker: 20}
    backend:
      type: ecs
      cluster: "{{ cluster }}"
      service: "celery-{{ queue }}"
      region: eu-west-1
    min: 1
    max: 20
    rules:
      - name: backlog
        type: per_worker
        query: 'sum(taskqueue_queue_depth{queue="{{ queue }}"})'
        target: "{{ per_worker }}"
      - type: drain
        query: 'sum(taskqueue_queue_depth{queue="{{ queue }}"})'
        throughput: 2/min
        drain_within: 100m
        startup_delay: 1m
        arrival_query: 'sum(rate(taskqueue_tasks_received_total{queue="{{ queue }}"}[5m]))'
      - type: threshold
        query: 'max(taskqueue_oldest_task_age_seconds{queue="{{ queue }}"})'
        above: 60
        below: 5
        step: 2
    behavior:
      scale_down:
        stabilization_window: 10m
        policies: [{type: workers, value: 1, period: 1m}]
"""


def test_a_valid_config_with_for_each():
    config = parse_config(VALID, {"PROM_TOKEN": "s3cret"})

    assert config.interval == 10.0
    assert config.prometheus.url == "http://prometheus:9090"
    assert config.prometheus.timeout == 5.0
    assert config.prometheus.bearer_token == "s3cret"
    assert dict(config.prometheus.headers) == {"X-Scope-OrgID": "team-a"}
    assert [s.name for s in config.services] == ["worker-default", "worker-emails"]
    emails = config.services[1]
    assert (emails.backend.cluster, emails.backend.service, emails.backend.region) == (
        "prod", "celery-emails", "eu-west-1")
    assert emails.limits == Limits(min=1, max=20)
    backlog, drain, threshold = emails.rules
    assert backlog.name == "backlog" and backlog.rule == PerWorker(20.0)
    assert backlog.query == 'sum(taskqueue_queue_depth{queue="emails"})'
    assert drain.name == "drain-1" and drain.rule == Drain(6000.0, 60.0)
    assert drain.throughput == pytest.approx(2 / 60)
    assert threshold.rule == Threshold(60.0, 5.0, 2, None)
    assert emails.behavior.scale_down.stabilization_window == 600.0
    assert emails.behavior.scale_down.policies == (Policy("workers", 1.0, 60.0),)
    assert emails.behavior.scale_up.stabilization_window == 0.0  # defaults kept
    assert emails.behavior.tolerance == 0.1


def test_template_values_are_escaped_for_promql_strings():
    text = VALID.replace("{queue: emails}", "{queue: 'we\"ird\\q'}")  # YAML value: we"ird\q
    config = parse_config(text, {"PROM_TOKEN": "x"})
    assert config.services[1].rules[0].query == 'sum(taskqueue_queue_depth{queue="we\\"ird\\\\q"})'
    assert config.services[1].name == 'worker-we"ird\\q'  # names are not PromQL


@pytest.mark.parametrize(("value", "expected"), [
    ("plain", "plain"), ('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb"), (3, "3")])
def test_promql_string(value, expected):
    assert promql_string(value) == expected


def minimal(**service: str) -> str:
    fields = {
        "name": "w", "backend": "{cluster: c, service: s, region: r}", "min": "0", "max": "5",
        "rules": "[{type: per_worker, query: 'x', target: 10}]",
    }
    fields.update(service)
    body = "\n".join(f"    {k}: {v}" for k, v in fields.items() if v is not None)
    return f"prometheus: {{url: 'http://p:9090'}}\nservices:\n  -\n{body}\n"


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env or {})
    return caught.value.errors


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ({"rules": "[{type: per_worker, query: 'x', target: -5}]"},
         "services[0].rules[0].target: must be > 0 (got -5)"),
        ({"rules": "[{type: per_worker, query: 'x'}]"}, "services[0].rules[0].target: required"),
        ({"rules": "[{type: per_wroker, query: 'x', target: 1}]"},
         "services[0].rules[0].type: must be one of per_worker, drain, threshold, expression "
         "(got 'per_wroker')"),
        ({"rules": "[{type: per_worker, query: 'x', target: 1, targett: 2}]"},
         "services[0].rules[0].targett: unknown key"),
        ({"rules": "[{type: expression, query: 'x', aggregate: avg}]"},
         "services[0].rules[0].aggregate: must be one of sum, max (got 'avg')"),
        ({"rules": "[{type: expression, query: 'x', on_empty: zeroo}]"},
         "services[0].rules[0].on_empty: must be one of hold, zero (got 'zeroo')"),
        ({"rules": "[]"}, "services[0].rules: at least one rule is required"),
        ({"rules": None}, "services[0].rules: at least one rule is required"),
        ({"min": "3", "max": "2"}, "services[0].max: must be >= min (3) (got 2)"),
        ({"min": "-1"}, "services[0].min: must be >= 0 (got -1)"),
        ({"max": "2.5"}, "services[0].max: must be a whole number (got 2.5)"),
        ({"max": "lots"}, "services[0].max: must be a number (got 'lots')"),
        ({"max": None}, "services[0].max: required"),
        ({"fallback": "9"}, "services[0].fallback: must be <= max (5) (got 9)"),
        ({"min": "1", "activation_query": "x"},
         "services[0].activation_query: only applies when min is 0 (min is 1)"),
        ({"backend": "{cluster: c, service: s}"}, "services[0].backend.region: required"),
        ({"backend": "{type: k8s, cluster: c, service: s, region: r}"},
         "services[0].backend.type: must be one of ecs, local (got 'k8s')"),
        ({"backend": None}, "services[0].backend: required"),
        ({"rules": "[{type: drain, query: 'x', throughput: 2/min}]"},
         "services[0].rules[0].drain_within: required"),
        ({"rules": "[{type: drain, query: 'x', throughput: fast, drain_within: 5m}]"},
         "services[0].rules[0].throughput: must be a rate like 2/min, 0.5/s or 100/h "
         "(got 'fast')"),
        ({"rules": "[{type: drain, query: 'x', drain_within: 5m}]"},
         "services[0].rules[0].throughput: set exactly one of throughput and throughput_query"),
        ({"rules": "[{type: drain, query: 'x', throughput: 1, drain_within: 1m, "
                   "startup_delay: 2m}]"},
         "services[0].rules[0].startup_delay: must be shorter than drain_within (60s) (got 120s)"),
        ({"rules": "[{type: drain, query: 'x', throughput: 1, drain_within: soon}]"},
         "services[0].rules[0].drain_within: must be a duration like 30s, 5m or 1h "
         "(got 'soon')"),
        ({"rules": "[{type: threshold, query: 'x', step: 1}]"},
         "services[0].rules[0].above: set above, below or both"),
        ({"rules": "[{type: threshold, query: 'x', above: 5, below: 9}]"},
         "services[0].rules[0].below: must be lower than above (5) (got 9)"),
        ({"rules": "[{type: threshold, query: 'x', above: 5, factor: 1}]"},
         "services[0].rules[0].factor: must be > 1 (got 1)"),
        ({"rules": "[{type: threshold, query: 'x', above: 5, step: 1, factor: 2}]"},
         "services[0].rules[0].factor: set step or factor, not both"),
        ({"behavior": "{scale_down: {policies: [{type: pods, value: 1, period: 1m}]}}"},
         "services[0].behavior.scale_down.policies[0].type: must be one of workers, percent "
         "(got 'pods')"),
        ({"behavior": "{scale_up: {stabilization_window: -1}}"},
         "services[0].behavior.scale_up.stabilization_window: must be >= 0 (got -1)"),
        ({"behavior": "{tolerance: -0.1}"}, "services[0].behavior.tolerance: must be >= 0 "
                                            "(got -0.1)"),
        ({"behavior": "{scale_up: {select: most}}"},
         "services[0].behavior.scale_up.select: must be one of max, min, disabled (got 'most')"),
        ({"rules": "[{type: per_worker, query: 'x{q=\"{{ queu }}\"}', target: 1}]"},
         "services[0].rules[0].query: template: 'queu' is undefined"),
        ({"rules": "[{type: per_worker, query: 'x{q=\"{{ q }\"}', target: 1}]"},
         "services[0].rules[0].query: template syntax error: unexpected '}'"),
        ({"match_labels": "[queue, a]"},
         "services[0].match_labels: must map label names to values (got ['queue', 'a'])"),
        ({"match_labels": "{queue-name: a}"},
         "services[0].match_labels: label name 'queue-name' is not a valid Prometheus label name"),
        ({"rules": "[{type: per_worker, query: 'x', target: 1, match_labels: {q: [a]}}]"},
         "services[0].rules[0].match_labels: label q: value must be a quoted string "
         "(got ['a'])"),
        ({"match_labels": "{shard: 010}"},
         "services[0].match_labels: label shard: value must be a quoted string (got 8)"),
        ({"rules": "[{type: per_worker, query: '{{ ().__class__ }}', target: 1}]"},
         "services[0].rules[0].query: template: access to attribute '__class__' of 'tuple' "
         "object is unsafe."),
    ],
)
def test_service_errors(service, expected):
    assert errors_of(minimal(**service)) == [expected]


def test_every_error_is_reported_at_once():
    text = minimal(min="-1", max="x", rules="[{type: per_worker, query: 'x', target: 0}]")
    assert errors_of(text) == [
        "services[0].min: must be >= 0 (got -1)",
        "services[0].max: must be a number (got 'x')",
        "services[0].rules[0].target: must be > 0 (got 0)",
    ]


def test_template_errors_name_the_for_each_item():
    text = minimal(
        name='"w-{{ queue }}"', for_each="[{queue: a}, {other: b}]",
        rules="[{type: per_worker, query: 'x{q=\"{{ queue }}\"}', target: 1}]",
    )
    assert errors_of(text) == [
        "services[0].name: template: 'queue' is undefined (for_each other=b)",
        "services[0].rules[0].query: template: 'queue' is undefined (for_each other=b)",
    ]


def test_duplicate_service_names():
    text = minimal(name="w", for_each="[a, b]")
    assert errors_of(text) == ["services: duplicate service name 'w'"]


def test_plain_for_each_items_are_bound_to_item():
    config = parse_config(minimal(name='"w-{{ item }}"', for_each="[a, b]"), {})
    assert [s.name for s in config.services] == ["w-a", "w-b"]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("services: []", {}, ["prometheus: required"]),
        ("prometheus: {url: 'ftp://x'}\nservices: []", {},
         ["prometheus.url: must be an http:// or https:// URL (got 'ftp://x')"]),
        ("prometheus: {url: 'http://p', bearer_token_env: TOKEN}\nservices: []", {},
         ["prometheus.bearer_token_env: environment variable TOKEN is not set"]),
        ("prometheus: {url: 'http://p', timeout: 0}\nservices: []", {},
         ["prometheus.timeout: must be > 0 (got 0)"]),
        ("prometheus: {url: 'http://p', verify_tls: 'no'}\nservices: []", {},
         ["prometheus.verify_tls: must be true or false (got 'no')"]),
        ("prometheus: {url: 'http://p/?x=1'}\nservices: []", {},
         ["prometheus: prometheus url must not have a query string or fragment"]),
        ("prometheus: {url: 'http://p'}\ninterval: 0s\nservices: []", {},
         ["interval: must be > 0 (got 0)"]),
        ("prometheus: {url: 'http://p'}\nservices: []\nintervall: 5s", {},
         ["intervall: unknown key"]),
        ("prometheus: {url: 'http://p'}", {}, ["services: required"]),
        ("prometheus: {url: 'http://p'}\nservices: [3]", {},
         ["services[0]: must be a mapping (got 3)"]),
        ("- a list", {}, ["the config must be a YAML mapping with prometheus and services"]),
        ("a: [unclosed", {}, ["line 1: expected ',' or ']', but got '<stream end>'"]),
    ],
)
def test_top_level_errors(text, env, expected):
    assert errors_of(text, env) == expected


def test_the_token_value_never_appears_in_errors():
    text = VALID.replace("target: \"{{ per_worker }}\"", "target: -1")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {"PROM_TOKEN": "s3cret-token"})
    assert "s3cret-token" not in str(caught.value)
    assert caught.value.errors == ["services[0].rules[0].target: must be > 0 (got -1)"]


def test_load_config_from_a_file(tmp_path):
    path = tmp_path / "scaler.yml"
    path.write_text(textwrap.dedent(minimal()))
    assert load_config(str(path), {}).services[0].name == "w"
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "missing.yml"), {})
    assert caught.value.errors == [f"{tmp_path / 'missing.yml'}: cannot read: No such file or "
                                   "directory"]


def test_match_labels_are_inherited_by_rules_unless_a_rule_sets_its_own():
    text = minimal(
        name='"w-{{ queue }}"', for_each="[{queue: a, shard: 1}]",
        match_labels='{queue: "{{ queue }}", shard: "{{ shard }}"}',
        activation_query="'sum by (queue) (x)'",
        rules="[{type: per_worker, query: 'sum by (queue, shard) (x)', target: 1},"
              " {type: expression, query: 'y', match_labels: {}},"
              " {type: expression, query: 'z', match_labels: {job: workers}}]",
    )
    service = parse_config(text, {}).services[0]
    assert service.match_labels == (("queue", "a"), ("shard", "1"))
    assert [r.match_labels for r in service.rules] == [
        (("queue", "a"), ("shard", "1")), (), (("job", "workers"),)]


def test_match_labels_values_are_never_promql_escaped_whatever_the_label_is_called():
    text = minimal(vars="{q: 'a\"b'}",
                   match_labels='{query: "{{ q }}", scale_down_guard: "{{ q }}"}',
                   rules="[{type: per_worker, query: 'x{q=\"{{ q }}\"}', target: 1}]")
    service = parse_config(text, {}).services[0]
    assert service.match_labels == (("query", 'a"b'), ("scale_down_guard", 'a"b'))
    assert service.rules[0].query == 'x{q="a\\"b"}'


# --- lease ------------------------------------------------------------------------------


def with_lease(lease: str, interval: str = "15s") -> str:
    return f"prometheus: {{url: 'http://p:9090'}}\ninterval: {interval}\nservices: []\n" \
           f"lease: {lease}\n"


def test_no_lease_section_means_no_lease():
    assert parse_config(VALID, {"PROM_TOKEN": "x"}).lease is None


@pytest.mark.parametrize(
    ("lease", "interval", "expected"),
    [
        ("{type: redis, url_env: LEASE_REDIS_URL}", "15s",
         LeaseConfig(kind="redis", ttl=45.0, name="taskqueue-scaler", url_env="LEASE_REDIS_URL")),
        # The default ttl is 3 intervals, and at least 15 s.
        ("{type: redis, url_env: U}", "2s", LeaseConfig(kind="redis", ttl=15.0, url_env="U")),
        ("{type: redis, url_env: U}", "10s", LeaseConfig(kind="redis", ttl=30.0, url_env="U")),
        ("{type: redis, url: 'rediss://cache.internal:6380/2', name: other, ttl: 1m}", "15s",
         LeaseConfig(kind="redis", ttl=60.0, name="other",
                     url="rediss://cache.internal:6380/2")),
        # A user name is no secret.
        ("{type: redis, url: 'redis://scaler@cache:6379/0'}", "15s",
         LeaseConfig(kind="redis", ttl=45.0, url="redis://scaler@cache:6379/0")),
        ("{type: dynamodb, table: leases, region: eu-west-1}", "15s",
         LeaseConfig(kind="dynamodb", ttl=45.0, table="leases", region="eu-west-1")),
        ("{type: dynamodb, table: locks, region: r, endpoint_url: 'http://localhost:8000', "
         "key_attribute: LockID, ttl: 31s}", "15s",
         LeaseConfig(kind="dynamodb", ttl=31.0, table="locks", region="r",
                     endpoint_url="http://localhost:8000", key_attribute="LockID")),
        ("{type: redis, url_env: U, ttl: 2.5}", "1s",
         LeaseConfig(kind="redis", ttl=2.5, url_env="U")),
    ],
)
def test_lease(lease, interval, expected):
    assert parse_config(with_lease(lease, interval), {}).lease == expected


@pytest.mark.parametrize(
    ("lease", "expected"),
    [
        ("{type: redis, url: 'redis://:hunter2pw@cache:6379/0'}",
         ["lease.url: holds a password: put the URL in an environment variable and name the "
          "variable in url_env instead"]),
        ("{type: redis, url: 'rediss://default:hunter2pw@cache:6379/0'}",
         ["lease.url: holds a password: put the URL in an environment variable and name the "
          "variable in url_env instead"]),
        ("{type: redis, url: 'redis://cache:6379/0?password=hunter2pw'}",
         ["lease.url: holds a password: put the URL in an environment variable and name the "
          "variable in url_env instead"]),
        ("{type: redis, url: 'http://cache:6379/0'}",
         ["lease.url: must be a redis:// or rediss:// URL (got 'http://cache:6379/0')"]),
        ("{type: redis, url: 'redis://'}", ["lease.url: must be a redis:// or rediss:// URL "
                                            "(got 'redis://')"]),
        ("{type: redis}",
         ["lease.url_env: set exactly one of url_env (a URL with a password) and url"]),
        ("{type: redis, url: 'redis://cache', url_env: U}",
         ["lease.url_env: set exactly one of url_env (a URL with a password) and url"]),
        ("{type: redis, url_env: 'redis://cache'}",
         ["lease.url_env: must be the name of an environment variable (got 'redis://cache')"]),
        ("{type: redis, url_env: U, ttl: 30s}",
         ["lease.ttl: must be more than 2 x interval (30s), so that the holder keeps it "
          "through one failed renewal (got 30s)"]),
        ("{type: redis, url_env: U, ttl: 0}",
         ["lease.ttl: must be more than 2 x interval (30s), so that the holder keeps it "
          "through one failed renewal (got 0s)"]),
        ("{type: redis, url_env: U, ttl: soon}",
         ["lease.ttl: must be a duration like 30s, 5m or 1h (got 'soon')"]),
        ("{type: etcd, url_env: U}", ["lease.type: must be one of redis, dynamodb (got 'etcd')"]),
        ("{url_env: U}", ["lease.type: required"]),
        ("{type: redis, url_env: U, table: leases}", ["lease.table: unknown key"]),
        ("{type: dynamodb, table: leases, region: r, url_env: U}",
         ["lease.url_env: unknown key"]),
        ("{type: dynamodb}", ["lease.table: required", "lease.region: required"]),
        ("{type: dynamodb, table: '', region: r}",
         ["lease.table: must be a non-empty string (got '')"]),
        ("[redis]", ["lease: must be a mapping (got ['redis'])"]),
    ],
)
def test_lease_errors(lease, expected):
    errors = errors_of(with_lease(lease))
    assert errors == expected
    assert not any("hunter2pw" in e for e in errors)


def test_lease_errors_come_with_every_other_error():
    text = with_lease("{type: redis, url_env: U, ttl: 1s}").replace("services: []",
                                                                    "services: [3]")
    assert errors_of(text) == [
        "lease.ttl: must be more than 2 x interval (30s), so that the holder keeps it through "
        "one failed renewal (got 1s)",
        "services[0]: must be a mapping (got 3)",
    ]


def test_health_query_and_restore_defaults_and_overrides():
    config = parse_config(VALID, {"PROM_TOKEN": "t"})
    assert {s.health_query for s in config.services} == {
        "min(taskqueue_exporter_scrape_success)"}
    assert config.restore == RestoreConfig(enabled=True, matchers="")
    text = VALID.replace("interval: 10s", "interval: 10s\nhealth_query: up{job=\"e\"} == 1\n"
                         "restore: {matchers: 'job=\"taskqueue-scaler\", env=~\"prod.*\"'}")
    text = text.replace("    min: 1\n", "    min: 1\n    health_query: false\n")
    config = parse_config(text, {"PROM_TOKEN": "t"})
    assert {s.health_query for s in config.services} == {None}
    assert config.restore.matchers == 'job="taskqueue-scaler", env=~"prod.*"'
    text = VALID.replace("interval: 10s", 'interval: 10s\nhealth_query: up{job="e"} == 1')
    assert {s.health_query for s in parse_config(text, {"PROM_TOKEN": "t"}).services} == {
        'up{job="e"} == 1'}


@pytest.mark.parametrize(("extra", "expected"), [
    ("health_query: 3", "health_query: must be a PromQL query, or false for none (got 3)"),
    ("restore: {matchers: 'job=taskqueue'}",
     "restore.matchers: must be PromQL label matchers like job=\"taskqueue-scaler\" "
     "(got 'job=taskqueue')"),
    ("restore: {enabled: 'yes'}", "restore.enabled: must be true or false (got 'yes')"),
    ("restore: {matcher: 'a=\"b\"'}", "restore.matcher: unknown key"),
])
def test_health_query_and_restore_errors(extra, expected):
    assert errors_of(f"prometheus: {{url: 'http://p'}}\n{extra}\nservices: []", {}) == [
        expected]


def test_pass_env_names_variables():
    text = ("prometheus: {url: 'http://p'}\nservices:\n  - name: w\n    backend: {type: local, "
            "command: x, pass_env: %s}\n    min: 1\n    max: 2\n"
            "    rules: [{type: expression, query: x}]\n")
    (service,) = parse_config(text % "[SENTRY_DSN, HTTP_PROXY]", {}).services
    assert service.backend.pass_env == ("SENTRY_DSN", "HTTP_PROXY")
    assert errors_of(text % "[1-BAD]", {}) == [
        "services[0].backend.pass_env: must be a list of environment variable names "
        "(got ['1-BAD'])"]


def test_the_readmes_restore_block_is_valid_as_shown():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("**A restart keeps the windows and the rate policies.**")
    (block,) = re.findall(r"```yaml\n(.*?)```", readme[start:readme.index("**Missing", start)],
                          re.S)
    config = parse_config("prometheus: {url: 'http://p'}\nservices: []\n" + block, {})
    assert config.restore == RestoreConfig(enabled=True, matchers='job="taskqueue-scaler"')
