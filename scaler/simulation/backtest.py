"""`taskqueue-scaler backtest`: what the scaler would have decided over real history.

Open loop. Each service's queries run once over [from, to] with Prometheus' range API,
and at every step the results at that instant go through the same `evaluate` and
`decide` as production, with the stabilization and rate-policy history carried from
step to step. What the scaler decides never reaches the history it reads (the queue
depth it would have drained is still the depth that was recorded), so it is fed its own
previous decision as the desired and running count, with nothing pending: as if every
decision had taken effect at once. The first step starts from the actual count at
`from` when it is known, else from the service's min.

Beside it, the actual count (by default the running count the scaler itself exports,
`taskqueue_scaler_current_replicas{state="running"}`) over the same range, to compare.

The stepping (`replay`) and the summary (`summarize`) are pure functions over range
results; `backtest` is the thin part that asks Prometheus.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scaler.config import ScalerConfig, ServiceConfig, parse_duration, promql_string
from scaler.decision import Counts, History, Reason, decide
from scaler.evaluate import Result, SampleSet, evaluate, queries_of
from scaler.prometheus import QueryError, RangeSeries, Sample

HELP = """\
Replays real history through the scaler's rules, open loop: each service's queries run
once over [--from, --to] with Prometheus' range API, and at every step (the config's
interval, or --step) the decision core decides exactly as in production. The scaler's
decisions cannot change the recorded history, so each step starts from its own previous
decision (as if it had taken effect at once, nothing pending); the first step starts
from the actual count at --from when known, else the service's min.

The actual count comes from --actual-query (default: the running count the scaler
exports); {{ service }} in it stands for each service's name. Prints per service a
summary (worker-seconds, peak and low, how often the scaler would have run more or
fewer workers than the service did) and every change it would have made.

Times: ISO 8601 with Z or an offset (2024-05-01T10:00:00Z), epoch seconds, now, or
relative to now (-6h, -30m, now-2d)."""

# The running count the scaler itself exports (exporter/metric_names.py SCALER_CURRENT);
# max, not sum: two scaler replicas export the same count.
DEFAULT_ACTUAL_QUERY = (
    'max(taskqueue_scaler_current_replicas{service="{{ service }}",state="running"})'
)
# One service's steps are held in memory with their rule values; past this, --step is
# far too fine for the range.
MAX_STEPS = 1_000_000
# A query failing this way says nothing about the rules: the whole backtest would be
# NoData, so it stops instead. A rejected query or an odd answer is per query, and
# shows as that query's error at every step.
_FATAL_KINDS = frozenset({"unreachable", "timeout", "http"})
_SERVICE_PLACEHOLDER = re.compile(r"\{\{\s*service\s*\}\}")
_RELATIVE = re.compile(r"^(?:now)?\s*-\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_EPOCH = re.compile(r"^\d+(?:\.\d+)?$")

RangeQuery = Callable[[str, float, float, float], Sequence[RangeSeries]]
RangeResult = Sequence[RangeSeries] | Exception


class UsageError(ValueError):
    """A bad option value: one line naming the option and the value (exit 2)."""


class BacktestError(RuntimeError):
    """The backtest could not run (Prometheus unreachable, ...): one line (exit 1)."""


@dataclass(frozen=True)
class Step:
    """One evaluation: the count before it, the count the scaler would have set, why."""

    t: float
    before: int
    would_be: int
    reason: Reason
    recommendation: int | None
    actual: float | None
    values: Mapping[str, float | None]  # rule name -> its value (None: it failed)
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Summary:
    steps: int
    step_seconds: float
    # Over the steps where the actual count is known, so the two compare.
    steps_with_actual: int
    would_be_worker_seconds: float
    actual_worker_seconds: float
    would_be_changes: int
    would_be_peak: int | None
    would_be_low: int | None
    actual_peak: float | None
    actual_low: float | None
    steps_above_actual: int
    steps_below_actual: int
    steps_with_errors: int


@dataclass(frozen=True)
class ServiceBacktest:
    service: str
    actual_query: str
    actual_error: str | None  # the actual query failed: the actual count is unknown
    steps: tuple[Step, ...]
    summary: Summary


@dataclass(frozen=True)
class Backtest:
    start: float
    end: float
    step: float
    services: tuple[ServiceBacktest, ...]


# --------------------------------------------------------------------------- options


def parse_time(option: str, text: str, now: float) -> float:
    """Epoch seconds from ISO 8601 with Z or an offset, epoch seconds, `now` or `-6h`.

    An ISO time without an offset is refused: read as local time or as UTC, it would
    be off by hours for someone, silently.
    """
    value = text.strip()
    if value == "now":
        return now
    relative = _RELATIVE.match(value)
    if relative is not None:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    if _EPOCH.match(value):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{option}: cannot read {text!r} as a time; use ISO 8601 with Z or an offset "
            "(2024-05-01T10:00:00Z), epoch seconds, now, or -6h") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{option}: {text!r} has no time zone; add Z (UTC) or an offset "
                         "like +02:00")
    return parsed.timestamp()


def is_relative(text: str) -> bool:
    """`-6h`, `now-30m`: a time relative to now."""
    return _RELATIVE.match(text.strip()) is not None


def parse_range(start: str, end: str, now: float) -> tuple[float, float]:
    """--from and --to, both read against the same `now`."""
    first, last = parse_time("--from", start, now), parse_time("--to", end, now)
    if first > last:
        raise UsageError(f"--from {start!r} ({utc(first)}) is after --to {end!r} ({utc(last)})")
    return first, last


def parse_step(text: str | None, interval: float) -> float:
    """--step as a duration (15s, 1m, or seconds), else the config's interval."""
    if text is None:
        return interval
    try:
        step = float(text) if _EPOCH.match(text.strip()) else parse_duration(text)
    except ValueError as error:
        raise UsageError(f"--step: {error}") from None
    if not (math.isfinite(step) and step >= 0.001):
        raise UsageError(f"--step: must be at least 1ms (got {text!r})")
    return step


