"""Scaler config: typed objects from YAML, and every error with its key path."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest

from scaler import child_limits, query_checks
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
    # YAML value: we"ird\q; not in the names, which allow no quote (local commands are
    # not PromQL either: test_local_commands_are_not_promql_escaped).
    text = (VALID.replace("{queue: emails}", "{queue: 'we\"ird\\q', n: 2}")
            .replace("{queue: default}", "{queue: default, n: 1}")
            .replace('service: "celery-{{ queue }}"', 'service: "celery-{{ n }}"')
            .replace('name: "worker-{{ queue }}"', 'name: "worker-{{ n }}"'))
    config = parse_config(text, {"PROM_TOKEN": "x"})
    assert config.services[1].rules[0].query == 'sum(taskqueue_queue_depth{queue="we\\"ird\\\\q"})'


def test_local_commands_are_not_promql_escaped():
    text = minimal(vars="{q: 'a\"b'}", backend="""{type: local, command: "echo '{{ q }}'"}""")
    assert parse_config(text, {}).services[0].backend.command == ("echo", 'a"b')


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


STAMPED_BACKEND = '{cluster: c, service: "s-{{ item }}", region: r}'


def test_duplicate_service_names():
    text = minimal(name="w", for_each="[a, b]", backend=STAMPED_BACKEND)
    assert errors_of(text) == ["services: duplicate service name 'w'"]


def test_plain_for_each_items_are_bound_to_item():
    config = parse_config(minimal(name='"w-{{ item }}"', for_each="[a, b]",
                                  backend=STAMPED_BACKEND), {})
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
        ("a: [unclosed", {}, ["line 2: did not find expected ',' or ']'"]),
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
        "count(taskqueue_exporter_scrape_success == 1) >= "
        "max_over_time(count(taskqueue_exporter_scrape_success)[10m:])"}
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

# --------------------------------------------------------------------------- refused at the door

BOMB = """
    vars:
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""
CPU = ("template: still computing after 0.4 s of CPU time (a long loop, deep recursion or a "
       "huge number?)")
MEMORY = "template: needs more than the 64 MiB of memory allowed"


def query(text: str) -> str:
    """A service whose one rule's query is the YAML scalar `text`."""
    return minimal(rules=f"[{{type: per_worker, query: {text}, target: 1}}]")


