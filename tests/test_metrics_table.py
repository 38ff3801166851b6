"""The README's metrics table, column by column, against real scrapes of each broker.

A series the table marks with a dash for a broker must be absent from that broker's
scrape; every other one must be there (for a queue with waiting tasks, an
empty queue, or a broken message, whichever the series needs).
"""

from __future__ import annotations

import time
from pathlib import Path

import amqp
import pytest
from rq import Queue

from exporter import metric_names as m
from exporter.collector import QueueCollector
from exporter.config import parse_config
from exporter.rabbitmq import build_rabbitmq_reader
from tests.celery_app import create_app
from tests.rabbitmq import MANAGEMENT_URL, Vhost, require_rabbitmq
from tests.scrape import Samples, collect, exporter
from tests.services import wait_for

README = Path(__file__).resolve().parent.parent / "README.md"
REDIS = "Celery on Redis"
MANAGEMENT = "Celery on RabbitMQ, management API"
PASSIVE = "Celery on RabbitMQ, passive declares"
RQ = "RQ"
EVENTS_ROW = "event series"
DASH = "\N{EN DASH}"


def table() -> dict[str, dict[str, bool]]:
    """{column: {metric or "event series": exported?}} from the README's metrics table."""
    lines = README.read_text().split("### Metrics", 1)[1].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines[first:end] if not line.startswith("|---")]
    header, body = rows[0], rows[1:]
    columns = header[2:]
    exported: dict[str, dict[str, bool]] = {column: {} for column in columns}
    for row in body:
        name = row[0].strip("`") if row[0].startswith("`") else row[0].split(" (")[0]
        for column, cell in zip(columns, row[2:], strict=True):
            exported[column][name] = not cell.startswith(DASH)
    return exported


def check(column: str, samples: Samples, system: str) -> None:
    expected = {name for name, yes in table()[column].items() if yes and name != EVENTS_ROW}
    unexpected = {name for name, yes in table()[column].items() if not yes}
    # The system's series, and the exporter's own (which have no system label).
    present = {name for name, labels in samples
               if dict(labels).get("system", system) == system}
    assert expected <= present, f"{column}: the table says {expected - present} are exported"
    assert not present & unexpected, f"{column}: the table says {present & unexpected} are not"


def test_the_table_has_the_four_columns_and_every_metric() -> None:
    columns = table()
    assert list(columns) == [REDIS, MANAGEMENT, PASSIVE, RQ]
    queue_metrics = {spec.name for spec in (
        m.QUEUE_DEPTH, m.OLDEST_TASK_AGE, m.TASKS_UNACKED, m.TASKS_SCHEDULED, m.TASKS_STARTED,
        m.TASKS_FAILED, m.QUEUE_CONSUMERS, m.SCRAPE_DURATION, m.SCRAPE_SUCCESS,
        m.UNPARSEABLE_MESSAGES)}
    assert set(columns[REDIS]) == queue_metrics | {EVENTS_ROW}


@pytest.mark.parametrize(
    ("column", "flags"),
    [(REDIS, ["--broker-url", "redis://h/0"]), (REDIS, ["--broker-url", "rediss://h/0"]),
     (RQ, ["--broker-url", "redis://h/0", "--queue", "rq:reports"]),
     (MANAGEMENT, ["--broker-url", "amqp://h//", "--rabbitmq-management-url", "http://h:15672"]),
     (PASSIVE, ["--broker-url", "amqp://h//", "--queue", "celery"])],
)
def test_the_event_row_says_where_events_are_on(column: str, flags: list[str]) -> None:
    assert parse_config(flags, {}).events is table()[column][EVENTS_ROW]


def test_redis_columns(redis_server, redis_client) -> None:
    app = create_app(redis_server.url)
    app.tasks["tests.add"].apply_async((1, 2))
    app.close()
    redis_client.rpush("celery", b"not a message")
    queue = Queue("reports", connection=redis_client)
    queue.enqueue("builtins.print", "hello")
    queue.enqueue("builtins.print", "no hash")
    redis_client.delete(f"rq:job:{queue.job_ids[0]}")  # the head job's hash is gone
    samples = collect(exporter(redis_server.url))
    check(REDIS, samples, "celery")
    check(RQ, samples, "rq")


def test_rabbitmq_columns() -> None:
    vhost = Vhost(require_rabbitmq()).create()
    try:
        with vhost.connection() as connection:
            channel = connection.channel()
            for name, stamps in (("waiting", [int(time.time())]), ("empty", [])):
                channel.queue_declare(name, auto_delete=False)
                for stamp in stamps:
                    channel.basic_publish(amqp.Message(b"{}", timestamp=stamp), "", name)
        readers = {
            MANAGEMENT: build_rabbitmq_reader(vhost.broker_url(), management_url=MANAGEMENT_URL,
                                              queues=(), discover=True, exclude=(), timeout=5),
            PASSIVE: build_rabbitmq_reader(vhost.broker_url(), management_url=None,
                                           queues=("waiting", "empty"), discover=True,
                                           exclude=(), timeout=5),
        }
        for column, reader in readers.items():
            collector = QueueCollector([reader])
            # The management API's figures lag: wait for the message to show.
            samples = wait_for(
                lambda collector=collector: (s := collect(collector)) and s.get(
                    (m.QUEUE_DEPTH.name, frozenset({("system", "celery"),
                                                    ("queue", "waiting")}))) == 1 and s,
                timeout=20, interval=0.2, what=f"{column}: the waiting message")
            check(column, samples, "celery")
            reader.close()
    finally:
        vhost.delete()
