"""PNG plots of simulations, backtests and policy benchmarks: size, content changes with the
data, identical bytes for identical input, gaps for None/NaN, exact errors, and a clear error
without matplotlib. No pyplot: the plots must not touch global figure state."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import pytest

from scaler.simulation.plot import (
    BacktestSeries,
    PlotError,
    SimulationSeries,
    plot_backtest,
    plot_policies,
    plot_simulation,
)

pytestmark = pytest.mark.skipif(find_spec("matplotlib") is None,
                                reason="matplotlib (the `sim` extra) is not installed")

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
STEP = 15.0
NAN = float("nan")
EMPTY = "nothing to plot: the series are empty"
NO_MATPLOTLIB = "PNG plots need matplotlib: pip install 'taskqueue-autoscaler[sim]'"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must start with."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    return struct.unpack(">II", data[16:24])


def simulation(n: int = 120, *, peak: float = 20.0) -> SimulationSeries:
    """A spike of arrivals, the queue it builds, and workers following it a step late."""
    arrivals = [5 + peak * math.exp(-(((i - n / 3) / (n / 10)) ** 2)) for i in range(n)]
    depth = [max(0.0, 300 * math.sin(math.pi * i / n)) for i in range(n)]
    age = [max(0.0, 90 * math.sin(math.pi * (i - n / 10) / n)) for i in range(n)]
    desired = [2 + round(a / 8) for a in arrivals]
    running = [desired[0], *desired[:-1]]
    return SimulationSeries(
        times=[T0 + STEP * i for i in range(n)],
        arrivals=arrivals,
        depth=depth,
        oldest_age=age,
        desired=desired,
        running=running,
    )


def backtest(n: int = 120) -> BacktestSeries:
    sim = simulation(n)
    return BacktestSeries(
        times=sim.times,
        would_be=list(sim.desired),
        actual=list(sim.running),
        values={"backlog_per_worker": [d / r for d, r in zip(sim.depth, sim.running,
                                                                strict=True)],
                "oldest_age": list(sim.oldest_age)},
    )


def policies(n: int = 120) -> dict[str, SimulationSeries]:
    base = simulation(n)
    return {
        name: replace(base, running=[r + k for r in base.running],
                      oldest_age=[a / (k + 1) for a in base.oldest_age])
        for k, name in enumerate(["target", "step", "hpa"])
    }


def check_png(path: Path) -> bytes:
    assert png_size(path) == (1200, 800)
    data = path.read_bytes()
    assert len(data) > 20_000  # axes, labels and lines, not a blank canvas
    return data


# --- each plot ------------------------------------------------------------------------------


def test_simulation_plot(tmp_path: Path) -> None:
    out = tmp_path / "sim.png"
    plot_simulation(out, simulation(), title="simulate: orders", slo_seconds=60)
    check_png(out)


def test_backtest_plot(tmp_path: Path) -> None:
    out = tmp_path / "backtest.png"
    plot_backtest(str(out), backtest(), title="backtest: orders")  # a str path works too
    check_png(out)


def test_policies_plot(tmp_path: Path) -> None:
    out = tmp_path / "policies.png"
    plot_policies(out, policies(), title="policies: spike", slo_seconds=60)
    check_png(out)


@pytest.mark.parametrize("n", [1, 2, 20, 240, 6000], ids=lambda n: f"{n}-points")
def test_simulation_any_length(tmp_path: Path, n: int) -> None:
    """One point, seconds, minutes and a day: every elapsed-time axis format draws."""
    out = tmp_path / "sim.png"
    plot_simulation(out, simulation(n), title=f"{n} points", slo_seconds=30)
    assert png_size(out) == (1200, 800)


def test_different_data_different_png(tmp_path: Path) -> None:
    plot_simulation(tmp_path / "a.png", simulation(peak=20), title="run")
    plot_simulation(tmp_path / "b.png", simulation(peak=40), title="run")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()

    plot_backtest(tmp_path / "c.png", backtest(), title="bt")
    changed = backtest()
    changed = replace(changed, would_be=[(w or 0) + 1 for w in changed.would_be])
    plot_backtest(tmp_path / "d.png", changed, title="bt")
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "d.png").read_bytes()

    plot_policies(tmp_path / "e.png", policies(), title="p")
    plot_policies(tmp_path / "f.png", dict(list(policies().items())[:2]), title="p")
    assert (tmp_path / "e.png").read_bytes() != (tmp_path / "f.png").read_bytes()


def test_same_input_same_bytes(tmp_path: Path) -> None:
    """No version tag, no timestamp: a re-run that changed nothing leaves the file as it was."""
    for i in range(2):
        plot_simulation(tmp_path / f"sim{i}.png", simulation(), title="s", slo_seconds=60)
        plot_backtest(tmp_path / f"bt{i}.png", backtest(), title="b")
        plot_policies(tmp_path / f"pol{i}.png", policies(), title="p", slo_seconds=60)
    for name in ("sim", "bt", "pol"):
        assert (tmp_path / f"{name}0.png").read_bytes() == (tmp_path / f"{name}1.png").read_bytes()
    assert b"Software" not in (tmp_path / "sim0.png").read_bytes()


def test_threads_draw_the_same_bytes(tmp_path: Path) -> None:
    """Figure + Agg canvas, no pyplot: concurrent plots do not share a current figure."""
    plot_simulation(tmp_path / "serial.png", simulation(60), title="t")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: plot_simulation(tmp_path / f"t{i}.png", simulation(60),
                                                title="t"), range(4)))
    expected = (tmp_path / "serial.png").read_bytes()
    assert all((tmp_path / f"t{i}.png").read_bytes() == expected for i in range(4))


def test_pyplot_never_imported(tmp_path: Path) -> None:
    # In a fresh interpreter: another test (or plugin) may have imported pyplot in this one.
    code = textwrap.dedent(f"""
        import sys
        from scaler.simulation.plot import SimulationSeries, plot_simulation
        s = SimulationSeries([0.0, 15.0], [1, 2], [3, 4], [5, 6], [1, 2], [1, 1])
        plot_simulation({str(tmp_path / "p.png")!r}, s, title="t")
        print("matplotlib.pyplot" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, check=True, timeout=60)
    assert done.stdout.strip() == "False"