@pytest.mark.parametrize(("text", "expected"), [
    # YAML: an alias bomb, refused where it expands, before anything is built.
    (minimal().replace("  -\n", "  -\n" + BOMB.strip("\n").replace("    ", "    ", 1) + "\n"),
     ["services[0].vars.e: expands to more than 50000 values (YAML aliases/anchors?)"]),
    ("prometheus: &p {url: 'http://p', x: *p}\nservices: []",
     ["prometheus.x: refers to itself (a recursive YAML alias, line 1)"]),
    (minimal(vars="[" * 70 + "]" * 70),
     ["services[0].vars" + "[0]" * 61 + ": nested more than 64 levels deep (line 9)"]),
    (minimal(max="1" + ":0" * 200),
     ["services[0].max: a number of 401 characters, more than the 100 allowed (line 7)"]),
    # Duplicate keys, in any mapping; a key overridden after a merge is none.
    (minimal() + "    min: 2\n", ["services[0].min: duplicate key (line 9; first at line 6)"]),
    (minimal(backend="{cluster: c, service: s, region: r, cluster: d}"),
     ["services[0].backend.cluster: duplicate key (line 5; first at line 5)"]),
    ("prometheus: {url: 'http://p'}\nservices: []\nservices: []",
     ["services: duplicate key (line 3; first at line 2)"]),
    (minimal(vars="{<<: {a: 1}, <<: {b: 2}}"),  # two merges are written <<: [*a, *b]
     ["services[0].vars.<<: duplicate key (line 9; first at line 9)"]),
    (minimal(vars="{1: a, 0x1: b}"), ["services[0].vars.0x1: duplicate key (line 9; first at "
                                      "line 9)"]),
    # PromQL, checked offline in every query key.
    (query("'sum by (queue) (taskqueue_queue_depth'"),
     ["services[0].rules[0].query: not valid PromQL: unclosed left parenthesis "
      "(got 'sum by (queue) (taskqueue_queue_depth')"]),
    (minimal(rules="[{type: drain, query: x, throughput_query: 'rate(x)', "
                   "arrival_query: 'x +', drain_within: 5m}]"),
     ["services[0].rules[0].throughput_query: not valid PromQL: expected type matrix in call "
      "to function 'rate', got vector (got 'rate(x)')",
      "services[0].rules[0].arrival_query: not valid PromQL: invalid promql query (got 'x +')"]),
    (minimal(min="0", activation_query="'x y'", scale_down_guard="'nope(x)'"),
     ["services[0].activation_query: not valid PromQL: invalid promql query (got 'x y')",
      "services[0].scale_down_guard: not valid PromQL: unknown function with name 'nope' "
      "(got 'nope(x)')"]),
    (query('"sum(x{q=\\"{{ q }}\\"}"'), ["services[0].rules[0].query: template: 'q' is "
                                        "undefined"]),  # no PromQL error besides
    # Counts: ECS runs at most 5,000 tasks a service; the local backend 1,000 processes.
    (minimal(max="10000000000"),
     ["services[0].max: must be <= 5000, the most tasks ECS runs in one service "
      "(got 10000000000)"]),
    (minimal(min="5001", max="6000", fallback="7000"),
     ["services[0].min: must be <= 5000, the most tasks ECS runs in one service (got 5001)",
      "services[0].max: must be <= 5000, the most tasks ECS runs in one service (got 6000)",
      "services[0].fallback: must be <= 5000, the most tasks ECS runs in one service "
      "(got 7000)"]),
    (minimal(backend="{type: local, command: x}", max="1001"),
     ["services[0].max: must be <= 1000, the most worker processes the local backend runs "
      "(got 1001)"]),
    # Every number within a range; durations finite, bounded and not below a millisecond.
    (minimal(max="1.0e+308"), ["services[0].max: must be between -1e+15 and 1e+15 "
                               "(got 1e+308)"]),
    (minimal(max=".inf"), ["services[0].max: must be between -1e+15 and 1e+15 (got inf)"]),
    (minimal(max=".nan"), ["services[0].max: must be a finite number (got nan)"]),
    (minimal(failure_threshold="1" + "0" * 30),
     ["services[0].failure_threshold: must be between -1e+15 and 1e+15 "
      "(got 1000000000000000000000000000000)"]),
    (minimal(failure_threshold="1001"), ["services[0].failure_threshold: must be <= 1000 "
                                         "(got 1001)"]),
    (minimal(rules="[{type: per_worker, query: x, target: 1.0e-9}]"),
     ["services[0].rules[0].target: must be >= 1e-06 (got 1e-09)"]),
    (minimal(rules="[{type: drain, query: x, throughput: '0.000000001/s', drain_within: 5m}]"),
     ["services[0].rules[0].throughput: must be >= 1e-06 (got 1e-09)"]),
    (minimal(rules=f"[{{type: drain, query: x, throughput: '{'9' * 400}/s', "
                   "drain_within: 5m}]"),
     [f"services[0].rules[0].throughput: must be a rate like 2/min, 0.5/s or 100/h "
      f"(got '{'9' * 56}...)"]),
    (minimal(rules="[{type: drain, query: x, throughput: 1, drain_within: 30d}]"),
     ["services[0].rules[0].drain_within: must be a duration like 30s, 5m or 1h (got '30d')"]),
    (minimal(rules="[{type: drain, query: x, throughput: 1, drain_within: 200h}]"),
     ["services[0].rules[0].drain_within: must be at most 7 days (got '200h')"]),
    (minimal(rules=f"[{{type: drain, query: x, throughput: 1, drain_within: {'9' * 400}s}}]"),
     [f"services[0].rules[0].drain_within: must be a duration like 30s, 5m or 1h "
      f"(got '{'9' * 56}...)"]),
    (minimal(rules="[{type: drain, query: x, throughput: 1, drain_within: 1.0e-7}]"),
     ["services[0].rules[0].drain_within: must be 0 or at least 1ms (got 1e-07)"]),
    (minimal(rules="[{type: threshold, query: x, above: 1, step: 10000}]"),
     ["services[0].rules[0].step: must be <= 5000 (got 10000)"]),
    (minimal(rules="[{type: threshold, query: x, above: 1, factor: 1000}]"),
     ["services[0].rules[0].factor: must be <= 100 (got 1000)"]),
    (minimal(behavior="{tolerance: 5}"), ["services[0].behavior.tolerance: must be <= 1 "
                                          "(got 5)"]),
    (minimal(behavior="{scale_down: {stabilization_window: 48h}}"),
     ["services[0].behavior.scale_down.stabilization_window: must be at most 24h "
      "(got 172800s)"]),
    (minimal(behavior="{scale_up: {policies: [{type: workers, value: 6000, period: 25h}]}}"),
     ["services[0].behavior.scale_up.policies[0].value: must be <= 5000 (got 6000)",
      "services[0].behavior.scale_up.policies[0].period: must be at most 24h (got 90000s)"]),
    (minimal(backend="{type: local, command: x, stop_timeout: 2h}"),
     ["services[0].backend.stop_timeout: must be at most 1h (got 7200s)"]),
    ("prometheus: {url: 'http://p', timeout: 1h}\ninterval: 50ms\nconcurrency: 1000\n"
     "services: []",
     ["prometheus.timeout: must be at most 10m (got 3600s)", "interval: must be >= 0.1 "
      "(got 0.05)", "concurrency: must be <= 256 (got 1000)"]),
    ("prometheus: {url: 'http://p'}\ninterval: 2h\nservices: []",
     ["interval: must be at most 1h (got 7200s)"]),
    # ECS names and ARNs, regions and endpoints as boto3 takes them.
    (minimal(backend="{cluster: c, service: s, region: 'eu west 1', endpoint_url: moto}"),
     ["services[0].backend.region: must be an AWS region like eu-west-1 (got 'eu west 1')",
      "services[0].backend.endpoint_url: must be an http:// or https:// URL (got 'moto')"]),
    (minimal(backend="{cluster: c, service: 'we\"ird', region: r}"),
     ["services[0].backend.service: must be an ECS service name (up to 255 letters, digits, "
      "- and _) or ARN (got 'we\"ird')"]),
    (minimal(backend="{cluster: 'arn:aws:ecs:eu-west-1:123456789012:cluster/c', "
                     "service: 'arn:aws:ecs:us-east-1:123456789012:service/d/s', "
                     "region: us-east-1}"),
     ["services[0].backend.cluster: its ARN is in region eu-west-1, not 'us-east-1'",
      "services[0].backend.service: its ARN is in cluster d, not 'c'"]),
])
def test_bad_input_is_refused_with_its_key_path(text, expected):
    assert errors_of(text) == expected


