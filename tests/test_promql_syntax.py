"""PromQL syntax checked offline: errors found, valid queries never refused.

Every query the repository ships (configs, alert and recording rules, their promtool
tests, the Grafana dashboards) must pass; so must queries Prometheus accepts, which
promtool (Prometheus's own parser) confirms for a table of less common forms.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from scaler import promql_syntax
from scaler.evaluate import queries_of
from tests import test_deploy_ecs, test_grafana
from tests.services import require
from tests.test_examples import shipped_configs

ROOT = Path(__file__).resolve().parent.parent

# Valid for Prometheus (2.42 at least, the one `make test` installs): nothing here may be
# refused. Prometheus 3 accepts more (UTF-8 names, new functions), never less.
VALID = [
    "x", "sum by (queue) (rate(x[5m]))", "sum(rate(x[5m])) by (queue)",
    'x{a="b",}', "x offset -5m", "x @ end()", "x @ start() offset 1m", "x[5m:]",
    "rate(x[5m:1m])", "max_over_time(rate(x[5m])[1h:5m])", "x[1h30m]", "x[1w]", "x[1y]",
    "0x1F", "Inf", "-Inf", "NaN", "1e3", "- - 1", "+x", "x ^ 2 ^ 3", "x % 2", "x atan2 y",
    "x unless y", "x == bool 1", "x > 1 < 2", '"a string"', "(((x)))",
    "sum by (on, bool, by, offset, group_left) (x)", 'by{a="b"}', "foo:bar:baz",
    "count_values without () (\"v\", x)", "quantile by (a) (0.9, x)", "topk by (a) (3, x)",
    "sum(rate(x[5m])) by (queue) / ignoring(queue) group_left sum(y)",
    "x + on(a) group_left(b) y", 'x{a!~"b|c"}', "x{a='single'}", "x{a=`raw`}",
    'x{a="\\u00e9"}', "# a comment\nsum(x) # and another\n", "histogram_quantile(0.9, x)",
    "holt_winters(x[5m], 0.5, 0.5)", 'label_replace(x, "a", "$1", "b", "(.*)")',
    'label_join(x, "d", ",", "a", "b")', "clamp(x, 0, 1)", "round(x, 0.1)", "days_in_month()",
    "predict_linear(x[5m], 60)", "absent_over_time(x[5m])", "present_over_time(x[1m])",
    "last_over_time(x[5m] @ 100)", "scalar(x) * 2", "vector(1) or x", "time() - x",
    "sum(" + " + ".join(f'x{{queue="{i}"}}' for i in range(500)) + ")",
    # Raw strings have no escapes; matcher regular expressions are Go's (RE2), anchored.
    "sum(taskqueue_queue_depth{queue=~`\\d+`})", "x{a=`\\d`}", 'x{a=~"\\\\w{1,255}"}',
    'x{q=~"\\\\Qa.b\\\\E"}', 'x{a=~"\\\\w{400}"}', "x{a=~`(?i)a|b`, b!~`[[:alpha:]]+`}",
    '{__name__=~"taskqueue_.+"}', '{a!~".*"}', "x{a=~'\\\\d'}", "x{a=~`a\nb`}",
    '{a=~"a|(b)*", b="x"}', "x{a=~ # a comment\n `\\d`}",
]

INVALID = [
    ("sum by (queue) (taskqueue_queue_depth", "unclosed left parenthesis"),
    ("", "no expression found in input"),
    ("1 +", "invalid promql query"),
    ("rate(x)", "expected type matrix in call to function 'rate', got vector"),
    ("rate()", "expected 1 argument(s) in call to 'rate', got 0"),
    ("nosuchfunction(x)", "unknown function with name 'nosuchfunction'"),
    ("x{a=~\"(\"}", "invalid regular expression '(': missing closing )"),
    ("x[5m][5m]", "ranges only allowed for vector selectors"),
    ("x and 1", "set operator 'and' not allowed in binary scalar expression"),
    ("x offset 1m offset 2m", "offset may not be set multiple times"),
    ("x[0s]", "duration must be greater than 0"),
    ("x{a=\"\\q\"}", "unknown escape sequence 'q'"),
    ("sum(x) by (a) without (b)", "invalid promql query"),
]


@pytest.mark.parametrize("query", VALID)
def test_valid_queries_pass(query):
    assert promql_syntax.check(query) is None


def test_the_valid_table_is_valid_for_prometheus(tmp_path):
    """promtool parses each query as a rule: the table above is not our guess."""
    promtool = require("promtool")
    rules = {"groups": [{"name": "g", "rules": [{"record": f"r{i}", "expr": query}
                                               for i, query in enumerate(VALID)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("query", "prepared", "for_names"), [
    ("sum(x{queue=~`\\d+`})", 'sum(x{queue="x"})', 'sum(x{queue=~".+"})'),
    ("x{a=`\\d\"`}", 'x{a="\\\\d\\""}', 'x{a="\\\\d\\""}'),
    ("x{a=`a\nb`}", 'x{a="a\\x0ab"}', 'x{a="a\\x0ab"}'),
    ('{a=~"a*", b!~"b+"}', '{a="", b!="x"}', '{a=~".*", b!~".+"}'),
    ("x{a=~'x', b!~ # c\n 'y*'}", 'x{a="x", b!= \n ""}', 'x{a=~".+", b!~ \n ".*"}'),
    ('x{a="=~"} # `"', 'x{a="=~"} ', 'x{a="=~"} '),
])
def test_raw_strings_and_matcher_expressions_are_prepared_for_the_parser(query, prepared,
                                                                        for_names):
    assert promql_syntax.prepare(query) == prepared
    assert promql_syntax.prepare(query, keep_regex_matchers=True) == for_names


@pytest.mark.parametrize(("query", "problem"), [
    ("x[5m]", "returns a range vector"), ("(x[5m] offset 1m)", "returns a range vector"),
    ("sum(x)[5m:1m]", "returns a range vector"), ("((sum(x)[5m:]))", "returns a range vector"),
    ('"5"', "returns a string, not a number"), ("('a')", "returns a string, not a number"),
])
def test_a_query_a_rule_cannot_read_is_refused_when_an_instant_result_is_wanted(query,
                                                                                problem):
    assert promql_syntax.check(query) is None
    assert promql_syntax.check(query, instant=True).startswith(problem)


@pytest.mark.parametrize("query", ["x", "1", "sum(rate(x[5m]))", "(x)", "-x", "scalar(x)",
                                   "time()", "x @ 5", "max_over_time(x[5m:1m])"])
def test_instant_vectors_and_scalars_are_what_a_rule_reads(query):
    assert promql_syntax.check(query, instant=True) is None


@pytest.mark.parametrize("query", [
    # The old scan of strings took minutes on these (quadratic).
    '"' + '\\"' * 520_000, "'" + "\\'" * 520_000, 'x{a="' + "\\a" * 500_000,
    # The parser compiled each with Rust's Unicode regex: a sixth of a second each.
    "x{" + ",".join(f'l{i}=~"\\\\w{{400}}"' for i in range(60)) + "}",
    "x{" + ",".join(f"l{i}=~`(a|b|c){{100}}d{{10}}`" for i in range(200)) + "}",
    "`" * 100_000 + "'" * 100_000 + "#" * 100_000,
])
def test_a_check_takes_linear_time_whatever_the_strings(query):
    started = time.process_time()
    promql_syntax.check(query)
    assert time.process_time() - started < 0.5


def test_a_parser_message_is_one_short_line():
    problem = promql_syntax.check("nosuchfunction" + "x" * 60_000 + "(1)")
    assert problem.startswith("unknown function with name 'nosuchfunctionxxx")
    assert len(problem) == promql_syntax.MAX_MESSAGE and problem.endswith("...")


def test_a_query_prometheus_refuses_for_its_values_passes():
    # The parser checks syntax and types, not every bound: tests of Prometheus's own
    # refusals (tests/test_sim_backtest.py) use this one.
    assert promql_syntax.check("sum(taskqueue_queue_depth @ 1e20)") is None


@pytest.mark.parametrize(("query", "problem"), INVALID)
def test_invalid_queries_say_why(query, problem):
    assert promql_syntax.check(query) == problem


@pytest.mark.parametrize("query", [
    "x" + " + x" * 5000, "-" * 20000 + "x", "(" * 5000 + "x" + ")" * 5000,
    "abs(" * 3000 + "x" + ")" * 3000, "x" + " and x" * 3000,
])
def test_a_query_nested_deeper_than_the_parser_can_take_is_refused(query):
    # Parsed, any of these overflows the parser's stack and kills the process.
    assert promql_syntax.check(query) == (
        "more than 1000 operators and brackets, too deeply nested to check")


def test_operators_in_strings_matchers_and_comments_do_not_count():
    matchers = ", ".join(f'l{i}=~"a|(b)+-c"' for i in range(2000))
    assert promql_syntax.check(f"sum(x{{{matchers}}}) # " + "+" * 5000) is None


def test_metric_names():
    query = ('sum by (q) (rate(foo{a="b"}[5m])) / on () group_left bar + {__name__="baz"}'
             ' + {__name__=~"re.*"} + queue:taskqueue_backlog:sum offset 5m'
             ' + max_over_time(qux[5m:1m]) + vector(1)')
    assert promql_syntax.metric_names(query) == {
        "foo", "bar", "baz", "queue:taskqueue_backlog:sum", "qux"}
    assert promql_syntax.metric_names("vector(1) + time()") == frozenset()
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        promql_syntax.metric_names("sum(x")


def repository_queries(tmp_path: Path) -> dict[str, str]:
    """Every PromQL query the repository ships, by where it is."""
    found: dict[str, str] = {}
    configs = shipped_configs()
    configs["deploy/ecs/scaler.yml"] = test_deploy_ecs.scaler_config(tmp_path)
    for name, config in configs.items():
        for service in config.services:
            for i, query in enumerate(queries_of(service)):
                found[f"{name} {service.name} {i}"] = query
    for path in sorted((ROOT / "alerts").rglob("*.yml")):
        document = yaml.safe_load(path.read_text())
        for group in document.get("groups", []):
            for rule in group["rules"]:
                found[f"{path.name} {rule.get('alert') or rule.get('record')}"] = rule["expr"]
        for test in document.get("tests", []):
            for i, case in enumerate(test.get("promql_expr_test", [])):
                found[f"{path.name} promql_expr_test {i}"] = case["expr"]
    for path in test_grafana.DASHBOARDS:
        dashboard = test_grafana.load(path)
        values = test_grafana.variable_values(dashboard, "all")
        for panel in test_grafana.query_panels(dashboard):
            for target in panel["targets"]:
                found[f"{path.name} {panel['title']} {target['refId']}"] = test_grafana.render(
                    target["expr"], test_grafana.with_min_interval(values, panel))
    return found


def test_every_query_the_repository_ships_passes(tmp_path):
    queries = repository_queries(tmp_path)
    # Each source is there: configs, rules, rule tests, dashboards.
    assert {where.split()[0] for where in queries} >= {
        "scaler.yml", "compose/scaler.yml", "deploy/ecs/scaler.yml", "demo", "alerts.yml",
        "recording.yml", "queue_alerts_test.yml", "queues.json", "scaler.json"}
    assert {where: promql_syntax.check(q) for where, q in queries.items()
            if promql_syntax.check(q) is not None} == {}