def select_services(config: ScalerConfig, names: Sequence[str] | None) -> list[ServiceConfig]:
    if not names:
        return list(config.services)
    by_name = {s.name: s for s in config.services}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise UsageError(f"--service: no service named {unknown[0]!r} in the config "
                         f"(services: {known})")
    return [by_name[n] for n in dict.fromkeys(names)]


def actual_query_for(template: str, service: str) -> str:
    """The actual-count query of one service: `{{ service }}` is its name, PromQL-escaped."""
    return _SERVICE_PLACEHOLDER.sub(lambda _: promql_string(service), template)


# --------------------------------------------------------------------------- pure core


def grid(start: float, end: float, step: float) -> list[float]:
    """The evaluation times of a range query: start, start + step, ... up to end.

    In whole milliseconds, as Prometheus keeps them, so each time equals the
    timestamps of the points it returns.
    """
    start_ms, step_ms = round(start * 1000), round(step * 1000)
    return [(start_ms + k * step_ms) / 1000 for k in range(step_count(start, end, step))]


def step_count(start: float, end: float, step: float) -> int:
    """How many evaluation times `grid` gives, without building them."""
    start_ms, end_ms, step_ms = round(start * 1000), round(end * 1000), round(step * 1000)
    return (end_ms - start_ms) // step_ms + 1


def _by_time(series: RangeSeries) -> dict[int, float]:
    return {round(t * 1000): value for t, value in series.points}


class _Timeline:
    """Range results, answered as instant results at any step time."""

    def __init__(self, ranges: Mapping[str, RangeResult]) -> None:
        self._ranges: dict[str, list[tuple[Mapping[str, str], dict[int, float]]] | Exception] = {
            query: result if isinstance(result, Exception)
            else [(s.labels, _by_time(s)) for s in result]
            for query, result in ranges.items()
        }

    def at(self, t: float) -> dict[str, Result]:
        key = round(t * 1000)
        results: dict[str, Result] = {}
        for query, series in self._ranges.items():
            if isinstance(series, Exception):
                results[query] = series
                continue
            # A series without a point here was not there at this instant (no sample
            # within the lookback): absent from the instant result, as it would have been.
            results[query] = SampleSet([Sample(labels, points[key])
                                        for labels, points in series if key in points])
        return results