@pytest.mark.parametrize(("template", "problem"), [
    ("{{ 'x' * 100000000 }}", MEMORY),
    ("{{ 'x'|center(1000000000) }}", MEMORY),
    ("{{ '%0999999999d' % 1 }}", MEMORY),
    ("{{ '{:>999999999}'.format(1) }}", MEMORY),
    ("{{ 10 ** 100000000 }}", CPU),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x", CPU),
    ("{{ range(100000)|join(',') }}" * 3, "template: renders more than the 65536 characters "
                                          "allowed"),
    ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     CPU),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s }}", MEMORY),
    ("{{ 1 / 0 }}", "template: ZeroDivisionError: division by zero"),
])
def test_a_template_that_computes_too_much_is_refused(template, problem):
    assert errors_of(query(f'"{template}"')) == [f"services[0].rules[0].query: {problem}"]


def test_a_plain_template_that_renders_too_much_is_refused_before_it_is_built():
    text = minimal(vars="{big: " + "y" * 40_000 + "}", name='"{{ big }}{{ big }}"')
    assert errors_of(text) == [
        "services[0].name: template: renders 80000 characters, more than the 65536 allowed"]


def test_merge_keys_work_and_a_merged_key_overridden_is_no_duplicate():
    text = minimal(min=None, max=None, name=None).replace(
        "  -\n", "  - &first\n    <<: {min: 1, max: 5}\n    name: a\n    max: 9\n") + (
        "  - {<<: *first, name: b, backend: {cluster: c, service: t, region: r}}\n")
    first, second = parse_config(text, {}).services
    assert (first.name, first.limits.min, first.limits.max) == ("a", 1, 9)
    assert (second.name, second.limits.min, second.limits.max) == ("b", 1, 9)


def test_no_more_services_than_one_scaler_may_run():
    items = ", ".join(f"q{i}" for i in range(5001))
    text = minimal(name='"w-{{ item }}"', for_each=f"[{items}]", backend=STAMPED_BACKEND)
    assert errors_of(text) == ["services: 5001 services, more than the 5000 one scaler may run"]


def test_for_each_cannot_stamp_past_the_values_a_config_may_expand_to():
    items = ", ".join(f"q{i}" for i in range(4000))
    variables = "{" + ", ".join(f"v{i}: {i}" for i in range(200)) + "}"
    text = minimal(name='"w-{{ item }}"', for_each=f"[{items}]", backend=STAMPED_BACKEND,
                   vars=variables)
    assert errors_of(text) == [
        "services[0].for_each: stamps 4000 services of 225 values each, more than the 500000 "
        "values a config may expand to"]


def test_two_services_on_one_ecs_service_are_an_error():
    arn = "arn:aws:ecs:r:123456789012"
    text = minimal() + (
        f"  - {{name: v, backend: {{cluster: '{arn}:cluster/c', service: '{arn}:service/c/s', "
        "region: r}, min: 0, max: 5, rules: [{type: per_worker, query: x, target: 1}]}\n"
        f"  - {{name: u, backend: {{cluster: c, service: '{arn}:service/s', region: r}}, "
        "min: 0, max: 5, rules: [{type: per_worker, query: x, target: 1}]}\n")
    assert errors_of(text) == [
        "services[1].backend: the same ECS service (r c/s) as services[0].backend: the two "
        "would fight over its desired count",
        "services[2].backend: the same ECS service (r c/s) as services[0].backend: the two "
        "would fight over its desired count"]


