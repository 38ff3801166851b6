"""The producer hook: what the exporter needs from each task a process publishes.

- A publish-time header, so the Redis reader reports the exact age of the
  oldest waiting task (without it, only when the exporter first saw the task
  at the head of its queue).
- On RabbitMQ, the AMQP `timestamp` property as well, which the management
  API reports as the queue's head_message_timestamp.
- `task-sent` events (task_send_sent_event), which carry each task's queue and
  publish time to the event tracker: wait time and per-queue attribution.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from exporter.messages import PUBLISHED_AT_HEADER

DISPATCH_UID = "taskqueue-autoscaler.instrument_celery"
AMQP_DISPATCH_UID = "taskqueue-autoscaler.instrument_celery.amqp_timestamp"
AMQP_SCHEMES = frozenset(("amqp", "amqps", "pyamqp", "librabbitmq"))


def stamp_headers(headers: dict[str, Any] | None, clock: Callable[[], float] = time.time) -> None:
    """Set the publish time; a re-publish (retry) gets a new stamp, as it waits anew."""
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = clock()


def stamp_properties(
    properties: dict[str, Any] | None, clock: Callable[[], float] = time.time
) -> None:
    """The AMQP timestamp property: whole seconds, as the protocol carries it."""
    if properties is not None:
        properties["timestamp"] = int(clock())


def _on_publish(sender: object = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    stamp_headers(headers)


def _on_amqp_publish(
    sender: object = None, properties: dict[str, Any] | None = None, **_: Any
) -> None:
    stamp_properties(properties)


def uses_amqp(app: Any) -> bool:
    url = app.conf.broker_write_url or app.conf.broker_url or ""
    return urlsplit(str(url).split(";")[0]).scheme in AMQP_SCHEMES


def instrument_celery(app: Any | None = None, *, sent_events: bool = True) -> None:
    """Stamp the publish time of every task this process sends.

    Call once in the module that creates the Celery app, after configuring
    it; calling again is a no-op. With `app`, also turns on `task-sent` events
    for it (`sent_events=False` leaves that setting alone) and, when its broker
    is RabbitMQ, sets each message's AMQP timestamp. Celery's
    `before_task_publish` signal is process-wide: the stamps apply to every
    app of the process.
    """
    from celery.signals import before_task_publish

    before_task_publish.connect(_on_publish, weak=False, dispatch_uid=DISPATCH_UID)
    if app is None:
        return
    if sent_events:
        app.conf.task_send_sent_event = True
    if uses_amqp(app):
        before_task_publish.connect(_on_amqp_publish, weak=False, dispatch_uid=AMQP_DISPATCH_UID)
