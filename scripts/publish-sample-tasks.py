"""Publish a few Celery tasks and RQ jobs so the exporter has something to show.

usage: python scripts/publish-sample-tasks.py [REDIS_URL]
Nothing consumes them; delete them with FLUSHDB when done.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import redis
from celery import Celery
from rq import Queue

from exporter import instrument_celery


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
    print(f"published 6 Celery tasks (queues celery, emails) and 2 RQ jobs (reports) to {url}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
