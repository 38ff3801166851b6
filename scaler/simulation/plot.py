"""PNG plots for `taskqueue-scaler simulate`, `backtest` and the policy benchmark.

Built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot: pyplot keeps a global
registry of figures and picks a GUI backend, so it is neither thread-safe nor safe on a
headless host. matplotlib is an optional extra (`sim`) and is imported only when a plot is
drawn, so the scaler itself never pays for it.

Missing values (None, NaN, infinities) are gaps in the lines, never errors. The same input
gives the same bytes: the PNG carries no software version and no timestamp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    _Entries = list[tuple[Artist, str]]  # legend entries: handle and label

__all__ = [
    "BacktestSeries",
    "PlotError",
    "SimulationSeries",
    "plot_backtest",
    "plot_policies",
    "plot_simulation",
]

_NO_MATPLOTLIB = "PNG plots need matplotlib: pip install 'taskqueue-autoscaler[sim]'"
_EMPTY = "nothing to plot: the series are empty"

# 12x8 inches at 100 dpi: a 1200x800 PNG, readable in a terminal image viewer or a PR comment.
_SIZE_INCHES = (12.0, 8.0)
_DPI = 100
# Fixed colours rather than the rcParams cycle: another library in the process changing the
# global style must not change our plots (and the same input must give the same bytes).
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
_ARRIVALS = "#2ca02c"
_DEPTH = "#1f77b4"
_AGE = "#d62728"
_DESIRED = "#ff7f0e"
_RUNNING = "#1f77b4"
_SLO = "#555555"
# Nice tick spacings for the elapsed-time axis, in seconds.
_TICK_STEPS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800,
)
_MAX_TICKS = 10
_LEGEND_COLUMNS = 5


class PlotError(RuntimeError):
    """A plot cannot be drawn: bad input, no matplotlib, or the file cannot be written."""


@dataclass(frozen=True)
class SimulationSeries:
    times: Sequence[float]  # epoch seconds, ascending (one point per evaluation step)
    arrivals: Sequence[float]  # tasks/s that arrived during the step ending at times[i]
    depth: Sequence[float]  # tasks waiting
    oldest_age: Sequence[float]  # seconds
    desired: Sequence[float]  # desired worker count
    running: Sequence[float]  # workers running (started and working)


@dataclass(frozen=True)
class BacktestSeries:
    times: Sequence[float]  # epoch seconds
    would_be: Sequence[float | None]  # what the scaler would have decided (None: no decision)
    actual: Sequence[float | None]  # what the service ran (None: unknown)
    values: Mapping[str, Sequence[float | None]]  # each rule's query value per step


# --- public functions ------------------------------------------------------------------------


def plot_simulation(
    path: str | Path,
    series: SimulationSeries,
    *,
    title: str,
    slo_seconds: float | None = None,
) -> None:
    """Arrivals, queue depth and oldest age, desired and running workers: three panels."""
    sim = _SimData.of(series)
    _check_slo(slo_seconds)
    fig, (ax_in, ax_queue, ax_workers) = _figure(3, title)
    start = sim.times[0]
    x = [t - start for t in sim.times]

    _arrivals_panel(ax_in, x, sim.arrivals)

    queue = [(_line(ax_queue, x, sim.depth, color=_DEPTH), "queue depth")]
    ax_queue.set_ylabel("tasks waiting")
    _floor_at_zero(ax_queue, sim.depth)
    # The age has its own right-hand axis: depth counts tasks, age is seconds, and the SLO line
    # is only meaningful against the age scale.
    ax_age = ax_queue.twinx()
    queue.append((_line(ax_age, x, sim.oldest_age, color=_AGE), "oldest task age"))
    if slo_seconds is not None:
        queue.append(_slo_line(ax_age, slo_seconds))
    ax_age.set_ylabel("oldest task age (s)", color=_AGE)
    ax_age.tick_params(axis="y", colors=_AGE)
    _floor_at_zero(ax_age, sim.oldest_age)
    _legend(queue, ax_queue, ax_age)

    workers = [
        (_step(ax_workers, x, sim.running, color=_RUNNING, width=2.0), "running"),
        # Desired is dashed and on top so that it stays visible where it equals running.
        (_step(ax_workers, x, sim.desired, color=_DESIRED, dashed=True), "desired"),
    ]
    _workers_axis(ax_workers, sim.desired + sim.running)
    _legend(workers, ax_workers)

    _elapsed_axis(ax_workers, start, x[-1])
    _save(fig, path)


def plot_backtest(path: str | Path, series: BacktestSeries, *, title: str) -> None:
    """Each rule's query value, and would-be against actual workers, on a UTC time axis."""
    times = _times("times", series.times)
    would_be = _values("would_be", series.would_be, len(times))
    actual = _values("actual", series.actual, len(times))
    values = {
        name: _values(f"values[{name!r}]", vals, len(times))
        for name, vals in series.values.items()
    }
    fig, (ax_values, ax_workers) = _figure(2, title)
    x = [datetime.fromtimestamp(t, tz=UTC) for t in times]

    if values:
        rules = [
            (_line(ax_values, x, vals, color=_PALETTE[i % len(_PALETTE)]), name)
            for i, (name, vals) in enumerate(values.items())
        ]
        _floor_at_zero(ax_values, [v for vals in values.values() for v in vals])
        _legend(rules, ax_values)
    else:
        # An empty panel with a note beats a missing one: the layout stays the same for
        # every backtest and the reader sees that there was nothing, not that it failed.
        ax_values.text(0.5, 0.5, "no rule values", transform=ax_values.transAxes,
                       ha="center", va="center", color=_SLO)
    ax_values.set_ylabel("rule query value")

    workers = [
        (_step(ax_workers, x, actual, color=_RUNNING, width=2.0), "actual"),
        (_step(ax_workers, x, would_be, color=_DESIRED, dashed=True), "would be"),
    ]
    _workers_axis(ax_workers, would_be + actual)
    _legend(workers, ax_workers)

    _utc_axis(ax_workers, x[0], x[-1])
    _save(fig, path)