def test_for_each_stamps_on_one_ecs_service_are_an_error():
    text = minimal(name='"w-{{ item }}"', for_each="[a, b]")
    assert errors_of(text) == [
        "services[0].backend: the same ECS service (r c/s) as services[0].backend (for_each "
        "item=a): the two would fight over its desired count (for_each item=b)"]


@pytest.mark.parametrize("other", [
    "{cluster: c, service: s, region: eu-west-1}",  # another region
    "{cluster: d, service: s, region: r}",  # another cluster
    "{cluster: c, service: s, region: r, endpoint_url: 'http://moto:5000'}",  # another ECS
])
def test_services_with_the_same_name_elsewhere_are_no_conflict(other):
    text = minimal() + (f"  - {{name: v, backend: {other}, min: 0, max: 5, "
                        "rules: [{type: per_worker, query: x, target: 1}]}\n")
    assert len(parse_config(text, {}).services) == 2


def test_local_services_may_share_a_command():
    local = "{type: local, command: 'sleep 60'}"
    text = minimal(backend=local) + (f"  - {{name: v, backend: {local}, min: 0, max: 5, "
                                     "rules: [{type: per_worker, query: x, target: 1}]}\n")
    assert len(parse_config(text, {}).services) == 2


@pytest.mark.parametrize(("content", "expected"), [
    (b"a: " + b"x" * (1 << 20), "the config is 1048579 bytes, more than the 1048576 allowed"),
    (b"a: \xff\xfe", "not UTF-8 text (byte 4 of the file)"),
])
def test_load_config_refuses_what_is_not_a_config_file(tmp_path, content, expected):
    path = tmp_path / "scaler.yml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    assert caught.value.errors == [expected]


def test_an_endless_file_is_read_no_further_than_the_limit():
    with pytest.raises(ConfigError) as caught:
        load_config("/dev/zero", {})
    assert caught.value.errors == ["the config is more than the 1048576 bytes allowed"]


def test_local_commands_and_ready_patterns_have_a_budget():
    # Splitting a command and compiling a pattern take microseconds a character.
    items = ", ".join(f"q{i}" for i in range(70))
    command = "sleep " + "1" * 994
    text = minimal(name='"w-{{ item }}"', for_each=f"[{items}]",
                   backend=f"{{type: local, command: '{command} {{{{ item }}}}'}}")
    # One line for all the services past the budget (the 66th and after).
    assert errors_of(text) == [
        "services[0].backend.command: the local backend's commands and ready patterns pass "
        "65536 characters in all"]


# --------------------------------------------------------------------------- PromQL checks

OPERATORS = "+".join(["x"] * 999)  # valid; the parser takes about a tenth of a second


def rules(*queries: str) -> str:
    return "[" + ", ".join(f"{{type: expression, query: '{q}'}}" for q in queries) + "]"


def test_queries_whose_checks_would_take_long_are_refused_within_a_bounded_time():
    # 40 distinct queries of 999 operators: 5 s for the parser, and valid.
    text = minimal(rules=rules(*(f"{OPERATORS}+y{i}" for i in range(40))))
    started = time.monotonic()
    errors = errors_of(text)
    assert time.monotonic() - started < 2.0
    assert len(errors) == 1 and re.fullmatch(
        r"services\[0\]\.rules\[\d+\]\.query: (checking it as PromQL takes more than 0\.4 s of "
        r"CPU time \(thousands of operators\?\)|the config's \d+ long queries before this one "
        r"took most of the 0\.4 s of CPU time allowed to check them all)", errors[0]), errors


def test_a_few_long_queries_are_checked_in_the_child_as_in_process(monkeypatch):
    long_invalid = "sum(" + "x + " * 200 + ")"
    queries = ["sum(x)", long_invalid, f"{OPERATORS}", "x[5m]", "x{a=~`(`}"]
    text = minimal(rules=rules(*queries))
    expected = [
        "services[0].rules[1].query: not valid PromQL: invalid promql query (got 'sum(x + x + x "
        "+ x + x + x + x + x + x + x + x + x + x + ...)",
        "services[0].rules[3].query: not valid PromQL: returns a range vector, not one number "
        "per series: wrap it in a function such as rate() or max_over_time() (got 'x[5m]')",
        "services[0].rules[4].query: not valid PromQL: invalid regular expression '(': missing "
        "closing ) (got 'x{a=~`(`}')"]
    assert errors_of(text) == expected
    monkeypatch.setattr(query_checks, "SHORT_QUERY", 0)  # every query in the child
    assert errors_of(text) == expected


