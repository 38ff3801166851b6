"""Publish a few Celery tasks and RQ jobs so the exporter has something to show.

usage: python scripts/publish-sample-tasks.py [REDIS_URL]
Without REDIS_URL: $BROKER_URL, else $TASKQUEUE_EXPORTER_BROKER_URL (as `make run`
reads them), else redis://127.0.0.1:6379/0. An empty one is refused: it is a
variable this shell does not have. Nothing consumes the tasks; delete them with
FLUSHDB when done.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta

import redis
from celery import Celery
from rq import Queue

from exporter import instrument_celery
from exporter.redaction import redact_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"
VARIABLES = ("BROKER_URL", "TASKQUEUE_EXPORTER_BROKER_URL")


def broker_url(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The URL to publish to; ValueError naming where an empty one came from."""
    if argv:
        source, url = "the REDIS_URL argument", argv[0]
    else:
        source, url = next(((f"${name}", environ[name]) for name in VARIABLES
                            if name in environ), ("", DEFAULT_URL))
    if not url.strip():
        raise ValueError(f"{source} is empty: give the broker URL (is BROKER_URL set in "
                         "this shell?)")
    return url


def main(url: str) -> None:
    app = Celery("sample", broker=url, set_as_current=False)
    instrument_celery(app)
    add = app.signature("sample.add")
    for priority in (0, 3, 6, 9):
        add.apply_async((1, 2), priority=priority)
    add.apply_async((1, 2), queue="emails")
    add.apply_async((1, 2), queue="emails", countdown=600)

    queue = Queue("reports", connection=redis.Redis.from_url(url))
    queue.enqueue("builtins.print", "hello")
    queue.enqueue_in(timedelta(minutes=10), "builtins.print", "later")
    app.close()
    print("published 6 Celery tasks (queues celery, emails) and 2 RQ jobs (reports) to "
          f"{redact_url(url)}")


if __name__ == "__main__":
    try:
        chosen = broker_url(sys.argv[1:], os.environ)
    except ValueError as error:
        sys.exit(f"publish-sample-tasks.py: error: {error}")
    main(chosen)
