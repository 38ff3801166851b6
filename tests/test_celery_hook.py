"""The producer hook on real Celery publishes."""

from __future__ import annotations

import json
import time

import pytest
from celery.signals import before_task_publish

from exporter import instrument_celery
from exporter.celery_hook import AMQP_DISPATCH_UID, DISPATCH_UID, stamp_headers, uses_amqp
from exporter.messages import PUBLISHED_AT_HEADER
from tests.celery_app import create_app


def _unhook() -> None:
    before_task_publish.disconnect(dispatch_uid=DISPATCH_UID)
    before_task_publish.disconnect(dispatch_uid=AMQP_DISPATCH_UID)


@pytest.fixture
def unhooked():
    _unhook()
    yield
    _unhook()


def test_stamp_headers_uses_the_clock():
    headers: dict = {"id": "x"}
    stamp_headers(headers, clock=lambda: 1234.5)
    assert headers == {"id": "x", PUBLISHED_AT_HEADER: 1234.5}
    stamp_headers(None)  # protocol 1 publishes pass no headers: nothing to do


def publish_one(url: str, client) -> dict:
    app = create_app(url)
    app.tasks["tests.add"].apply_async((1, 2), task_id="fixed-id")
    app.close()
    return json.loads(client.rpop("celery"))


def test_hook_adds_only_the_stamp_and_is_idempotent(redis_server, redis_client, unhooked):
    plain = publish_one(redis_server.url, redis_client)

    instrument_celery()
    instrument_celery()
    before = time.time()
    stamped = publish_one(redis_server.url, redis_client)
    after = time.time()

    hooks = [r for r in before_task_publish.receivers if r[0][0] == DISPATCH_UID]
    assert len(hooks) == 1
    assert before <= stamped["headers"].pop(PUBLISHED_AT_HEADER) <= after
    assert stamped["headers"] == plain["headers"]
    assert stamped["body"] == plain["body"]
    assert stamped["properties"].keys() == plain["properties"].keys()


def hooked(uid: str) -> bool:
    return any(r[0][0] == uid for r in before_task_publish.receivers)


@pytest.mark.parametrize(
    ("url", "amqp"),
    [
        ("redis://localhost:6379/0", False),
        ("amqp://guest:guest@localhost:5672//", True),
        ("pyamqp://localhost//", True),
        ("amqps://h//;amqps://other//", True),  # failover list
    ],
)
def test_an_app_turns_on_sent_events_and_on_rabbitmq_the_timestamp(unhooked, url, amqp):
    app = create_app(url)
    assert uses_amqp(app) is amqp
    assert not app.conf.task_send_sent_event
    instrument_celery(app)
    assert app.conf.task_send_sent_event is True
    assert hooked(DISPATCH_UID)
    assert hooked(AMQP_DISPATCH_UID) is amqp
    app.close()


def test_sent_events_can_be_left_alone(unhooked):
    app = create_app("redis://localhost:6379/0")
    instrument_celery(app, sent_events=False)
    assert not app.conf.task_send_sent_event
    app.close()


def test_rabbitmq_reports_the_hooks_timestamp_as_the_oldest_age(unhooked):
    from exporter.rabbitmq import build_rabbitmq_reader
    from tests.rabbitmq import MANAGEMENT_URL, Vhost, require_rabbitmq
    from tests.services import wait_for

    vhost = Vhost(require_rabbitmq()).create()
    app = create_app(vhost.broker_url())
    instrument_celery(app, sent_events=False)
    reader = build_rabbitmq_reader(vhost.broker_url(), management_url=MANAGEMENT_URL,
                                   queues=["celery"], discover=False, exclude=(), timeout=5.0)
    try:
        before = time.time()
        app.tasks["tests.add"].apply_async((1, 2))
        after = time.time()

        def head() -> float | None:
            (queue,) = reader.read(time.time()).queues
            return queue.oldest_enqueued_at if queue.depth == 1 else None

        # The management API samples queue figures every 5 s.
        stamped = wait_for(head, timeout=15, interval=0.25, what="the head message's timestamp")
        # The AMQP timestamp has whole seconds.
        assert int(before) <= stamped <= after
    finally:
        reader.close()
        app.close()
        vhost.delete()
