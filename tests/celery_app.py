"""A real Celery app for the tests: producers build it in process, workers load it by name.

A worker started with `celery -A tests.celery_app worker` reads its broker and
transport options from TQ_TEST_BROKER_URL and TQ_TEST_TRANSPORT_OPTIONS (JSON).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery


def create_app(broker_url: str, transport_options: dict[str, Any] | None = None) -> Celery:
    app = Celery("tests.celery_app", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options or {},
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        worker_prefetch_multiplier=4,
        worker_hijack_root_logger=False,
    )

    @app.task(name="tests.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="tests.wait_for_key", shared=False)
    def wait_for_key(key: str, timeout: float = 60.0) -> None:
        # Holds the worker until the test sets `key`, so the test controls
        # exactly what is running and what stays prefetched.
        client = redis.Redis.from_url(broker_url)
        deadline = time.monotonic() + timeout
        while not client.exists(key) and time.monotonic() < deadline:
            time.sleep(0.02)

    return app


app = (
    create_app(
        os.environ["TQ_TEST_BROKER_URL"],
        json.loads(os.environ.get("TQ_TEST_TRANSPORT_OPTIONS", "{}")),
    )
    if "TQ_TEST_BROKER_URL" in os.environ
    else None
)
