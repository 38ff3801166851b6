"""Rule arithmetic and strict reduction of query results: table tests."""

from __future__ import annotations

import math

import pytest

from scaler.rules import Drain, Expression, PerWorker, RuleError, Threshold, reduce_result


@pytest.mark.parametrize(
    ("values", "aggregate", "on_empty", "expected"),
    [
        ([7.0], None, "hold", 7.0),
        ([3.0, 4.5], "sum", "hold", 7.5),
        ([3.0, 4.5], "max", "hold", 4.5),
        ([], None, "zero", 0.0),
        ([0.0], None, "hold", 0.0),
    ],
)
def test_reduce_result(values, aggregate, on_empty, expected):
    assert reduce_result(values, aggregate, on_empty) == expected


@pytest.mark.parametrize(
    ("values", "aggregate", "kind", "message"),
    [
        ([], None, "no_data", "query returned no series"),
        ([1.0, 2.0], None, "several_series",
         'query returned 2 series; set match_labels (e.g. {queue: "..."}, with `by (queue)` '
         "in the query) so the service reads its own series, or aggregate: sum or max"),
        ([math.nan], None, "not_finite", "query returned nan"),
        ([1.0, math.inf], "sum", "not_finite", "query returned inf"),
        ([-math.inf], "max", "not_finite", "query returned -inf"),
    ],
)
def test_reduce_result_errors(values, aggregate, kind, message):
    with pytest.raises(RuleError) as caught:
        reduce_result(values, aggregate, "hold")
    assert (caught.value.kind, str(caught.value)) == (kind, message)


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [(0, 20, 0), (1, 20, 1), (20, 20, 1), (21, 20, 2), (1000, 20, 50), (80.0000000001, 20, 4)],
)
def test_per_worker(value, target, expected):
    assert PerWorker(target).recommend(value, current=3, pending=0) == expected


@pytest.mark.parametrize(
    ("backlog", "throughput", "arrival", "within", "startup", "expected"),
    [
        # The blog's example: 1 worker does 2 tasks/min; 1,000 tasks in 100 min need 5.
        (1000, 2 / 60, 0, 6000, 0, 5),
        # A minute to start: the 5 would be 59 s late; 6 make it.
        (1000, 2 / 60, 0, 6000, 60, 6),
        # Arrivals during the window are work too: 1 task/s for 100 min is 30 more workers.
        (1000, 2 / 60, 1, 6000, 0, 35),
        (0, 1, 0, 60, 10, 0),
        (-5, 1, 0, 60, 10, 0),  # a negative backlog (a subtraction in PromQL) is none
    ],
)
def test_drain(backlog, throughput, arrival, within, startup, expected):
    assert Drain(within, startup).recommend(backlog, throughput, arrival) == expected


@pytest.mark.parametrize(
    ("backlog", "throughput", "arrival", "running", "expected"),
    [
        # 4 running at 1 task/s for 100 s do 400: enough for 300, and 3 would do.
        (300, 1.0, 0.0, 4, 3),
        (0, 1.0, 2.5, 4, 3),  # steady: ceil(arrival / throughput), no start-up charged
        (400, 1.0, 0.0, 4, 4),
        # 1000 to do, 400 by the running 4; 600 more at 1 x (100 - 40) per new worker.
        (1000, 1.0, 0.0, 4, 14),
        (700, 1.0, 3.0, 4, 14),  # 700 + 3 x 100 is the same 1000
        (401, 1.0, 0.0, 4, 5),
        (0, 1.0, 0.0, 4, 0),
        (100, 1.0, 0.0, -1, 2),  # a negative count is none: (100 / 60) new
    ],
)
def test_drain_counts_running_workers_without_start_up(backlog, throughput, arrival, running,
                                                       expected):
    assert Drain(100, 40).recommend(backlog, throughput, arrival, running) == expected


@pytest.mark.parametrize(
    ("throughput", "arrival", "message"),
    [(0, 0, "throughput must be > 0 (got 0)"), (1, -1, "arrival rate must be >= 0 (got -1)")],
)
def test_drain_bad_values(throughput, arrival, message):
    with pytest.raises(RuleError) as caught:
        Drain(60, 0).recommend(10, throughput, arrival)
    assert (caught.value.kind, str(caught.value)) == ("bad_value", message)


@pytest.mark.parametrize(
    ("rule", "value", "current", "pending", "expected"),
    [
        (Threshold(60, 10, 2, None), 61, 3, 0, 5),
        (Threshold(60, 10, 2, None), 60, 3, 0, 3),  # at the bound: hold
        (Threshold(60, 10, 2, None), 30, 3, 0, 3),
        (Threshold(60, 10, 2, None), 9, 3, 0, 1),
        (Threshold(60, 10, 2, None), 9, 1, 0, 0),
        (Threshold(60, 10, 2, None), 61, 3, 2, 3),  # tasks still starting: no second step
        (Threshold(60, 10, 2, None), 9, 3, 2, 1),  # but stepping down is not held
        (Threshold(60, None, 1, None), 0, 3, 0, 3),  # no lower bound: never steps down
        (Threshold(60, 10, 1, 1.5), 61, 4, 0, 6),
        (Threshold(60, 10, 1, 1.5), 61, 1, 0, 2),  # a factor always adds at least one
        (Threshold(60, 10, 1, 1.5), 61, 0, 0, 1),
        (Threshold(60, 10, 1, 2.0), 1, 6, 0, 3),
        (Threshold(60, 10, 1, 2.0), 1, 1, 0, 0),
    ],
)
def test_threshold(rule, value, current, pending, expected):
    assert rule.recommend(value, current, pending) == expected


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (3, 3), (3.2, 4), (-2, 0)])
def test_expression(value, expected):
    assert Expression().recommend(value, current=5, pending=0) == expected