def actual_counts(times: Sequence[float], series: Sequence[RangeSeries]) -> list[float | None]:
    """The actual count at each time: the highest of the series there, None where none is
    (a NaN or an infinity is no count either)."""
    indexed = [_by_time(s) for s in series]
    found: list[float | None] = []
    for t in times:
        key = round(t * 1000)
        values = [p[key] for p in indexed if key in p and math.isfinite(p[key])]
        found.append(max(values) if values else None)
    return found


def replay(service: ServiceConfig, times: Sequence[float], ranges: Mapping[str, RangeResult],
           actual: Sequence[float | None]) -> list[Step]:
    """The decision at each time, open loop, as production would have made it.

    `ranges` holds each of the service's queries' range results (or the exception that
    query failed with, which then is its result at every step, as a failed query is in
    a production cycle); `actual` the actual count at each time, or None. The count
    going into each step is the previous step's decision; into the first, the actual
    count if known, else the service's min.
    """
    if len(actual) != len(times):
        raise ValueError(f"{len(actual)} actual counts for {len(times)} times")
    timeline = _Timeline(ranges)
    first = actual[0] if actual else None
    current = service.limits.min if first is None or first < 0 else round(first)
    history = History()
    steps: list[Step] = []
    for t, known in zip(times, actual, strict=True):
        counts = Counts(desired=current, running=current, pending=0)
        evaluation = evaluate(service, timeline.at(t), counts)
        decision = decide(evaluation.inputs, counts, service.limits, service.behavior,
                          history, now=t)
        steps.append(Step(
            t=t, before=current, would_be=decision.count, reason=decision.reason,
            recommendation=decision.recommendation, actual=known,
            values={o.rule: o.value for o in evaluation.rules},
            errors=tuple(message for _, message in evaluation.errors),
        ))
        history, current = decision.history, decision.count
    return steps


def summarize(steps: Sequence[Step], step_seconds: float) -> Summary:
    """Totals over the steps. Each step's count is taken as held for one step, so a
    worker-second sum is count x step; the would-be and actual sums cover the same
    steps, those where the actual count is known."""
    compared = [s for s in steps if s.actual is not None]
    would_be = [s.would_be for s in steps]
    actual = [s.actual for s in compared if s.actual is not None]
    return Summary(
        steps=len(steps),
        step_seconds=step_seconds,
        steps_with_actual=len(compared),
        would_be_worker_seconds=math.fsum(s.would_be for s in compared) * step_seconds,
        actual_worker_seconds=math.fsum(actual) * step_seconds,
        would_be_changes=sum(1 for s in steps if s.would_be != s.before),
        would_be_peak=max(would_be, default=None),
        would_be_low=min(would_be, default=None),
        actual_peak=max(actual, default=None),
        actual_low=min(actual, default=None),
        steps_above_actual=sum(1 for s in compared if s.actual is not None
                               and s.would_be > s.actual),
        steps_below_actual=sum(1 for s in compared if s.actual is not None
                               and s.would_be < s.actual),
        steps_with_errors=sum(1 for s in steps if s.errors),
    )


# --------------------------------------------------------------------------- I/O