def plot_policies(
    path: str | Path,
    runs: Mapping[str, SimulationSeries],
    *,
    title: str,
    slo_seconds: float | None = None,
) -> None:
    """The policy benchmark: arrivals, then every policy's running workers and oldest age."""
    if not runs:
        raise PlotError(_EMPTY)
    _check_slo(slo_seconds)
    sims: dict[str, _SimData] = {}
    for name, run in runs.items():
        try:
            sims[name] = _SimData.of(run)
        except PlotError as err:
            raise PlotError(f"run {name!r}: {err}") from None
    # One clock for all runs: policies replayed over the same load line up even when a run
    # has a point more or less.
    start = min(sim.times[0] for sim in sims.values())
    end = max(sim.times[-1] for sim in sims.values())
    fig, (ax_in, ax_workers, ax_age) = _figure(3, title)

    first = next(iter(sims.values()))
    _arrivals_panel(ax_in, [t - start for t in first.times], first.arrivals)

    entries: _Entries = []
    all_running: list[float] = []
    all_age: list[float] = []
    for i, (name, sim) in enumerate(sims.items()):
        x = [t - start for t in sim.times]
        color = _PALETTE[i % len(_PALETTE)]
        entries.append((_step(ax_workers, x, sim.running, color=color, width=1.6), name))
        _line(ax_age, x, sim.oldest_age, color=color)
        all_running += sim.running
        all_age += sim.oldest_age
    _workers_axis(ax_workers, all_running, label="running workers")
    if slo_seconds is not None:
        entries.append(_slo_line(ax_age, slo_seconds))
    ax_age.set_ylabel("oldest task age (s)")
    _floor_at_zero(ax_age, all_age)
    # One legend for both per-policy panels, outside the plot: with several policies an
    # inside legend would hide the lines it explains.
    handles, labels = zip(*entries, strict=True)
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")

    _elapsed_axis(ax_age, start, end - start)
    _save(fig, path)


# --- input checking --------------------------------------------------------------------------


