"""`taskqueue-exporter`: wire the config, the broker client, the collector and the server."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import FrameType

import redis
from prometheus_client import CollectorRegistry

from exporter import server
from exporter.celery_events import EventStream, TrackerFeed, celery_app
from exporter.celery_inspect import CeleryInspector
from exporter.celery_redis import CeleryRedisReader
from exporter.collector import BrokerReader, EventCollector, QueueCollector
from exporter.config import ConfigError, ExporterConfig, parse_config
from exporter.event_tracker import EventTracker, TrackerOptions
from exporter.redaction import configure_logging, redact_url, secrets_of_url
from exporter.redis_database import empty_database_warning
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
    return QueueCollector(redis_readers(config, client), clock=clock,
                          empty_warning=partial(empty_database_warning, client))


def redis_readers(config: ExporterConfig, client: redis.Redis) -> list[BrokerReader]:
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
    return [celery, rq]


class EventParts:
    """The event tracker with its two threads, started and stopped together."""

    def __init__(self, config: ExporterConfig, clock: Callable[[], float] = time.time) -> None:
        # The receiver and remote control write bindings into the app's keys: in
        # the app's layout, or its workers cannot read them.
        options = {} if config.rabbitmq else config.layout.transport_options()
        app = celery_app(config.broker_url, options, config.broker_timeout)
        tracker = EventTracker(TrackerOptions(
            wait_buckets=config.wait_buckets,
            runtime_buckets=config.runtime_buckets,
            task_label=config.task_label,
            max_tracked_tasks=config.max_tracked_tasks,
        ))
        lock = threading.Lock()
        feed = TrackerFeed(tracker, lock, clock)
        self.stream = EventStream(app, feed, shown_url=redact_url(config.broker_url),
                                  on_connected=feed.resume)
        self.inspector = CeleryInspector(app, tracker, lock, interval=config.inspect_interval,
                                         timeout=config.inspect_timeout, clock=clock)
        self.collector = EventCollector(
            tracker, lock, stream=self.stream, inspector=self.inspector,
            per_worker=config.per_worker_metrics, clock=clock,
        )

    def start(self) -> None:
        self.stream.start()
        self.inspector.start()

    def stop(self) -> None:
        # Both are told first, then waited for: each may be mid-way through a
        # broker call of a few seconds.
        self.stream.stop(timeout=0)
        self.inspector.stop(timeout=0)
        self.stream.stop()
        self.inspector.stop()


def _always(logger: logging.Logger, message: str, *args: object) -> None:
    """Log at info level whatever the logger's level (handlers and filters still apply)."""
    logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, args, None))


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
    if config.management_url:
        secrets += secrets_of_url(config.management_url)
    # kombu and amqp log connection details of their own at info level.
    configure_logging(config.log_level, secrets, quiet=("kombu", "amqp", "celery"))
    shown_url = redact_url(config.broker_url)

    closers: list[Callable[[], None]] = []
    if config.rabbitmq:
        from exporter.rabbitmq import build_rabbitmq_reader

        try:
            reader = build_rabbitmq_reader(
                config.broker_url, management_url=config.management_url,
                queues=config.celery_queues, discover=config.discover,
                exclude=config.exclude_queues, timeout=config.broker_timeout,
            )
        except ValueError as error:
            return _fail(str(error), secrets)
        collector = QueueCollector([reader])
        closers.append(reader.close)
    else:
        try:
            client = connect(config)
            client.ping()
        except (ValueError, redis.RedisError) as error:
            return _fail(f"cannot connect to the broker at {shown_url}: {error}", secrets)
        collector = build_collector(config, client)
        closers.append(client.close)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    events = EventParts(config) if config.events else None
    if events is not None:
        registry.register(events.collector)
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
    # The one place that says where to look (`make run` prints nothing of its own),
    # so said at any --log-level.
    _always(
        log, "exporting %s%s at %s (listening on %s)", shown_url,
        " with Celery events" if events is not None else "",
        server.metrics_url(config.listen_address, httpd.server_port),
        f"[{config.listen_address}]:{httpd.server_port}" if ":" in config.listen_address
        else f"{config.listen_address}:{httpd.server_port}",
    )
    if events is not None:
        events.start()
    httpd.serve_forever()
    httpd.server_close()
    if events is not None:
        events.stop()
    for close in closers:
        close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
