"""The demo's Celery app: two queues, each served by its own worker service.

`images` gets slow tasks (resizing, 0.3-1.2 s), `emails` quick ones (0.05-0.2 s) of
which a few fail, so every dashboard panel has something to show. Workers load it
by name (`celery -A demo.app worker -Q images`) and read the broker from
DEMO_BROKER_URL.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from exporter import instrument_celery

QUEUES = ("images", "emails")

app = Celery("demo", broker=os.environ.get("DEMO_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue="images",
    task_routes={"demo.resize_image": {"queue": "images"},
                 "demo.send_email": {"queue": "emails"}},
    # What the README recommends for scale-in without losing a task: a worker being
    # stopped holds nothing it has not started, and a killed one gives its task back.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
)
instrument_celery(app)


class PlannedFailure(Exception):
    """The share of emails the load generator marks to fail (for the failure-ratio panel)."""


@app.task(name="demo.resize_image")
def resize_image(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="demo.send_email")
def send_email(seconds: float, fail: bool = False) -> None:
    time.sleep(seconds)
    if fail:
        raise PlannedFailure("the recipient's server said no (planned by the load generator)")