@dataclass(frozen=True)
class _SimData:
    """A SimulationSeries checked and converted to float lists (NaN for gaps)."""

    times: list[float]
    arrivals: list[float]
    depth: list[float]
    oldest_age: list[float]
    desired: list[float]
    running: list[float]

    @classmethod
    def of(cls, series: SimulationSeries) -> _SimData:
        times = _times("times", series.times)
        n = len(times)
        return cls(
            times=times,
            arrivals=_values("arrivals", series.arrivals, n),
            depth=_values("depth", series.depth, n),
            oldest_age=_values("oldest_age", series.oldest_age, n),
            desired=_values("desired", series.desired, n),
            running=_values("running", series.running, n),
        )


def _times(field: str, times: Sequence[float]) -> list[float]:
    if len(times) == 0:
        raise PlotError(_EMPTY)
    out = _values(field, times, len(times))
    # A gap in a value is fine, a gap in the time axis is not: there is nowhere to put it.
    for i, t in enumerate(out):
        if math.isnan(t):
            raise PlotError(f"{field}[{i}] is not a finite time: {times[i]!r}")
    return out


def _check_slo(slo_seconds: float | None) -> None:
    # Checked before drawing: NaN would silently draw no line, infinity would break the axis.
    if slo_seconds is not None and not (math.isfinite(slo_seconds) and slo_seconds >= 0):
        raise PlotError(f"slo_seconds must be a non-negative number of seconds: {slo_seconds!r}")


def _values(field: str, values: Sequence[Any], n: int) -> list[float]:
    if len(values) != n:
        raise PlotError(f"{field} has {len(values)} points but times has {n}")
    out: list[float] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise PlotError(f"{field}[{i}] is not a number: {v!r}") from None
        # Infinities would stretch the axis to nothing; they are as missing as NaN.
        out.append(f if math.isfinite(f) else math.nan)
    return out


# --- drawing ---------------------------------------------------------------------------------