def test_the_queries_of_a_config_have_a_size_limit():
    items = ", ".join(f"q{i}" for i in range(70))
    text = minimal(name='"w-{{ item }}"', for_each=f"[{items}]", backend=STAMPED_BACKEND,
                   vars="{big: " + "y" * 60_000 + "}",
                   rules="""[{type: expression, query: 'x{a="{{ item }}{{ big }}"}'}]""")
    assert errors_of(text) == [
        "services[0].rules[0].query: the config's queries pass the 4194304 characters "
        "allowed in all"]


def test_the_queries_of_a_config_have_a_limit_of_regular_expressions():
    matchers = ",".join(['a=~"a"'] * 7000)
    text = minimal(name='"w-{{ item }}"', for_each="[q1, q2, q3]", backend=STAMPED_BACKEND,
                   rules=f"""[{{type: expression, query: 'x{{b="{{{{ item }}}}",{matchers}}}'}}]""")
    assert errors_of(text) == [
        "services[0].rules[0].query: the config's queries pass the 20000 regular expression "
        "matchers (=~, !~) allowed in all"]


@pytest.mark.parametrize("text", [
    # Prometheus accepts these (promtool 2.42): raw strings have no escapes, and matchers
    # are Go's regular expressions, not Rust's.
    "'sum(taskqueue_queue_depth{queue=~`\\d+`})'",
    """'sum(taskqueue_queue_depth{queue=~"\\\\w{1,255}"})'""",
    """'sum(taskqueue_queue_depth{queue=~"\\\\Qa.b\\\\E"})'""",
    "'x{" + ",".join(f'l{i}=~"\\\\w{{400}}"' for i in range(60)) + "}'",
])
def test_queries_prometheus_accepts_pass_quickly(text):
    started = time.process_time()
    assert len(parse_config(query(text), {}).services) == 1
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("rules", "[{type: expression, query: 'x[5m]'}]", "a range vector"),
    ("rules", "[{type: expression, query: 'sum(x)[5m:1m]'}]", "a range vector"),
    ("rules", """[{type: expression, query: '"5"'}]""", "a string"),
    ("scale_down_guard", "'(x[5m])'", "a range vector"),
    ("activation_query", "'x[1h]'", "a range vector"),
    ("health_query", "'x[1h]'", "a range vector"),
    ("rules", "[{type: drain, query: x, throughput_query: 'x[5m]', drain_within: 5m}]",
     "a range vector"),
    ("rules", "[{type: drain, query: x, throughput: 1, arrival_query: 'x[5m]', "
              "drain_within: 5m}]", "a range vector"),
])
def test_a_query_whose_result_a_rule_cannot_read_is_refused(key, value, kind):
    errors = errors_of(minimal(**{key: value}))
    assert len(errors) == 1 and f": not valid PromQL: returns {kind}" in errors[0], errors


def test_short_queries_are_checked_without_a_child_process(monkeypatch):
    def no_child(*args):
        raise AssertionError("a child process started")

    monkeypatch.setattr(query_checks, "_in_child", no_child)
    text = minimal(rules=rules('sum(rate(x{a=~"b|c"}[5m])) / sum(y)', "x + 1"))
    assert len(parse_config(text, {}).services[0].rules) == 2


def test_what_the_templates_took_is_taken_from_the_time_to_check_queries(monkeypatch):
    spent = iter([0.0, query_checks.CPU_SECONDS])  # before and after the templates
    monkeypatch.setattr(child_limits, "children_cpu", lambda: next(spent))
    text = minimal(rules=rules(*(f"{OPERATORS}+y{i}" for i in range(40))))
    errors = errors_of(text)
    assert len(errors) == 1 and "0.1 s of CPU time" in errors[0], errors


def test_a_child_that_cannot_start_is_an_error_not_a_pass(monkeypatch):
    monkeypatch.setattr(query_checks.sys, "executable", "/nonexistent/python")
    assert errors_of(query(f"'{OPERATORS}'")) == [
        "services[0].rules[0].query: cannot start the process that checks queries: No such "
        "file or directory"]


# --------------------------------------------------------------------------- no traceback


def test_nesting_through_aliases_counts_as_nesting():
    # Each anchor nests 60 levels and the next one's alias 60 more: 2,280 in all, within
    # the 64 levels the file itself shows.
    chain = "  x0: &a0 " + "[" * 60 + "1" + "]" * 60 + "\n" + "".join(
        f"  x{i}: &a{i} " + "[" * 60 + f"*a{i - 1}" + "]" * 60 + "\n" for i in range(1, 38))
    text = minimal(max="*a37").replace("services:\n", "junk:\n" + chain + "services:\n")
    assert errors_of(text) == [
        "junk.x1" + "[0]" * 55 + ": nested more than 64 levels deep once YAML aliases are "
        "expanded (line 4)"]