# --- gaps -------------------------------------------------------------------------------------


def test_none_and_nan_are_gaps(tmp_path: Path) -> None:
    sim = simulation(40)
    arrivals: list[float | None] = [None if i % 7 == 0 else a for i, a in enumerate(sim.arrivals)]
    # Lone points between gaps, and a gap at the very end.
    desired: list[float | None] = [d if i in (5, 20) or i < 3 else None
                                   for i, d in enumerate(sim.desired)]
    holes = replace(
        sim,
        arrivals=arrivals,
        depth=[NAN if 10 <= i < 15 else d for i, d in enumerate(sim.depth)],
        oldest_age=[math.inf if i == 3 else a for i, a in enumerate(sim.oldest_age)],
        desired=desired,
        running=[NAN] * 40,  # nothing at all
    )
    plot_simulation(tmp_path / "sim.png", holes, title="gaps", slo_seconds=60)
    check_png(tmp_path / "sim.png")
    plot_simulation(tmp_path / "full.png", sim, title="gaps", slo_seconds=60)
    assert (tmp_path / "sim.png").read_bytes() != (tmp_path / "full.png").read_bytes()

    bt = BacktestSeries(
        times=sim.times,
        would_be=[None if i % 5 == 0 else 3 for i in range(40)],
        actual=[None] * 40,
        values={"backlog": [None if i % 2 else float(i) for i in range(40)],
                "age": [NAN] * 40, "_hidden_by_matplotlib_labels": [1.0] * 40},
    )
    plot_backtest(tmp_path / "bt.png", bt, title="gaps")
    check_png(tmp_path / "bt.png")

    runs = {"a": holes, "b": sim}
    plot_policies(tmp_path / "pol.png", runs, title="gaps", slo_seconds=60)
    check_png(tmp_path / "pol.png")


def test_backtest_without_rule_values(tmp_path: Path) -> None:
    plot_backtest(tmp_path / "bt.png", replace(backtest(), values={}), title="no rules")
    assert png_size(tmp_path / "bt.png") == (1200, 800)


def test_backtest_single_point(tmp_path: Path) -> None:
    plot_backtest(tmp_path / "bt.png", BacktestSeries([T0], [None], [2], {"r": [1.5]}),
                  title="one")
    assert png_size(tmp_path / "bt.png") == (1200, 800)


def test_policy_runs_of_different_lengths(tmp_path: Path) -> None:
    """Each run has its own times; runs need not have the same number of points."""
    runs = {"long": simulation(120), "short": simulation(80)}
    plot_policies(tmp_path / "pol.png", runs, title="lengths")
    check_png(tmp_path / "pol.png")


