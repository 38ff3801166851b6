"""`taskqueue-scaler backtest`: the pure stepping core by table, then the whole command
against a real Prometheus holding an hour of history backfilled with promtool."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scaler import cli
from scaler.config import DEFAULT_HEALTH_QUERY as HEALTH
from scaler.config import ServiceConfig, parse_config
from scaler.decision import Reason
from scaler.prometheus import PrometheusClient, QueryError, RangeSeries
from scaler.simulation import backtest as bt
from tests.services import PrometheusServer, free_port, require, wait_for

DEPTH = 'sum(taskqueue_queue_depth{queue="default"})'
# per_worker 10 on the depth; no tolerance; up at most +4 per 15 s at once, down at most
# -2 per 15 s and only to the highest recommendation of the last 60 s.
CONFIG = """\
prometheus: {{url: '{url}'}}
interval: 15s
services:
  - name: celery-default
    backend: {{cluster: c, service: s, region: us-east-1}}
    min: 1
    max: 10
    rules:
      - name: depth
        type: per_worker
        query: '{query}'
        target: 10{extra}
    behavior:
      tolerance: 0
      scale_up:
        stabilization_window: 0s
        policies: [{{type: workers, value: 4, period: 15s}}]
      scale_down:
        stabilization_window: 60s
        policies: [{{type: workers, value: 2, period: 15s}}]
