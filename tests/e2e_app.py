"""The Celery app of the no-task-loss end-to-end test; workers load it by name.

`tests.e2e.work(task_id, seconds)` sleeps, then records in Redis that `task_id`
finished, on which worker and when it ran: a task run twice shows up twice.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from scaler.worker_protection import protect_ecs_workers

BROKER_URL = os.environ.get("TQ_TEST_BROKER_URL", "redis://127.0.0.1:1/0")
DONE = "e2e:done"
RUNS = "e2e:runs"

app = Celery("tests.e2e_app", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
# As a user would: on ECS it protects busy workers; here (no ECS_AGENT_URI) it says so once.
protect_ecs_workers(app)
_client = redis.Redis.from_url(BROKER_URL)


@app.task(name="tests.e2e.work", bind=True, shared=False)
def work(self, task_id: str, seconds: float) -> None:  # type: ignore[no-untyped-def]
    started = time.time()
    time.sleep(seconds)
    run = {"id": task_id, "worker": self.request.hostname, "start": started, "end": time.time()}
    pipe = _client.pipeline()
    pipe.rpush(DONE, task_id)
    pipe.rpush(RUNS, json.dumps(run))
    pipe.execute()