def backtest(config: ScalerConfig, query_range: RangeQuery, start: float, end: float,
             step: float, services: Sequence[ServiceConfig] | None = None,
             actual_query: str = DEFAULT_ACTUAL_QUERY) -> Backtest:
    """Asks Prometheus for every query's history once, then replays each service.

    `query_range` is `PrometheusClient.query_range`. A query Prometheus rejects is that
    query's error at every step; Prometheus unreachable, timing out or answering with an
    HTTP error raises BacktestError, since nothing could be learnt from the result.
    """
    if end < start:
        raise UsageError(f"--from ({utc(start)}) is after --to ({utc(end)})")
    count = step_count(start, end, step)
    if count > MAX_STEPS:
        raise UsageError(f"--step: {step:g}s from --from to --to is {count} steps; "
                         f"at most {MAX_STEPS} (use a larger --step)")
    times = grid(start, end, step)
    chosen = list(config.services) if services is None else list(services)
    cache: dict[str, RangeResult] = {}

    def fetch(promql: str) -> RangeResult:
        if promql not in cache:
            try:
                cache[promql] = list(query_range(promql, start, end, step))
            except QueryError as error:
                if error.kind in _FATAL_KINDS:
                    raise BacktestError(str(error)) from error
                cache[promql] = error
        return cache[promql]

    results = []
    for service in chosen:
        ranges = {q: fetch(q) for q in queries_of(service)}
        promql = actual_query_for(actual_query, service.name)
        found = fetch(promql)
        actual_error = str(found) if isinstance(found, Exception) else None
        actual = actual_counts(times, [] if isinstance(found, Exception) else found)
        steps = replay(service, times, ranges, actual)
        results.append(ServiceBacktest(service.name, promql, actual_error, tuple(steps),
                                       summarize(steps, step)))
    return Backtest(start, end, step, tuple(results))


# --------------------------------------------------------------------------- output