"""
T = 1_700_000_000.0  # unit tests' start
# Valid PromQL (a config refuses a syntax error) that Prometheus refuses to run.
REJECTED = "sum(taskqueue_queue_depth @ 1e20)"
PNG = b"\x89PNG\r\n\x1a\n"


def config_text(url: str = "http://127.0.0.1:9", query: str = DEPTH, extra: str = "") -> str:
    return CONFIG.format(url=url, query=query, extra=extra)


def service(query: str = DEPTH, extra: str = "") -> ServiceConfig:
    return parse_config(config_text(query=query, extra=extra), {}).services[0]


def series(values: Sequence[float | None], labels: dict[str, str] | None = None,
           start: float = T, step: float = 15) -> RangeSeries:
    """A range series with a point at each step whose value is not None."""
    return RangeSeries(labels or {}, tuple((start + k * step, v)
                                           for k, v in enumerate(values) if v is not None))


def times(n: int, start: float = T, step: float = 15) -> list[float]:
    return [start + k * step for k in range(n)]


def decisions(steps: Sequence[bt.Step]) -> list[tuple[int, int, str]]:
    return [(s.before, s.would_be, s.reason.value) for s in steps]


# --- the stepping core, no Prometheus --------------------------------------------------------


def test_each_step_starts_from_the_previous_decision_not_the_actual_count():
    # Depth 0, 50, 100, 100: per_worker 10 asks 0, 5, 10, 10. Starting from the actual 2:
    # 0 -> min 1 (AtMin); 1 -> 5 (+4 allowed: ScaleUp); 5 -> 9 (wants 10, +4 allowed:
    # ScaleUpLimited); 9 -> 10. The actual count after the first step (8, 8, 8) never
    # enters: open loop, the scaler's own decision is taken as done.
    steps = bt.replay(service(), times(4), {DEPTH: [series([0, 50, 100, 100])]},
                      [2, 8, 8, 8])
    assert decisions(steps) == [(2, 1, "AtMin"), (1, 5, "ScaleUp"), (5, 9, "ScaleUpLimited"),
                                (9, 10, "ScaleUp")]
    assert [s.actual for s in steps] == [2, 8, 8, 8]
    assert [s.values for s in steps] == [{"depth": v} for v in (0, 50, 100, 100)]
    assert [s.recommendation for s in steps] == [0, 5, 10, 10]
    assert all(s.errors == () for s in steps)


@pytest.mark.parametrize(("actual", "first"), [
    ([None, 3, 3], 1),  # unknown at the start: the service's min
    ([4, None, None], 4),
    ([4.4, None, None], 4),  # a fractional count (an average somewhere) is rounded
    ([-1, None, None], 1),  # a negative count is no count
])
def test_the_first_step_starts_from_the_actual_count_when_known(actual, first):
    steps = bt.replay(service(), times(3), {DEPTH: [series([30, 30, 30])]}, actual)
    assert steps[0].before == first
    # Depth 30 asks 3 workers: up from 1 (+4 allowed), down from 4 (-2 allowed).
    assert [s.would_be for s in steps] == [3, 3, 3]


def test_the_scale_down_window_and_rate_policy_carry_from_step_to_step():
    # Depth 100 for 4 steps then 30: the 60 s window keeps the 10 until the last 10
    # leaves it (t > now - 60: 3 steps), then -2 per step down to 3.
    depth = [100] * 4 + [30] * 8
    steps = bt.replay(service(), times(12), {DEPTH: [series(depth)]}, [10] + [None] * 11)
    assert decisions(steps) == [
        (10, 10, "Hold"), (10, 10, "Hold"), (10, 10, "Hold"), (10, 10, "Hold"),
        (10, 10, "ScaleDownStabilized"), (10, 10, "ScaleDownStabilized"),
        (10, 10, "ScaleDownStabilized"),
        (10, 8, "ScaleDownLimited"), (8, 6, "ScaleDownLimited"), (6, 4, "ScaleDownLimited"),
        (4, 3, "ScaleDown"), (3, 3, "Hold"),
    ]


def test_a_step_without_a_point_is_a_query_without_that_series():
    # The depth has no point at steps 1 and 2: the rule has no data there (on_empty: hold),
    # so the count holds (NoData), and the window still remembers the 5 of step 0.
    steps = bt.replay(service(), times(4), {DEPTH: [series([50, None, None, 0])]},
                      [5, 5, 5, 5])
    assert decisions(steps) == [(5, 5, "Hold"), (5, 5, "NoData"), (5, 5, "NoData"),
                                (5, 5, "ScaleDownStabilized")]
    assert [s.values for s in steps] == [{"depth": 50}, {"depth": None}, {"depth": None},
                                         {"depth": 0}]
    assert steps[1].errors == ("rule depth: query returned no series",)
    assert steps[3].errors == ()




def test_a_missing_point_reads_as_zero_with_on_empty_zero_while_the_exporter_is_healthy():
    # The exporter's health is part of the history too: at step 3 it read no broker (0),
    # so that step's missing point holds instead of reading as 0.
    steps = bt.replay(service(extra="\n        on_empty: zero"), times(4),
                      {DEPTH: [series([50, None, 50, None])], HEALTH: [series([1, 1, 1, 0])]},
                      [5, None, None, None])
    assert decisions(steps) == [(5, 5, "Hold"), (5, 5, "ScaleDownStabilized"),
                                (5, 5, "Hold"), (5, 5, "NoData")]
    assert steps[1].values == {"depth": 0.0} and steps[1].errors == ()
    assert steps[3].errors == (
        "rule depth: query returned no series; on_empty: zero does not apply: "
        "health_query is 0 (an exporter cannot read its broker?)",)


def test_a_series_missing_at_a_step_leaves_the_others():
    # One `sum by (queue)` query, read through match_labels: the other queue's series has
    # every point, this service's has none at step 1.
    grouped = "sum by (queue) (taskqueue_queue_depth)"
    svc = service(query=grouped, extra="\n        match_labels: {queue: default}")
    ranges = {grouped: [series([900, 900, 900], {"queue": "other"}),
                        series([20, None, 40], {"queue": "default"})]}
    steps = bt.replay(svc, times(3), ranges, [2, 2, 2])
    assert decisions(steps) == [(2, 2, "Hold"), (2, 2, "NoData"), (2, 4, "ScaleUp")]
    assert steps[1].errors == (
        'rule depth: query returned no series matching {queue="default"}',)


def test_a_failed_query_is_its_error_at_every_step():
    error = QueryError("query", f"prometheus rejected query '{REJECTED}' (bad_data): "
                       "parse error", query=REJECTED)
    steps = bt.replay(service(query=REJECTED), times(3), {REJECTED: error}, [3, 3, 3])
    assert decisions(steps) == [(3, 3, "NoData")] * 3
    assert all(s.errors == (f"rule depth: prometheus rejected query '{REJECTED}' (bad_data): "
                            "parse error",) for s in steps)
    assert all(s.values == {"depth": None} for s in steps)


def test_actual_counts_take_the_highest_series_and_leave_gaps_unknown():
    found = bt.actual_counts(times(5), [series([1, 2, None, math.nan, math.inf]),
                                        series([3, None, None, None, None])])
    assert found == [3, 2, None, None, None]
    assert bt.actual_counts(times(2), []) == [None, None]


def test_grid_is_prometheus_evaluation_times_in_milliseconds():
    assert bt.grid(T, T + 60, 15) == [T, T + 15, T + 30, T + 45, T + 60]
    assert bt.grid(T, T + 59.9, 15) == [T, T + 15, T + 30, T + 45]  # never past `to`
    assert bt.grid(T, T, 15) == [T]
    assert bt.grid(T + 0.0004, T + 0.5, 0.25) == [T, T + 0.25, T + 0.5]


def _step(would_be: int, actual: float | None, before: int | None = None,
          errors: tuple[str, ...] = ()) -> bt.Step:
    return bt.Step(T, would_be if before is None else before, would_be, Reason.HOLD, None,
                   actual, {}, errors)


def test_summary_compares_only_where_the_actual_count_is_known():
    steps = [_step(1, 2, before=3), _step(5, 2, before=1), _step(5, None),
             _step(2, 4, before=5, errors=("x",)), _step(2, 2)]
    assert bt.summarize(steps, 15) == bt.Summary(
        steps=5, step_seconds=15, steps_with_actual=4,
        would_be_worker_seconds=(1 + 5 + 2 + 2) * 15, actual_worker_seconds=(2 + 2 + 4 + 2) * 15,
        would_be_changes=3, would_be_peak=5, would_be_low=1, actual_peak=4, actual_low=2,
        steps_above_actual=1, steps_below_actual=2, steps_with_errors=1)
    empty = bt.summarize([_step(3, None)], 60)
    assert (empty.steps_with_actual, empty.actual_worker_seconds, empty.actual_peak,
            empty.would_be_worker_seconds, empty.would_be_peak) == (0, 0.0, None, 0.0, 3)


# --- options ---------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T10:00:00Z", 1714557600.0),
    ("2024-05-01T12:00:00+02:00", 1714557600.0),
    ("2024-05-01 10:00:00.5Z", 1714557600.5),
    ("1714557600", 1714557600.0),
    ("1714557600.25", 1714557600.25),
    ("now", NOW),
    ("-6h", NOW - 6 * 3600),
    ("-30m", NOW - 1800),
    ("now-2d", NOW - 2 * 86400),
    ("-1.5h", NOW - 5400),
    ("-90s", NOW - 90),
])
def test_times(text, expected):
    assert bt.parse_time("--from", text, NOW) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("yesterday", "--from: cannot read 'yesterday' as a time; use ISO 8601 with Z or an offset "
                  "(2024-05-01T10:00:00Z), epoch seconds, now, or -6h"),
    ("2024-13-01T00:00:00Z", "--from: cannot read '2024-13-01T00:00:00Z' as a time"),
    ("2024-05-01T10:00:00", "--from: '2024-05-01T10:00:00' has no time zone; add Z (UTC) or "
                            "an offset like +02:00"),
    ("-6x", "--from: cannot read '-6x' as a time"),
])
def test_bad_times_name_the_option_and_the_value(text, message):
    with pytest.raises(bt.UsageError) as caught:
        bt.parse_time("--from", text, NOW)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_from_after_to_is_refused():
    with pytest.raises(bt.UsageError) as caught:
        bt.parse_range("-1h", "-2h", NOW)
    assert str(caught.value) == ("--from '-1h' (2027-01-15 07:00:00Z) is after --to '-2h' "
                                 "(2027-01-15 06:00:00Z)")
    assert bt.parse_range("-1h", "now", NOW) == (NOW - 3600, NOW)


def test_step_defaults_to_the_interval():
    assert bt.parse_step(None, 15.0) == 15.0
    assert bt.parse_step("1m", 15.0) == 60.0
    assert bt.parse_step("30", 15.0) == 30.0
    for bad in ("0s", "fast"):
        with pytest.raises(bt.UsageError, match=r"^--step: "):
            bt.parse_step(bad, 15.0)


def test_service_selection_and_the_actual_query_template():
    config = parse_config(config_text(), {})
    assert bt.select_services(config, None) == list(config.services)
    assert bt.select_services(config, ["celery-default"]) == list(config.services)
    with pytest.raises(bt.UsageError) as caught:
        bt.select_services(config, ["nope"])
    assert str(caught.value) == ("--service: no service named 'nope' in the config "
                                 "(services: celery-default)")
    assert bt.actual_query_for(bt.DEFAULT_ACTUAL_QUERY, 'a"b') == (
        'max(taskqueue_scaler_current_replicas{service="a\\"b",state="running"})')
    assert bt.actual_query_for("x{s=\"{{service}}\"} + y", "w") == 'x{s="w"} + y'


def test_one_plot_per_service_when_there_are_several():
    assert bt.plot_paths("out/b.png", ["w"]) == {"w": "out/b.png"}
    assert bt.plot_paths("out/b.png", ["w", "a/b c"]) == {"w": "out/b-w.png",
                                                          "a/b c": "out/b-a_b_c.png"}


# --- against a real Prometheus with backfilled history ---------------------------------------
#
# An hour of history, 241 samples 15 s apart, three hours ago (whole hours, so the dates
# in the expected output are easy to read). Sample k is at T0 + 15k. The backtest steps
# run 5 s after the samples (g_k = T0 + 5 + 15k), so no step sits exactly on Prometheus'
# 5-minute lookback edge: step k reads sample k, or the last sample in the 5 minutes
# before it.
#
#   depth (queue default): k 0-3: 0 | k 4: 50 | k 5-11: 100 | k 12-39: 30 | k 40-59: 0 |
#                          k 60-99: no samples | k 100-240: 20
#   running:               k 0-29: 2 | k 30-119: 4 | k 120-149: 3 | k 150-189: none |
#                          k 190-240: 3
#   desired:               7 throughout (the default actual query must not read it)


def _depth(k: int) -> float | None:
    if k <= 3:
        return 0
    if k == 4:
        return 50
    if k <= 11:
        return 100
    if k <= 39:
        return 30
    if k <= 59:
        return 0
    return None if k <= 99 else 20


def _running(k: int) -> float | None:
    if 150 <= k <= 189:
        return None
    return 2 if k < 30 else 4 if k < 120 else 3


def openmetrics(t0: int) -> str:
    lines = ["# TYPE taskqueue_queue_depth gauge"]
    for k in range(241):
        if (depth := _depth(k)) is not None:
            lines.append(f'taskqueue_queue_depth{{queue="default",system="celery"}} {depth:g} '
                         f"{t0 + 15 * k}")
        # Another queue, which the rule's selector leaves out.
        lines.append(f'taskqueue_queue_depth{{queue="other",system="celery"}} 500 {t0 + 15 * k}')
    lines.append("# TYPE taskqueue_scaler_current_replicas gauge")
    for k in range(241):
        if (running := _running(k)) is not None:
            lines.append('taskqueue_scaler_current_replicas{service="celery-default",'
                         f'state="running"}} {running:g} {t0 + 15 * k}')
        lines.append('taskqueue_scaler_current_replicas{service="celery-default",'
                     f'state="desired"}} 7 {t0 + 15 * k}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


class History:
    def __init__(self, server: PrometheusServer, t0: int) -> None:
        self.server = server
        self.t0 = t0
        self.start = t0 + 5.0
        self.end = t0 + 5.0 + 15 * 239  # 240 steps

    def at(self, k: int) -> float:
        return self.start + 15 * k


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    promtool = require("promtool")
    directory = tmp_path_factory.mktemp("backfilled")
    t0 = (int(time.time()) // 3600 - 3) * 3600
    source = directory / "history.om"
    source.write_text(openmetrics(t0))
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source),
                    str(directory / "data")], check=True, capture_output=True, timeout=60)
    server = PrometheusServer(directory).start()  # its TSDB is directory / "data"
    try:
        with PrometheusClient(bt_settings(server.url)) as client:
            # Blocks are loaded at start-up; poll rather than assume.
            wait_for(lambda: client.query_samples(DEPTH, at=t0 + 15 * 20 + 5)[0].value == 30,
                     what="the backfilled history to be served")
        yield History(server, t0)
    finally:
        server.stop()


def bt_settings(url: str) -> Any:
    return parse_config(config_text(url=url), {}).prometheus


# Per step, by hand (the rule asks ceil(depth / 10); the count starts at the actual 2):
WOULD_BE = ([1] * 4 + [5, 9] + [10] * 9 + [8, 6, 4] + [3] * 25 + [1] * 57 + [2] * 140)
REASONS = (["AtMin"] * 4                     # k 0-3
           + ["ScaleUp", "ScaleUpLimited", "ScaleUp"]  # k 4-6
           + ["Hold"] * 5                    # k 7-11
           + ["ScaleDownStabilized"] * 3     # k 12-14: the 10s of k 9-11 are in the window
           + ["ScaleDownLimited"] * 3        # k 15-17: 10 -> 8 -> 6 -> 4
           + ["ScaleDown"]                   # k 18: 4 -> 3, the wanted 3 within -2
           + ["Hold"] * 21                   # k 19-39: depth 30, 3 workers
           + ["ScaleDownStabilized"] * 3     # k 40-42: depth 0, the 3s still in the window
           + ["AtMin"] * 36                  # k 43: 3 -> 1 (wants 0, min 1); k 44-78: held
           #                                   (k 60-78 still see sample 59, within 5 min)
           + ["NoData"] * 21                 # k 79-99: no depth sample in 5 min: hold at 1
           + ["ScaleUp"]                     # k 100, depth 20: 1 -> 2
           + ["Hold"] * 139)                 # k 101-239
# The actual running count per step: k 150-168 still see sample 149 (3), k 169-189 none.
ACTUAL = [2.0] * 30 + [4.0] * 90 + [3.0] * 49 + [None] * 21 + [3.0] * 50
CHANGES = [  # (step, from, to, reason)
    (0, 2, 1, "AtMin"), (4, 1, 5, "ScaleUp"), (5, 5, 9, "ScaleUpLimited"), (6, 9, 10, "ScaleUp"),
    (15, 10, 8, "ScaleDownLimited"), (16, 8, 6, "ScaleDownLimited"),
    (17, 6, 4, "ScaleDownLimited"), (18, 4, 3, "ScaleDown"), (43, 3, 1, "AtMin"),
    (100, 1, 2, "ScaleUp"),
]
SUMMARY = {
    "steps": 240,
    "step_seconds": 15.0,
    "steps_with_actual": 219,
    # Over the 219 steps with an actual count: all would-be counts (538) less the 21
    # steps at 2 where the actual is unknown (42), x 15 s.
    "would_be_worker_seconds": (538 - 42) * 15.0,
    # 2 x 30 + 4 x 90 + 3 x 49 + 3 x 50 = 717 worker-steps.
    "actual_worker_seconds": 717 * 15.0,
    "would_be_changes": 10,
    "would_be_peak": 10,
    "would_be_low": 1,
    "actual_peak": 4.0,
    "actual_low": 2.0,
    # Above: k 4-29 (26 steps, 3 to 10 workers against 2). Below: k 0-3 (1 < 2), k 30-42
    # (3 < 4), k 43-99 (1 < 4), k 100-119 (2 < 4), k 120-168 and 190-239 (2 < 3).
    "steps_above_actual": 26,
    "steps_below_actual": 4 + 13 + 57 + 20 + 49 + 50,
    "steps_with_errors": 21,
}


def test_the_hand_computed_expectations_add_up():
    assert len(WOULD_BE) == len(REASONS) == len(ACTUAL) == 240
    assert sum(WOULD_BE) == 538
    assert sum(1 for a in ACTUAL if a is not None) == 219


@pytest.mark.integration
def test_backtest_against_backfilled_history_gives_the_expected_decisions(history):
    config = parse_config(config_text(url=history.server.url), {})
    with PrometheusClient(config.prometheus) as client:
        result = bt.backtest(config, client.query_range, history.start, history.end, 15)
    (svc,) = result.services
    assert [s.t for s in svc.steps] == [history.at(k) for k in range(240)]
    assert [s.would_be for s in svc.steps] == WOULD_BE
    assert [s.reason.value for s in svc.steps] == REASONS
    assert [s.actual for s in svc.steps] == ACTUAL
    assert [(k, s.before, s.would_be, s.reason.value) for k, s in enumerate(svc.steps)
            if s.would_be != s.before] == CHANGES
    assert [s.values["depth"] for s in svc.steps[:8]] == [0, 0, 0, 0, 50, 100, 100, 100]
    assert all(s.values == {"depth": None} and s.errors == (
        "rule depth: query returned no series",) for s in svc.steps[79:100])
    assert svc.actual_query == (
        'max(taskqueue_scaler_current_replicas{service="celery-default",state="running"})')
    assert svc.actual_error is None
    assert bt.to_json(result)["services"][0]["summary"] == SUMMARY


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["backtest", *args], environ={})
    out, err = capsys.readouterr()
    return code, out, err


def write_config(tmp_path: Path, url: str, query: str = DEPTH) -> str:
    path = tmp_path / "scaler.yml"
    path.write_text(config_text(url=url, query=query))
    return str(path)


def iso(t: float, suffix: str = "Z") -> str:
    text = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + suffix


@pytest.mark.integration
def test_cli_table(history, tmp_path, capsys):
    # The config's Prometheus is nowhere; --prometheus-url points at the real one.
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    code, out, err = run_cli(capsys, "--config", config, "--from", iso(history.start, "+00:00"),
                             "--to", f"{history.end:.0f}", "--prometheus-url", history.server.url)
    assert (code, err) == (0, "")

    def at(k: int) -> str:
        return bt.utc(history.at(k))

    assert out == f"""\
