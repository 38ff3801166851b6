"""`taskqueue-scaler simulate`: options, the private Prometheus, the output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from scaler.config import ScalerConfig, parse_duration

# The simulation (requests, a Prometheus process, the exporter's families) is imported by
# run(): every other command builds this command's options, and check-config must be fast.
if TYPE_CHECKING:
    from scaler.simulation.simulate import SimulationResult


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "simulate",
        help="replay a workload against the config's rules in a closed loop",
        description="Replays a workload against one service of the config: a simulated queue "
                    "and workers feed a private Prometheus, the config's queries run there at "
                    "each simulated instant, and the scaler's own decision code scales the "
                    "simulated workers.")
    p.add_argument("--config", required=True, metavar="FILE", help="the scaler's YAML config")
    p.add_argument("--workload", required=True, metavar="CSV|GENERATOR",
                   help="a CSV (timestamp[,duration_seconds]) or steady:rate=5/s, "
                        "diurnal:base=1/s,peak=20/s, burst:base=1/s,peak=40/s,every=30m,"
                        "length=2m")
    p.add_argument("--service", metavar="NAME", help="which service (needed with several)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--duration", metavar="TIME", help="simulate this long (default: the "
                                                      "workload's length)")
    p.add_argument("--service-time", metavar="DIST",
                   help="task durations where the workload has none: 2s, exp:mean=2s, "
                        "uniform:min=1s,max=3s, lognormal:mean=2s,sigma=0.5, "
                        "normal:mean=2s,sd=0.5s")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="tasks one worker runs at once (default 1)")
    p.add_argument("--startup-delay", default="60s", metavar="DIST",
                   help="launch to first task, a distribution like --service-time "
                        "(default 60s)")
    p.add_argument("--scrape-interval", default="15s", metavar="TIME",
                   help="how often the exporter is scraped (default 15s)")
    p.add_argument("--rule-interval", metavar="TIME",
                   help="recording rules' evaluation interval (default: the scrape interval)")
    p.add_argument("--interval", metavar="TIME",
                   help="the scaler's evaluation interval (default: the config's)")
    p.add_argument("--slo", default="60s", metavar="TIME",
                   help="wait objective: share of tasks waiting longer is reported "
                        "(default 60s)")
    p.add_argument("--initial", type=int, metavar="N",
                   help="workers at the start (default: the service's min)")
    p.add_argument("--no-protection", dest="protection", action="store_false",
                   help="scale-in without task protection: busy workers are stopped and "
                        "their tasks requeued")
    p.add_argument("--rules", action="append", default=[], metavar="FILE",
                   help="Prometheus rule file whose recording rules the config reads "
                        "(e.g. alerts/recording.yml); repeatable")
    p.add_argument("--queue", metavar="NAME",
                   help="queue label of the simulated series (default: the service's "
                        "match_labels queue, else 'default')")
    p.add_argument("--prometheus-binary", default="prometheus", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG of the run")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it shows only on a terminal anyway)")


def _progress(stream: TextIO) -> Callable[[float, float], None]:
    width = 30

    def show(done: float, total: float) -> None:
        share = 1.0 if total <= 0 else min(1.0, done / total)
        filled = round(share * width)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {share:4.0%} "
                     f"{done / 60:,.0f}/{total / 60:,.0f} simulated minutes")
        stream.flush()

    return show


def run(args: argparse.Namespace, config: ScalerConfig, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    from scaler.evaluate import queries_of
    from scaler.simulation.prometheus_process import LocalPrometheus, PrometheusStartError
    from scaler.simulation.recording import RuleFileError, load_rule_files, missing_records
    from scaler.simulation.remote_write import RemoteWriteError
    from scaler.simulation.report import format_table, to_json
    from scaler.simulation.simulate import SimOptions, SimulationError, pick_service, simulate
    from scaler.simulation.workload import (
        WorkloadError,
        load_workload,
        parse_distribution,
        with_durations,
    )

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        service = pick_service(config, args.service)
        durations = {}
        for option in ("duration", "scrape_interval", "rule_interval", "interval", "slo"):
            value = getattr(args, option)
            if value is not None:
                flag = f"--{option.replace('_', '-')}"
                try:
                    durations[option] = parse_duration(value)
                except ValueError as error:
                    raise WorkloadError(f"{flag}: {error}") from None
                if durations[option] <= 0:
                    raise WorkloadError(f"{flag}: must be > 0 (got {value!r})")
        if args.concurrency < 1:
            raise WorkloadError(f"--concurrency: must be >= 1 (got {args.concurrency})")
        if args.initial is not None and not 0 <= args.initial <= service.limits.max:
            raise WorkloadError(f"--initial: must be between 0 and the service's max "
                                f"{service.limits.max} (got {args.initial})")
        workload = load_workload(args.workload, seed=args.seed,
                                 duration=durations.get("duration"))
        missing = sum(1 for d in workload.durations if d != d)
        if missing:
            if args.service_time is None:
                raise WorkloadError(f"--service-time is needed: the workload gives no duration "
                                    f"for {missing:,} of its {len(workload.durations):,} tasks")
            workload = with_durations(
                workload, parse_distribution(args.service_time, "--service-time"), args.seed)
        startup = parse_distribution(args.startup_delay, "--startup-delay")
        rules = load_rule_files(args.rules)
        unknown = missing_records(rules, queries_of(service))
        if unknown:
            raise WorkloadError(
                f"the config reads {', '.join(unknown)}, which no --rules file records "
                "(the project's recording rules are in alerts/recording.yml)")
    except (WorkloadError, SimulationError, RuleFileError) as error:
        print(f"taskqueue-scaler simulate: {error}", file=err)
        return 2
    scrape = durations.get("scrape_interval", 15.0)
    options = SimOptions(
        startup=startup, concurrency=args.concurrency, protection=args.protection,
        scrape_interval=scrape, rule_interval=durations.get("rule_interval", scrape),
        interval=durations.get("interval"), slo=durations.get("slo", 60.0),
        initial=args.initial, seed=args.seed, queue=args.queue)
    show = _progress(err) if args.progress and err.isatty() else None
    try:
        with LocalPrometheus(args.prometheus_binary) as prometheus:
            result = simulate(config, service, workload, options, prometheus.url, rules,
                              progress=show)
    except (PrometheusStartError, RemoteWriteError, SimulationError) as error:
        print(f"\ntaskqueue-scaler simulate: {error}" if show else
              f"taskqueue-scaler simulate: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("\ntaskqueue-scaler simulate: interrupted", file=err)
        return 130
    if show:
        err.write("\n")
    if args.plot:
        from scaler.simulation.plot import PlotError, plot_simulation
        try:
            plot_simulation(args.plot, result.series, title=_title(result),
                            slo_seconds=options.slo)
        except PlotError as error:
            print(f"taskqueue-scaler simulate: {error}", file=err)
            return 1
    if args.json:
        print(json.dumps(to_json(result), indent=2), file=out)
    else:
        print(format_table(result), file=out)
    if result.failed:
        # The report stands, but a config whose rules fail is not proven by it.
        print(f"taskqueue-scaler simulate: {result.failed_evaluations} evaluations failed "
              f"({result.warmup_failures} of them before the first that worked); the first: "
              f"{result.first_error}", file=err)
        return 1
    return 0


def _title(result: SimulationResult) -> str:
    return f"{result.service}: {result.workload}"