@pytest.mark.parametrize(("pattern", "problem"), [
    ("(" * 5000 + ")" * 5000, "groups nested more than 100 deep (got '" + "(" * 56 + "...)"),
    ("a{4294967296}", "the repetition number is too large (got 'a{4294967296}')"),
    ("(", "missing ), unterminated subpattern at position 0 (got '(')"),
])
def test_a_ready_pattern_python_cannot_compile_is_an_error(pattern, problem):
    text = minimal(backend=f"{{type: local, command: x, ready_pattern: '{pattern}'}}")
    assert errors_of(text) == [
        f"services[0].backend.ready_pattern: not a valid regular expression: {problem}"]


@pytest.mark.parametrize(("value", "expected"), [
    ("!foo 3", "services[0].max: unknown YAML tag !foo (line 7)"),
    ("!!python/object:os.system x",
     "services[0].max: unknown YAML tag !!python/object:os.system (line 7)"),
    ("!!int abc", "services[0].max: 'abc' is not a valid !!int (line 7)"),
    ("!!bool maybe", "services[0].max: 'maybe' is not a valid !!bool (line 7)"),
    ("!!timestamp soon", "services[0].max: 'soon' is not a valid !!timestamp (line 7)"),
    ("!!float x", "services[0].max: 'x' is not a valid !!float (line 7)"),
    ("!!str [1]", "services[0].max: the YAML tag !!str cannot tag a list (line 7)"),
    ("!!set [a]", "services[0].max: the YAML tag !!set cannot tag a list (line 7)"),
    ("!!omap [a]", "services[0].max: expected a mapping of length 1, but found scalar (line 7)"),
])
def test_a_yaml_tag_that_cannot_be_built_is_an_error_with_its_key_path(value, expected):
    assert errors_of(minimal(max=value)) == [expected]


def test_a_list_as_a_key_is_an_error_with_its_key_path():
    assert errors_of(minimal(vars="{[a]: 1}")) == [
        "services[0].vars.?: a list or mapping as a key (line 9)"]


FUZZ_VALUES = [
    None, True, 0, -1, 2**70, 1.5, float("inf"), float("nan"), "", " ", "x", "a\nb", "\x00",
    "\x1b[31m", "9" * 400, "1e400", "5m", "2/min", "HTTPS://u:p@h:1/", "redis://:pw@h",
    # Templates that compute are tested apart: each starts the sandbox.
    "{{ x }}", "(", "a{99999999999}", "eu-west-1", "x[5m]",
    'x{a=~"("}', [], [1], [[1]], {}, {"a": 1}, {1: 2}, {None: 1}, b"\xff",
    {"type": "ecs"}, {"type": "local"}, {"type": "dynamodb"}, {"type": "redis"},
]
FUZZ_KEYS = {
    "root": ["prometheus", "services", "interval", "concurrency", "port", "health_query",
             "restore", "lease"],
    "prometheus": ["url", "timeout", "headers", "bearer_token_env", "verify_tls"],
    "service": ["name", "backend", "min", "max", "fallback", "failure_threshold",
                "match_labels", "rules", "activation_query", "scale_down_guard",
                "health_query", "behavior", "vars", "for_each"],
    "backend": ["type", "cluster", "service", "region", "endpoint_url", "command", "env",
                "cwd", "ready_pattern", "stop_timeout", "pass_env"],
    "rule": ["type", "name", "query", "target", "aggregate", "on_empty", "match_labels",
             "drain_within", "startup_delay", "throughput", "throughput_query",
             "arrival_query", "above", "below", "step", "factor"],
    "behavior": ["tolerance", "scale_up", "scale_down"],
    "direction": ["stabilization_window", "select", "policies"],
    "policy": ["type", "value", "period"],
    "restore": ["enabled", "matchers"],
    "lease": ["type", "name", "ttl", "url", "url_env", "table", "region", "endpoint_url",
              "key_attribute"],
}
FUZZ_CHILDREN = {"prometheus": "prometheus", "backend": "backend", "behavior": "behavior",
                 "scale_up": "direction", "scale_down": "direction", "restore": "restore",
                 "lease": "lease", "services": "service", "rules": "rule",
                 "policies": "policy"}


