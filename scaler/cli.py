"""`taskqueue-scaler`: check a config, or run the scaling loop with its /metrics endpoint."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import FrameType

import requests
from prometheus_client import CollectorRegistry
from requests.adapters import HTTPAdapter

from exporter import server
from exporter.redaction import configure_logging
from scaler.config import ConfigError, ScalerConfig, load_config
from scaler.cycle import Fleet, Scaler
from scaler.ecs import ecs_client
from scaler.metrics import ScalerCollector
from scaler.prometheus import PrometheusClient

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
    return parser


def _config_errors(path: str, error: ConfigError) -> int:
    for line in error.errors:
        print(f"{PROG}: {path}: {line}", file=sys.stderr)
    return EXIT_USAGE


def _session(config: ScalerConfig) -> requests.Session:
    # One pooled connection per concurrent query, kept alive between cycles.
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.concurrency)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
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

    secrets = tuple(s for s in (config.prometheus.bearer_token, *config.prometheus.headers.values())
                    if s)
    # botocore and urllib3 at INFO would log every request.
    configure_logging(args.log_level, secrets, quiet=("botocore", "boto3", "urllib3"))
    address = args.listen_address or config.listen_address
    port = config.port if args.port is None else args.port
    prometheus = PrometheusClient(config.prometheus, session=_session(config))
    fleet = Fleet(config.services, lambda region, endpoint: ecs_client(region, endpoint))
    scaler = Scaler(config, prometheus.query_samples, fleet, clock=time.time, timer=time.monotonic,
                    dry_run=args.dry_run)
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
        scaler.run(stop, once=args.once)
    finally:
        try:
            httpd.shutdown()
            httpd.server_close()
            scaler.close()
        finally:
            fleet.close()  # local workers: warm shutdown, then SIGKILL after stop_timeout
            prometheus.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