service celery-default: {at(0)} .. {at(239)}, step 15s, 240 steps
  actual: known at 219 of 240 steps (max(taskqueue_scaler_current_replicas{{service="celery-default",state="running"}}))
                                would-be      actual
  worker-seconds (219 steps)       7,440      10,755
  peak                                10           4
  low                                  1           2
  changes                             10
  steps above actual                  26
  steps below actual                 193

  would-be changes:
  time (UTC)            from → to  reason            actual  rules
  {at(0)}  2 → 1      AtMin             2       depth=0
  {at(4)}  1 → 5      ScaleUp           2       depth=50
  {at(5)}  5 → 9      ScaleUpLimited    2       depth=100
  {at(6)}  9 → 10     ScaleUp           2       depth=100
  {at(15)}  10 → 8     ScaleDownLimited  2       depth=30
  {at(16)}  8 → 6      ScaleDownLimited  2       depth=30
  {at(17)}  6 → 4      ScaleDownLimited  2       depth=30
  {at(18)}  4 → 3      ScaleDown         2       depth=30
  {at(43)}  3 → 1      AtMin             4       depth=0
  {at(100)}  1 → 2      ScaleUp           4       depth=20

  errors (21 of 240 steps):
  21 steps, {at(79)} .. {at(99)}: rule depth: query returned no series
