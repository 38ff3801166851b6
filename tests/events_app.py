"""A Celery app whose workers send events, for the event-tracking tests.

Workers load it by name (`celery -A tests.events_app worker -E`) and read the
broker from TQ_TEST_BROKER_URL and the transport options from
TQ_TEST_TRANSPORT_OPTIONS (JSON); producers call create_app in process.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from exporter import instrument_celery

QUEUE = "events-q"


def create_app(broker_url: str, transport_options: dict[str, Any] | None = None) -> Celery:
    app = Celery("tests.events_app", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # Tasks that run the whole test must not be redelivered on Redis.
        broker_transport_options={"visibility_timeout": 3600, **(transport_options or {})},
    )
    # Turns on task-sent events in producers and in workers (a retry's re-publish).
    instrument_celery(app)

    @app.task(name="ev.sleep", shared=False)
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="ev.fail", shared=False)
    def fail() -> None:
        raise ValueError("planned failure")

    @app.task(name="ev.retry_once", bind=True, shared=False, max_retries=1)
    def retry_once(self: Any) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "second try"

    return app


app = (
    create_app(os.environ["TQ_TEST_BROKER_URL"],
               json.loads(os.environ.get("TQ_TEST_TRANSPORT_OPTIONS", "{}")))
    if "TQ_TEST_BROKER_URL" in os.environ
    else None
)
