"""`taskqueue-scaler`: check a config, or run the scaling loop with its /metrics endpoint."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

# What check-config needs, and the commands' options; the rest (boto3, requests, the
# HTTP server, the loop) is imported by the command that uses it: check-config answers
# within a second, most of it Python's start-up.
from scaler.config import ConfigError, load_config
from scaler.simulation import backtest
from scaler.simulation import command as simulate_command

if TYPE_CHECKING:
    import requests

    from scaler.config import ScalerConfig
    from scaler.cycle import Outcome

PROG = "taskqueue-scaler"
EXIT_USAGE = 2
log = logging.getLogger(PROG)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Sets the desired count of ECS worker services from PromQL rules.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="evaluate the rules every interval and scale")
    run.add_argument("--config", required=True, metavar="FILE", help="the scaler's YAML config")
    run.add_argument("--once", action="store_true", help="one evaluation, then exit")
    run.add_argument("--dry-run", action="store_true",
                     help="decide and log, but never change a service")
    run.add_argument("--listen-address", default=None,
                     help="address for /metrics and /healthz (default: the config's, 0.0.0.0)")
    run.add_argument("--port", type=int, default=None,
                     help="port for /metrics and /healthz (default: the config's, 9809; "
                          "0 picks a free one)")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    check = commands.add_parser("check-config", help="validate a config and exit")
    check.add_argument("config", metavar="FILE")
    simulate_command.add_parser(commands)
    past = commands.add_parser(
        "backtest", help="what the scaler would have decided over real history",
        description=backtest.HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    past.add_argument("--config", required=True, metavar="FILE", help="the scaler's YAML config")
    past.add_argument("--from", dest="start", required=True, metavar="TIME",
                      help="start of the range (2024-05-01T10:00:00Z, epoch seconds, -6h)")
    past.add_argument("--to", dest="end", default="now", metavar="TIME",
                      help="end of the range (default: now)")
    past.add_argument("--service", action="append", metavar="NAME",
                      help="only this service (repeatable; default: every service)")
    past.add_argument("--step", metavar="DURATION",
                      help="time between evaluations (default: the config's interval)")
    past.add_argument("--actual-query", default=backtest.DEFAULT_ACTUAL_QUERY, metavar="PROMQL",
                      help="the count the service actually ran; {{ service }} is its name "
                           "(default: %(default)s)")
    past.add_argument("--prometheus-url", metavar="URL",
                      help="query this Prometheus instead of the config's")
    past.add_argument("--json", action="store_true", help="print JSON instead of tables")
    past.add_argument("--plot", metavar="FILE.png",
                      help="also draw would-be and actual counts (one FILE-<service>.png per "
                           "service when there are several)")
    return parser


def _config_errors(path: str, error: ConfigError) -> int:
    for line in error.errors:
        print(f"{PROG}: {path}: {line}", file=sys.stderr)
    return EXIT_USAGE


def _session(config: ScalerConfig) -> requests.Session:
    import requests
    from requests.adapters import HTTPAdapter

    # One pooled connection per concurrent query, kept alive between cycles.
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.concurrency)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _backtest(args: argparse.Namespace, config: ScalerConfig) -> int:
    """Exit 2 for a bad option, 1 when Prometheus cannot answer: one line either way."""
    from scaler.prometheus import PrometheusClient

    try:
        start, end = backtest.parse_range(args.start, args.end, time.time())
        step = backtest.parse_step(args.step, config.interval)
        services = backtest.select_services(config, args.service)
        settings = config.prometheus
        if args.prometheus_url is not None:
            try:
                url = args.prometheus_url.rstrip("/")
                same = urlsplit(url)[:2] == urlsplit(settings.url)[:2]
                # The config's token and headers are for the config's server: never sent
                # to another host because a flag named it.
                settings = (replace(settings, url=url) if same else
                            replace(settings, url=url, headers={}, bearer_token=None))
            except ValueError as error:
                raise backtest.UsageError(f"--prometheus-url: {error}") from None
        with PrometheusClient(settings) as prometheus:
            result = backtest.backtest(config, prometheus.query_range, start, end, step,
                                       services, args.actual_query)
        plots = backtest.write_plots(result, args.plot) if args.plot else {}
    except backtest.UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except backtest.BacktestError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(backtest.to_json(result, plots), indent=2))
    else:
        print(backtest.render_table(result), end="")
        for name, path in plots.items():
            print(f"plot of {name}: {path}")
    return 0


def _times_joined(argv: Sequence[str]) -> list[str]:
    """`--from -6h` as `--from=-6h`: argparse would take the value for an option."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in ("--from", "--to") and backtest.is_relative(arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(_times_joined(sys.argv[1:] if argv is None else argv))
    environ = os.environ if environ is None else environ
    path = args.config
    try:
        config = load_config(path, environ)
    except ConfigError as error:
        return _config_errors(path, error)
    if args.command == "check-config":
        names = ", ".join(s.name for s in config.services)
        print(f"{path}: ok, {len(config.services)} services: {names}")
        return 0
    if args.command == "backtest":
        return _backtest(args, config)
    if args.command == "simulate":
        return simulate_command.run(args, config)

    from prometheus_client import CollectorRegistry

    from exporter import server
    from exporter.redaction import configure_logging, secrets_of_url
    from scaler.cycle import Fleet, Scaler
    from scaler.ecs import ecs_client
    from scaler.lease import LeaseError, build_lease
    from scaler.metrics import ScalerCollector
    from scaler.prometheus import PrometheusClient
    from scaler.restore import log_restored, restore

    lease_url = (environ.get(config.lease.url_env or "", "") or config.lease.url or ""
                 if config.lease is not None else "")
    secrets = tuple(s for s in (config.prometheus.bearer_token, *config.prometheus.headers.values(),
                                *secrets_of_url(lease_url)) if s)
    # botocore and urllib3 at INFO would log every request.
    configure_logging(args.log_level, secrets, quiet=("botocore", "boto3", "urllib3"))
    address = args.listen_address or config.listen_address
    port = config.port if args.port is None else args.port
    lease = None
    if config.lease is not None and not args.dry_run:
        # A dry run changes nothing, so it must not take the lease from the instance that does.
        try:
            lease = build_lease(config.lease, environ)
        except LeaseError as error:
            print(f"{PROG}: error: lease: {error}", file=sys.stderr)
            return EXIT_USAGE
    prometheus = PrometheusClient(config.prometheus, session=_session(config))
    restored = restore(config, prometheus.query_range, time.time())
    log_restored(restored, config)
    update_client_for, budget = None, 0.0
    if lease is not None and config.lease is not None:
        # One UpdateService under the lease: one attempt of at most 2 x timeout, which
        # must fit in the third of the ttl kept back between the safe time and expiry.
        timeout = config.lease.ttl / 12

        def update_client_for(region: str, endpoint: str | None) -> Any:
            return ecs_client(region, endpoint, max_attempts=1, connect_timeout=timeout,
                              read_timeout=timeout)

        budget = 2 * timeout
    fleet = Fleet(config.services, lambda region, endpoint: ecs_client(region, endpoint),
                  update_client_for)
    scaler = Scaler(config, prometheus.query_samples, fleet, clock=time.time, timer=time.monotonic,
                    dry_run=args.dry_run, histories=restored.histories, lease=lease,
                    metric_names=prometheus.metric_names, update_budget=budget)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScalerCollector(scaler))
    try:
        httpd = server.bind(address, port, registry, title=PROG, health=scaler.stalled)
    except OSError as error:
        print(f"{PROG}: error: cannot listen on {address}:{port}: {error.strerror or error}",
              file=sys.stderr)
        return EXIT_USAGE
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The cycle in progress finishes; the loop stops before the next one.
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("scaling %d services every %gs%s; metrics on http://%s:%d/metrics",
             len(config.services), config.interval, " (dry run)" if args.dry_run else "",
             address, httpd.server_port)
    try:
        outcomes = scaler.run(stop, once=args.once)
    finally:
        try:
            httpd.shutdown()
            httpd.server_close()
            scaler.close()
        finally:
            fleet.close()  # local workers: warm shutdown, then SIGKILL after stop_timeout
            prometheus.close()
    log.info("stopped")
    if args.once:
        return _report_once(outcomes)
    return 0


def _report_once(outcomes: Sequence[Outcome] | None) -> int:
    """One line per service on stdout; 1 when any could not be read, evaluated or set."""
    if outcomes is None:
        print(f"{PROG}: error: the evaluation failed as a whole (see the log)", file=sys.stderr)
        return 1
    failed = False
    for o in outcomes:
        if o.before is None:
            what = "not read"
        elif o.after == o.before:
            what = f"{o.before} (unchanged, {o.reason})"
        else:
            done = "set" if o.applied else f"not set: {o.note}" if o.note else "not set"
            what = f"{o.before} -> {o.after} ({o.reason}, {done})"
        if o.problems:
            failed = True
            what += ": " + "; ".join(o.problems)
        elif o.note and o.after == o.before and o.note != "dry run":
            what += f": {o.note}"
        print(f"{o.service}: {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