def _figure(rows: int, title: str) -> tuple[Figure, list[Axes]]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(_NO_MATPLOTLIB) from None
    # Constrained layout keeps tick labels, the right-hand age axis and the outside legend
    # from overlapping without hand-tuned margins.
    fig = Figure(figsize=_SIZE_INCHES, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    fig.suptitle(title)
    for ax in axes:
        ax.grid(True, color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def _arrivals_panel(ax: Axes, x: list[float], arrivals: list[float]) -> None:
    # "pre": arrivals[i] is the rate over the step that ends at times[i], so it is drawn over
    # the interval to the left of its point.
    ax.fill_between(x, arrivals, step="pre", color=_ARRIVALS, alpha=0.25, linewidth=0)
    _step(ax, x, arrivals, color=_ARRIVALS, where="pre")
    ax.set_ylabel("arrivals (tasks/s)")
    _floor_at_zero(ax, arrivals)


def _line(ax: Axes, x: Sequence[Any], y: list[float], *, color: str) -> Line2D:
    # Legend entries are passed explicitly rather than as labels: matplotlib hides labels that
    # start with "_", and a rule or policy may well be called that.
    (line,) = ax.plot(x, y, color=color, linewidth=1.4)
    # A point with gaps on both sides draws no line segment: mark it so it does not vanish.
    _mark(ax, x, y, [i for i in range(len(y)) if _is_lone(y, i)], color)
    return line


def _step(
    ax: Axes,
    x: Sequence[Any],
    y: list[float],
    *,
    color: str,
    where: Literal["pre", "post"] = "post",
    width: float = 1.4,
    dashed: bool = False,
) -> Line2D:
    # "post": a worker count holds from its point until the next one.
    (line,) = ax.step(x, y, where=where, color=color, linewidth=width,
                      linestyle=(0, (4, 2)) if dashed else "-")
    # Every step draws its flat run to the next point, except the last point of a post-step
    # (the first of a pre-step): with a gap beside it, it would draw nothing.
    edge = len(y) - 1 if where == "post" else 0
    _mark(ax, x, y, [edge] if _is_lone(y, edge) else [], color)
    return line


def _mark(ax: Axes, x: Sequence[Any], y: list[float], points: list[int], color: str) -> None:
    if points:
        ax.plot([x[i] for i in points], [y[i] for i in points], linestyle="none", marker="o",
                markersize=3, color=color)


def _is_lone(y: list[float], i: int) -> bool:
    if math.isnan(y[i]):
        return False
    before = i == 0 or math.isnan(y[i - 1])
    after = i == len(y) - 1 or math.isnan(y[i + 1])
    return before and after


def _slo_line(ax: Axes, slo_seconds: float) -> tuple[Artist, str]:
    line = ax.axhline(slo_seconds, color=_SLO, linestyle="--", linewidth=1.2)
    return line, f"SLO ({slo_seconds:g} s)"


def _floor_at_zero(ax: Axes, values: list[float], *, min_top: float = 0.0) -> None:
    # Counts, rates and ages start at zero; a floating baseline exaggerates small changes. The
    # axis starts a hair below zero so that a line at zero is not hidden under the frame.
    # No data at all: 0 to 1 rather than matplotlib's default of -0.05 to 0.05.
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        ax.set_ylim(-0.015, 1)
    elif min(finite) >= 0:
        top = max(ax.get_ylim()[1], min_top)
        ax.set_ylim(-0.015 * top, top)


def _workers_axis(ax: Axes, values: list[float], label: str = "workers") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_ylabel(label)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # no 2.5 workers on the axis
    _floor_at_zero(ax, values, min_top=1.0)  # all zero: 0 and 1 on the axis, not 0 and 0.05


def _legend(entries: _Entries, ax: Axes, twin: Axes | None = None) -> None:
    # The legend lies in rows across the top, in a band kept free of data by raising the top
    # of the y axis: loc="best" cannot see a twin axis's lines and moves around between plots.
    axes = [ax] if twin is None else [ax, twin]
    ncols = min(len(entries), _LEGEND_COLUMNS)
    rows = -(-len(entries) // ncols)
    reserve = 0.02 + 0.12 * rows
    for each in axes:
        bottom, top = each.get_ylim()
        each.set_ylim(bottom, bottom + (top - bottom) / (1 - reserve))
    handles, labels = zip(*entries, strict=True)
    # A twin axis is drawn over its host: the legend goes on it so no line crosses the legend.
    axes[-1].legend(handles, labels, loc="upper left", ncols=ncols, fontsize="small",
                    framealpha=0.85)


def _elapsed_axis(ax: Axes, start: float, span: float) -> None:
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    step = next((s for s in _TICK_STEPS if span / s <= _MAX_TICKS), None)
    if step is None:  # longer than ten weeks: whole days
        step = math.ceil(span / _MAX_TICKS / 86400) * 86400
    if span >= 3600:
        unit = "h:mm"

        def fmt(v: float, _pos: int | None = None) -> str:
            sign, v = ("-" if v < 0 else ""), abs(round(v))
            return f"{sign}{v // 3600}:{v % 3600 // 60:02d}"
    elif step >= 60:
        unit = "minutes"

        def fmt(v: float, _pos: int | None = None) -> str:
            return f"{v / 60:g}"
    else:
        unit = "m:ss"

        def fmt(v: float, _pos: int | None = None) -> str:
            sign, v = ("-" if v < 0 else ""), abs(round(v))
            return f"{sign}{v // 60}:{v % 60:02d}"

    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.xaxis.set_major_formatter(FuncFormatter(fmt))
    if span > 0:
        ax.set_xlim(0, span)  # no margins: the run starts at 0 and ends at its last step
    begun = datetime.fromtimestamp(start, tz=UTC)
    ax.set_xlabel(f"elapsed time ({unit}) since {begun:%Y-%m-%d %H:%M:%S} UTC")


def _utc_axis(ax: Axes, first: datetime, last: datetime) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    # An explicit tz: matplotlib would otherwise show times in rcParams["timezone"].
    locator = AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    if last > first:
        ax.set_xlim(first, last)  # no margins, as on the elapsed-time axis
    ax.set_xlabel(f"time (UTC), from {first:%Y-%m-%d %H:%M:%S}")


def _save(fig: Figure, path: str | Path) -> None:
    # No "Software" tag (it names the matplotlib version) so the bytes depend on the data only.
    try:
        fig.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})
    except OSError as err:
        raise PlotError(f"cannot write {path}: {err.strerror or err}") from None
