"""A Celery app whose workers call protect_ecs_workers, loaded by name by a real worker.

TQ_TEST_BROKER_URL is the broker; TQ_TEST_PROTECT holds protect_ecs_workers' keyword
arguments as JSON. Tasks record when they start and finish in Redis, so a test can
line the agent's calls up against the work.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from scaler.worker_protection import protect_ecs_workers

BROKER_URL = os.environ.get("TQ_TEST_BROKER_URL", "redis://127.0.0.1:1/0")

app = Celery("tests.protected_app", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
protect_ecs_workers(app, **json.loads(os.environ.get("TQ_TEST_PROTECT", "{}")))


@app.task(name="tests.hold", shared=False)
def hold(name: str, seconds: float) -> None:
    client = redis.Redis.from_url(BROKER_URL)
    client.rpush(f"started:{name}", time.time())
    time.sleep(seconds)
    client.rpush(f"finished:{name}", time.time())