def fuzz_mapping(rng, kind: str, depth: int = 0) -> dict:
    found = {}
    for key in rng.sample(FUZZ_KEYS[kind], rng.randint(0, len(FUZZ_KEYS[kind]))):
        child = FUZZ_CHILDREN.get(key)
        if child is None or depth > 3 or rng.random() < 0.3:
            found[key] = rng.choice(FUZZ_VALUES)
        elif key in ("services", "rules", "policies"):
            found[key] = [fuzz_mapping(rng, child, depth + 1) for _ in range(rng.randint(0, 2))]
        else:
            found[key] = fuzz_mapping(rng, child, depth + 1)
    return found


def test_random_configs_are_refused_with_error_lines_never_anything_else():
    import random

    import yaml

    for seed in range(1000):
        text = yaml.safe_dump(fuzz_mapping(random.Random(seed), "root"), allow_unicode=True)
        try:
            parse_config(text, {})
        except ConfigError as error:
            assert all(line.isprintable() and len(line) <= 500 for line in error.errors)


# --------------------------------------------------------------------------- names, URLs


@pytest.mark.parametrize(("backend", "expected"), [
    ('{cluster: "c\\n", service: s, region: r}',
     "services[0].backend.cluster: must be an ECS cluster name (up to 255 letters, digits, - "
     "and _) or ARN (got 'c\\n')"),
    ('{cluster: c, service: "s\\n", region: r}',
     "services[0].backend.service: must be an ECS service name (up to 255 letters, digits, - "
     "and _) or ARN (got 's\\n')"),
    ('{cluster: c, service: "arn:aws:ecs:r:123456789012:service/c/s\\n", region: r}',
     "services[0].backend.service: must be an ECS service name (up to 255 letters, digits, - "
     "and _) or ARN (got 'arn:aws:ecs:r:123456789012:service/c/s\\n')"),
    ('{cluster: c, service: s, region: "eu-west-1\\n"}',
     "services[0].backend.region: must be an AWS region like eu-west-1 (got 'eu-west-1\\n')"),
    ('{cluster: c, service: s, region: r, endpoint_url: "http://moto:5000\\n"}',
     "services[0].backend.endpoint_url: must be an http:// or https:// URL "
     "(got 'http://moto:5000')"),
    ("{cluster: c, service: s, region: r, endpoint_url: 'http://a_b:5000'}",
     "services[0].backend.endpoint_url: must be an http:// or https:// URL "
     "(got 'http://a_b:5000')"),
    ("{cluster: c, service: s, region: r, endpoint_url: 'https://user:pw@ecs:port'}",
     "services[0].backend.endpoint_url: must be an http:// or https:// URL "
     "(got 'https://ecs:port')"),
])
def test_a_trailing_newline_or_a_bad_host_is_no_valid_ecs_name_region_or_endpoint(backend,
                                                                                  expected):
    assert errors_of(minimal(backend=backend)) == [expected]


def test_a_trailing_newline_does_not_make_another_ecs_service():
    text = minimal() + ("""  - {name: v, backend: {cluster: c, service: "s\\n", region: r}, """
                        "min: 0, max: 5, rules: [{type: per_worker, query: x, target: 1}]}\n")
    assert errors_of(text) == [
        "services[1].backend.service: must be an ECS service name (up to 255 letters, digits, "
        "- and _) or ARN (got 's\\n')"]


@pytest.mark.parametrize("other", [
    "{cluster: c, service: s, region: eu-west-1, endpoint_url: 'https://ecs.eu-west-1.amazonaws.com/'}",
    "{cluster: c, service: s, region: EU-West-1}",
    "{cluster: c, service: s, region: eu-west-1, endpoint_url: 'HTTPS://ECS.eu-west-1.amazonaws.com:443'}",
])
def test_ecs_own_endpoint_and_a_region_in_capitals_are_the_same_ecs_service(other):
    text = minimal(backend="{cluster: c, service: s, region: eu-west-1}") + (
        f"  - {{name: v, backend: {other}, min: 0, max: 5, "
        "rules: [{type: per_worker, query: x, target: 1}]}\n")
    errors = errors_of(text)
    assert len(errors) == 1 and errors[0].startswith(
        "services[1].backend: the same ECS service (eu-west-1 c/s) as services[0].backend"), errors


@pytest.mark.parametrize(("name", "ok"), [
    ("celery-emails", True), ("queue.high:1/a@b+c_d", True), ("a" * 255, True),
    ("a" * 256, False), ("a\n", False), ("a b", False), ('a"b', False), ("-a", False),
    ("émails", False), ("a\x1b[31m", False), ("a\u202eb", False),
])
def test_service_names_are_safe_label_values_and_log_fields(name, ok):
    text = minimal(name=json.dumps(name))
    if ok:
        assert parse_config(text, {}).services[0].name == name
    else:
        assert errors_of(text)[0].startswith(
            "services[0].name: must be a name of up to 255 letters, digits and _ . : @ / + -, "
            "starting with a letter or digit")


