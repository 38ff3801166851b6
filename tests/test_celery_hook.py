"""The producer hook on real Celery publishes."""

from __future__ import annotations

import json
import time

import pytest
from celery.signals import before_task_publish

from exporter import instrument_celery
from exporter.celery_hook import DISPATCH_UID, stamp_headers
from exporter.messages import PUBLISHED_AT_HEADER
from tests.celery_app import create_app


@pytest.fixture
def unhooked():
    before_task_publish.disconnect(dispatch_uid=DISPATCH_UID)
    yield
    before_task_publish.disconnect(dispatch_uid=DISPATCH_UID)


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
