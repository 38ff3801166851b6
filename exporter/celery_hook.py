"""The producer hook: stamps each Celery task's publish time into its headers.

With the stamp the exporter reports the exact age of the oldest waiting task;
without it, only when the exporter first saw the task at the head of its queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from exporter.messages import PUBLISHED_AT_HEADER

DISPATCH_UID = "taskqueue-autoscaler.instrument_celery"


def stamp_headers(headers: dict[str, Any] | None, clock: Callable[[], float] = time.time) -> None:
    """Set the publish time; a re-publish (retry) gets a new stamp, as it waits anew."""
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = clock()


def _on_publish(sender: object = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    stamp_headers(headers)


def instrument_celery(app: object | None = None) -> None:
    """Stamp the publish time of every task this process sends.

    Call once in the module that creates the Celery app; calling again is a
    no-op. Celery's `before_task_publish` signal is process-wide, so `app` is
    accepted for readability and not needed. The only effect on a task is one
    extra header.
    """
    from celery.signals import before_task_publish

    before_task_publish.connect(_on_publish, weak=False, dispatch_uid=DISPATCH_UID)
