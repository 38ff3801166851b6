"""`taskqueue-exporter`: wire the config, the broker client, the collector and the server."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

import redis
from prometheus_client import CollectorRegistry

from exporter import server
from exporter.celery_redis import CeleryRedisReader
from exporter.collector import QueueCollector
from exporter.config import ConfigError, ExporterConfig, parse_config
from exporter.redaction import configure_logging, redact_url, secrets_of_url
from exporter.rq_redis import RQReader

PROG = "taskqueue-exporter"
EXIT_USAGE = 2

log = logging.getLogger("exporter")


def connect(config: ExporterConfig) -> redis.Redis:
    return redis.Redis.from_url(
        config.broker_url,
        socket_timeout=config.broker_timeout,
        socket_connect_timeout=config.broker_timeout,
        health_check_interval=30,
    )


def build_collector(
    config: ExporterConfig, client: redis.Redis, clock: Callable[[], float] = time.time
) -> QueueCollector:
    celery = CeleryRedisReader(
        client,
        config.layout,
        queues=config.celery_queues,
        discover=config.discover,
        discovery_interval=config.discovery_interval,
        exclude=config.exclude_queues,
        max_message_bytes=config.max_message_bytes,
    )
    rq = RQReader(
        client, queues=config.rq_queues, discover=config.discover, exclude=config.exclude_queues
    )
    return QueueCollector([celery, rq], clock=clock)


def _fail(message: str, secrets: tuple[str, ...] = ()) -> int:
    for secret in secrets:
        message = message.replace(secret, "***")
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        config = parse_config(argv, environ)
    except ConfigError as error:
        return _fail(f"{error} (see --help)")
    secrets = secrets_of_url(config.broker_url)
    configure_logging(config.log_level, secrets)
    shown_url = redact_url(config.broker_url)

    try:
        client = connect(config)
        client.ping()
    except (ValueError, redis.RedisError) as error:
        return _fail(f"cannot connect to the broker at {shown_url}: {error}", secrets)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(build_collector(config, client))
    try:
        httpd = server.bind(config.listen_address, config.port, registry)
    except OSError as error:
        return _fail(
            f"cannot listen on {config.listen_address}:{config.port}: {error.strerror or error}"
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must not run on its thread.
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "exporting %s on http://%s:%d/metrics", shown_url, config.listen_address, config.port
    )
    httpd.serve_forever()
    httpd.server_close()
    client.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