def test_duplicate_names_are_found_whatever_the_for_each_item():
    text = minimal(name='"w-{{ item }}"', for_each="[a, 'a ', 'a\\n']", backend=STAMPED_BACKEND)
    errors = errors_of(text)
    assert errors[0].startswith("services[0].name: must be a name")
    assert all("a\n" not in e for e in errors)


def test_a_prometheus_url_never_shows_its_password_and_takes_any_case():
    errors = errors_of("prometheus: {url: 'HTTPS://admin:S3cretPW@prom:9090 x'}\nservices: []")
    assert errors == ["prometheus.url: must be an http:// or https:// URL (got "
                      "'https://prom:9090 x')"]
    config = parse_config("prometheus: {url: 'HTTPS://prom:9090'}\nservices: []", {})
    assert config.prometheus.url == "HTTPS://prom:9090"
    errors = errors_of("prometheus: {url: 'http://admin:pa/ss@prom:9090\\n'}\nservices: []")
    assert not any("pa/ss" in e or "admin" in e for e in errors), errors


@pytest.mark.parametrize(("lease", "expected"), [
    ("{type: dynamodb, table: leases, region: 'not a region!'}",
     ["lease.region: must be an AWS region like eu-west-1 (got 'not a region!')"]),
    ("{type: dynamodb, table: leases, region: eu-west-1, endpoint_url: nonsense}",
     ["lease.endpoint_url: must be an http:// or https:// URL (got 'nonsense')"]),
    ("{type: dynamodb, table: t, region: eu-west-1}",
     ["lease.table: must be a DynamoDB table name (3 to 255 letters, digits, _, - and .) "
      "(got 't')"]),
    ("{type: dynamodb, table: 'a b c', region: eu-west-1, key_attribute: \"a\\nb\"}",
     ["lease.table: must be a DynamoDB table name (3 to 255 letters, digits, _, - and .) "
      "(got 'a b c')",
      "lease.key_attribute: must be a DynamoDB attribute name (up to 255 bytes, printable) "
      "(got 'a\\nb')"]),
    ("{type: redis, url: 'http://u:hunter2pw@cache:6379/0'}",
     ["lease.url: holds a password: put the URL in an environment variable and name the "
      "variable in url_env instead"]),
    ("{type: redis, url: 'http://u@cache:6379/0'}",
     ["lease.url: must be a redis:// or rediss:// URL (got 'http://cache:6379/0')"]),
])
def test_a_lease_boto3_or_redis_would_refuse_is_refused_by_check_config(lease, expected):
    assert errors_of(with_lease(lease)) == expected


# --------------------------------------------------------------------------- error lines


def test_keys_and_for_each_items_cannot_split_or_forge_an_error_line():
    text = minimal(name='"w-{{ item }}"', for_each='["a\\nb", c]', backend=STAMPED_BACKEND) + (
        '    "k\\ntaskqueue-scaler: scaler.yml: services[0].max: forged\\x1b[0m": 1\n')
    errors = errors_of(text)
    assert errors == [
        "services[0].name: must be a name of up to 255 letters, digits and _ . : @ / + -, "
        "starting with a letter or digit (got 'w-a\\nb')",
        "services[0].backend.service: must be an ECS service name (up to 255 letters, digits, "
        "- and _) or ARN (got 's-a\\nb')",
        "services[0].k\\ntaskqueue-scaler: scaler.yml: servi...: unknown key"]
    assert all(e.isprintable() for e in errors)


def test_a_for_each_item_in_an_error_line_is_escaped():
    text = minimal(name='"w-{{ item|length }}"', for_each='["a\\nb\\u202e"]',
                   rules="[{type: expression, query: '{{ nope }}'}]")
    assert errors_of(text) == [
        "services[0].rules[0].query: template: 'nope' is undefined (for_each item=a\\nb\\u202e)"]


def test_every_error_line_is_short():
    text = "prometheus: {url: 'http://p', bearer_token_env: " + "T" * 5000 + "}\nservices: []"
    (line,) = errors_of(text)
    assert line == ("prometheus.bearer_token_env: environment variable " + "T" * 5000)[:497] + "..."


def test_a_value_shown_in_an_error_never_shows_a_urls_password():
    command = "celery --broker redis://:s3cretPW@cache:6379/0 -A 'app worker"
    errors = errors_of(minimal(backend=f'{{type: local, command: "{command}"}}'))
    assert errors == ["services[0].backend.command: cannot split into arguments: No closing "
                      "quotation (got \"celery --broker redis://***@cache:6379/0 -A 'app "
                      "worker\")"]