"""  # noqa: E501


@pytest.mark.integration
def test_cli_json_and_plot(history, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    config = write_config(tmp_path, history.server.url)
    plot = tmp_path / "backtest.png"
    code, out, err = run_cli(capsys, "--config", config, "--from", iso(history.start),
                             "--to", iso(history.end), "--step", "15s", "--json",
                             "--plot", str(plot), "--service", "celery-default")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert list(document) == ["from", "to", "step_seconds", "services"]
    assert (document["from"], document["to"], document["step_seconds"]) == (
        iso(history.start), iso(history.end), 15.0)
    (svc,) = document["services"]
    assert list(svc) == ["service", "actual_query", "actual_error", "plot", "summary", "steps"]
    assert (svc["service"], svc["actual_error"], svc["plot"]) == (
        "celery-default", None, str(plot))
    assert svc["summary"] == SUMMARY
    assert len(svc["steps"]) == 240
    assert svc["steps"][5] == {
        "time": history.at(5), "time_utc": iso(history.at(5)), "before": 5, "would_be": 9,
        "reason": "ScaleUpLimited", "recommendation": 10, "actual": 2.0,
        "values": {"depth": 100.0}, "errors": [],
    }
    assert svc["steps"][80] == {
        "time": history.at(80), "time_utc": iso(history.at(80)), "before": 1, "would_be": 1,
        "reason": "NoData", "recommendation": None, "actual": 4.0,
        "values": {"depth": None}, "errors": ["rule depth: query returned no series"],
    }
    assert svc["steps"][175]["actual"] is None
    assert [s["would_be"] for s in svc["steps"]] == WOULD_BE
    assert [s["reason"] for s in svc["steps"]] == REASONS
    assert plot.read_bytes().startswith(PNG)


@pytest.mark.integration
def test_cli_actual_query_template_and_relative_times(history, tmp_path, capsys):
    config = write_config(tmp_path, history.server.url)
    desired = 'max(taskqueue_scaler_current_replicas{service="{{ service }}",state="desired"})'
    code, out, err = run_cli(capsys, "--config", config, "--from", f"{history.start:.0f}",
                             "--to", f"{history.end:.0f}", "--json", "--actual-query", desired)
    assert (code, err) == (0, "")
    (svc,) = json.loads(out)["services"]
    assert svc["actual_query"] == desired.replace("{{ service }}", "celery-default")
    assert {s["actual"] for s in svc["steps"]} == {7.0}
    assert svc["steps"][0]["before"] == 7  # the first step starts from the actual count
    # `--from -4h` (not taken for an option) up to now, at one step a minute: 241 steps.
    code, out, err = run_cli(capsys, "--config", config, "--from", "-4h", "--to", "now",
                             "--step", "1m", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["services"][0]["summary"]["steps"] == 241


@pytest.mark.integration
def test_cli_a_rejected_query_is_its_error_at_every_step(history, tmp_path, capsys):
    config = write_config(tmp_path, history.server.url, query=REJECTED)
    code, out, err = run_cli(capsys, "--config", config, "--from", f"{history.start:.0f}",
                             "--to", f"{history.end:.0f}")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "  no changes: the scaler would have kept 2 workers" in lines
    assert lines[-2:] == [
        "  errors (240 of 240 steps):",
        f"  240 steps, {bt.utc(history.at(0))} .. {bt.utc(history.at(239))}: rule depth: "
        f"prometheus rejected query '{REJECTED}' (bad_data): 1:5: "
        "parse error: timestamp out of bounds for @ modifier: 100000000000000000000.000000",
    ]
    code, out, _ = run_cli(capsys, "--config", config, "--from", f"{history.start:.0f}",
                           "--to", f"{history.end:.0f}", "--json")
    steps = json.loads(out)["services"][0]["steps"]
    assert {(s["would_be"], s["reason"]) for s in steps} == {(2, "NoData")}
    assert all(len(s["errors"]) == 1 and "timestamp out of bounds" in s["errors"][0]
               for s in steps)


def test_cli_unreachable_prometheus_is_one_line_and_exit_1(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, url)
    code, out, err = run_cli(capsys, "--config", config, "--from", "-1h")
    assert (code, out) == (1, "")
    assert err == (f"taskqueue-scaler: error: cannot reach prometheus at {url} for query "
                   f"'{DEPTH}': Connection refused\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "yesterday"], "--from: cannot read 'yesterday' as a time; use ISO 8601 with Z "
                              "or an offset (2024-05-01T10:00:00Z), epoch seconds, now, or -6h"),
    (["--from", "-1h", "--to", "2024-05-01T10:00:00"],
     "--to: '2024-05-01T10:00:00' has no time zone; add Z (UTC) or an offset like +02:00"),
    (["--from", "1714557600", "--to", "1714554000"],
     "--from '1714557600' (2024-05-01 10:00:00Z) is after --to '1714554000' "
     "(2024-05-01 09:00:00Z)"),
    (["--from", "-1h", "--step", "soon"],
     "--step: must be a duration like 30s, 5m or 1h (got 'soon')"),
    (["--from", "-1h", "--service", "nope"],
     "--service: no service named 'nope' in the config (services: celery-default)"),
    (["--from", "-1h", "--prometheus-url", "prometheus:9090"],
     "--prometheus-url: prometheus url must be http(s)://host[:port][/path], "
     "got 'prometheus:9090'"),
    (["--from", "-400d", "--step", "1s"],
     "--step: 1s from --from to --to is 34560001 steps; at most 1000000 (use a larger --step)"),
])
def test_cli_bad_options_are_one_line_naming_the_option_and_exit_2(tmp_path, capsys, args,
                                                                   message):
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    code, out, err = run_cli(capsys, "--config", config, *args)
    assert (code, out, err) == (2, "", f"taskqueue-scaler: error: {message}\n")


def test_cli_config_errors_are_all_listed_and_exit_2(tmp_path, capsys):
    path = tmp_path / "scaler.yml"
    path.write_text(config_text().replace("min: 1", "min: -1").replace("target: 10", "target: 0"))
    code, out, err = run_cli(capsys, "--config", str(path), "--from", "-1h")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"taskqueue-scaler: {path}: services[0].min: must be >= 0 (got -1)",
        f"taskqueue-scaler: {path}: services[0].rules[0].target: must be > 0 (got 0)",
    ]


def test_cli_missing_from_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["backtest", "--config", write_config(tmp_path, "http://127.0.0.1:9")])
    assert caught.value.code == 2
    assert "the following arguments are required: --from" in capsys.readouterr().err