def utc(t: float) -> str:
    """Epoch seconds as `2024-05-01 10:00:00Z` (milliseconds only when there are some)."""
    moment = datetime.fromtimestamp(t, UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


def _iso(t: float) -> str:
    return utc(t).replace(" ", "T")


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _seconds(value: float) -> str:
    return f"{value:,.0f}"


def _rules(values: Mapping[str, float | None]) -> str:
    return " ".join(f"{name}={_number(value)}" for name, value in values.items())


def render_table(result: Backtest) -> str:
    """Plain text: per service a summary, then every change the scaler would have made."""
    blocks = []
    for service in result.services:
        s = service.summary
        lines = [
            f"service {service.service}: {utc(result.start)} .. {utc(result.end)}, "
            f"step {result.step:g}s, {s.steps} steps",
        ]
        if service.actual_error is not None:
            lines.append(f"  actual: unknown, its query failed: {service.actual_error}")
        elif s.steps_with_actual < s.steps:
            lines.append(f"  actual: known at {s.steps_with_actual} of {s.steps} steps "
                         f"({service.actual_query})")
        rows = [
            ("", "would-be", "actual"),
            (f"worker-seconds ({s.steps_with_actual} steps)",
             _seconds(s.would_be_worker_seconds), _seconds(s.actual_worker_seconds)),
            ("peak", _number(s.would_be_peak), _number(s.actual_peak)),
            ("low", _number(s.would_be_low), _number(s.actual_low)),
            ("changes", str(s.would_be_changes), ""),
            ("steps above actual", str(s.steps_above_actual), ""),
            ("steps below actual", str(s.steps_below_actual), ""),
        ]
        width = max(len(r[0]) for r in rows)
        lines += [f"  {a:<{width}}  {b:>10}  {c:>10}".rstrip() for a, b, c in rows]
        changes = [step for step in service.steps if step.would_be != step.before]
        if changes:
            lines.append("")
            lines.append("  would-be changes:")
            table = [("time (UTC)", "from → to", "reason", "actual", "rules")]
            table += [(utc(c.t), f"{c.before} → {c.would_be}", c.reason.value,
                       _number(c.actual), _rules(c.values)) for c in changes]
            widths = [max(len(row[i]) for row in table) for i in range(4)]
            for row in table:
                cells = [row[i].ljust(widths[i]) for i in range(4)]
                lines.append(("  " + "  ".join([*cells, row[4]])).rstrip())
        else:
            lines.append("")
            lines.append("  no changes: the scaler would have kept "
                         f"{service.steps[0].before if service.steps else '-'} workers")
        errors = _errors(service.steps)
        if errors:
            lines.append("")
            lines.append(f"  errors ({s.steps_with_errors} of {s.steps} steps):")
            for message, (count, first, last) in errors.items():
                when = utc(first) if first == last else f"{utc(first)} .. {utc(last)}"
                lines.append(f"  {count} steps, {when}: {message}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _errors(steps: Sequence[Step]) -> dict[str, tuple[int, float, float]]:
    """Each distinct error message: at how many steps, first and last time."""
    found: dict[str, tuple[int, float, float]] = {}
    for step in steps:
        for message in step.errors:
            count, first, _ = found.get(message, (0, step.t, step.t))
            found[message] = (count + 1, first, step.t)
    return found


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or infinity; rule values are always finite, this is a guard.
    return value if value is None or math.isfinite(value) else None


def to_json(result: Backtest, plots: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The backtest as plain JSON types, with stable keys (see the tests)."""
    plots = plots or {}
    return {
        "from": _iso(result.start),
        "to": _iso(result.end),
        "step_seconds": result.step,
        "services": [
            {
                "service": service.service,
                "actual_query": service.actual_query,
                "actual_error": service.actual_error,
                "plot": plots.get(service.service),
                "summary": {
                    "steps": service.summary.steps,
                    "step_seconds": service.summary.step_seconds,
                    "steps_with_actual": service.summary.steps_with_actual,
                    "would_be_worker_seconds": service.summary.would_be_worker_seconds,
                    "actual_worker_seconds": service.summary.actual_worker_seconds,
                    "would_be_changes": service.summary.would_be_changes,
                    "would_be_peak": service.summary.would_be_peak,
                    "would_be_low": service.summary.would_be_low,
                    "actual_peak": service.summary.actual_peak,
                    "actual_low": service.summary.actual_low,
                    "steps_above_actual": service.summary.steps_above_actual,
                    "steps_below_actual": service.summary.steps_below_actual,
                    "steps_with_errors": service.summary.steps_with_errors,
                },
                "steps": [
                    {
                        "time": step.t,
                        "time_utc": _iso(step.t),
                        "before": step.before,
                        "would_be": step.would_be,
                        "reason": step.reason.value,
                        "recommendation": step.recommendation,
                        "actual": _finite(step.actual),
                        "values": {k: _finite(v) for k, v in step.values.items()},
                        "errors": list(step.errors),
                    }
                    for step in service.steps
                ],
            }
            for service in result.services
        ],
    }


def plot_paths(path: str, services: Sequence[str]) -> dict[str, str]:
    """One PNG per service: the path itself for one service, `NAME-<service>.png` for
    several."""
    if len(services) == 1:
        return {services[0]: path}
    target = Path(path)
    safe = {name: re.sub(r"[^A-Za-z0-9._-]+", "_", name) for name in services}
    return {name: str(target.with_name(f"{target.stem}-{safe[name]}{target.suffix or '.png'}"))
            for name in services}


def write_plots(result: Backtest, path: str) -> dict[str, str]:
    """Draws each service's would-be and actual counts and rule values; returns the files.

    matplotlib is an optional dependency (the `sim` extra): without it, or when a file
    cannot be written, BacktestError says so in one line.
    """
    # Imported here: only --plot needs it.
    from scaler.simulation.plot import BacktestSeries, PlotError, plot_backtest

    paths = plot_paths(path, [s.service for s in result.services])
    for service in result.services:
        rules = list(service.steps[0].values) if service.steps else []
        series = BacktestSeries(
            times=[s.t for s in service.steps],
            would_be=[float(s.would_be) for s in service.steps],
            actual=[s.actual for s in service.steps],
            values={name: [s.values.get(name) for s in service.steps] for name in rules},
        )
        title = (f"{service.service}: backtest {utc(result.start)} .. {utc(result.end)}, "
                 f"step {result.step:g}s")
        try:
            plot_backtest(paths[service.service], series, title=title)
        except PlotError as error:  # no matplotlib, or the file cannot be written
            raise BacktestError(f"--plot: {error}") from None
    return paths