# --- errors -----------------------------------------------------------------------------------


def test_empty_series(tmp_path: Path) -> None:
    empty = SimulationSeries([], [], [], [], [], [])
    with pytest.raises(PlotError) as err:
        plot_simulation(tmp_path / "x.png", empty, title="t")
    assert str(err.value) == EMPTY
    with pytest.raises(PlotError) as err:
        plot_backtest(tmp_path / "x.png", BacktestSeries([], [], [], {}), title="t")
    assert str(err.value) == EMPTY
    with pytest.raises(PlotError) as err:
        plot_policies(tmp_path / "x.png", {}, title="t")
    assert str(err.value) == EMPTY
    with pytest.raises(PlotError) as err:
        plot_policies(tmp_path / "x.png", {"a": simulation(5), "b": empty}, title="t")
    assert str(err.value) == f"run 'b': {EMPTY}"
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("field", ["arrivals", "depth", "oldest_age", "desired", "running"])
def test_simulation_length_mismatch(tmp_path: Path, field: str) -> None:
    sim = simulation(10)
    short = replace(sim, **{field: list(getattr(sim, field))[:7]})
    with pytest.raises(PlotError) as err:
        plot_simulation(tmp_path / "x.png", short, title="t")
    assert str(err.value) == f"{field} has 7 points but times has 10"


def test_backtest_length_mismatch(tmp_path: Path) -> None:
    bt = backtest(10)
    with pytest.raises(PlotError) as err:
        plot_backtest(tmp_path / "x.png", replace(bt, would_be=[1.0] * 11), title="t")
    assert str(err.value) == "would_be has 11 points but times has 10"
    with pytest.raises(PlotError) as err:
        plot_backtest(tmp_path / "x.png", replace(bt, actual=[]), title="t")
    assert str(err.value) == "actual has 0 points but times has 10"
    with pytest.raises(PlotError) as err:
        plot_backtest(tmp_path / "x.png", replace(bt, values={"backlog": [1.0]}), title="t")
    assert str(err.value) == "values['backlog'] has 1 points but times has 10"


def test_policies_length_mismatch_names_the_run(tmp_path: Path) -> None:
    bad = replace(simulation(10), running=[1.0] * 9)
    with pytest.raises(PlotError) as err:
        plot_policies(tmp_path / "x.png", {"ok": simulation(10), "fast": bad}, title="t")
    assert str(err.value) == "run 'fast': running has 9 points but times has 10"


def test_bad_values(tmp_path: Path) -> None:
    sim = simulation(3)
    words: list[object] = [1.0, "many", 2.0]
    with pytest.raises(PlotError) as err:
        plot_simulation(tmp_path / "x.png", replace(sim, depth=words), title="t")
    assert str(err.value) == "depth[1] is not a number: 'many'"
    with pytest.raises(PlotError) as err:
        plot_simulation(tmp_path / "x.png", replace(sim, times=[T0, NAN, T0 + 30]), title="t")
    assert str(err.value) == "times[1] is not a finite time: nan"
    with pytest.raises(PlotError) as err:
        plot_simulation(tmp_path / "x.png", sim, title="t", slo_seconds=NAN)
    assert str(err.value) == "slo_seconds must be a non-negative number of seconds: nan"
    with pytest.raises(PlotError) as err:
        plot_policies(tmp_path / "x.png", policies(3), title="t", slo_seconds=-1)
    assert str(err.value) == "slo_seconds must be a non-negative number of seconds: -1"


def test_unwritable_path(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "sim.png"
    with pytest.raises(PlotError) as err:
        plot_simulation(target, simulation(5), title="t")
    assert str(err.value).startswith(f"cannot write {target}: ")


def test_missing_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import` raise ImportError, as if matplotlib were not installed.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg", "matplotlib.ticker", "matplotlib.dates"):
        monkeypatch.setitem(sys.modules, name, None)
    calls = [
        lambda: plot_simulation(tmp_path / "x.png", simulation(5), title="t"),
        lambda: plot_backtest(tmp_path / "x.png", backtest(5), title="t"),
        lambda: plot_policies(tmp_path / "x.png", policies(5), title="t"),
    ]
    for call in calls:
        with pytest.raises(PlotError) as err:
            call()
        assert str(err.value) == NO_MATPLOTLIB
    assert not (tmp_path / "x.png").exists()
