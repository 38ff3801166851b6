"""The exporter against real RQ queues, jobs and workers."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

import pytest
from rq import Queue

from exporter import metric_names as m
from tests import rq_jobs
from tests.scrape import Samples, collect, exporter, value
from tests.services import wait_for
from tests.workers import rq_worker


def rq_value(samples: Samples, spec: m.MetricSpec, queue: str) -> float | None:
    return value(samples, spec.name, system="rq", queue=queue)


def test_enqueued_jobs_give_depth_and_exact_age(redis_server, redis_client):
    queue = Queue("default", connection=redis_client)
    first = queue.enqueue(rq_jobs.ok)
    queue.enqueue(rq_jobs.ok)
    queue.enqueue(rq_jobs.ok)
    enqueued_at = first.enqueued_at.timestamp()

    samples = collect(exporter(redis_server.url, clock=lambda: enqueued_at + 12.5))

    assert rq_value(samples, m.QUEUE_DEPTH, "default") == 3
    assert abs(rq_value(samples, m.OLDEST_TASK_AGE, "default") - 12.5) < 1e-6
    assert rq_value(samples, m.TASKS_STARTED, "default") == 0
    assert rq_value(samples, m.TASKS_FAILED, "default") == 0
    assert rq_value(samples, m.TASKS_SCHEDULED, "default") == 0
    assert rq_value(samples, m.TASKS_UNACKED, "default") is None


def test_scheduled_jobs_are_counted_and_not_waiting(redis_server, redis_client):
    queue = Queue("later", connection=redis_client)
    queue.enqueue_in(timedelta(minutes=5), rq_jobs.ok)
    queue.enqueue_in(timedelta(hours=1), rq_jobs.ok)

    samples = collect(exporter(redis_server.url))

    assert rq_value(samples, m.TASKS_SCHEDULED, "later") == 2
    assert rq_value(samples, m.QUEUE_DEPTH, "later") == 0
    assert rq_value(samples, m.OLDEST_TASK_AGE, "later") == 0.0


def test_failed_jobs_from_a_real_worker(redis_server, redis_client, tmp_path: Path):
    queue = Queue("flaky", connection=redis_client)
    queue.enqueue(rq_jobs.fail)
    queue.enqueue(rq_jobs.fail)
    queue.enqueue(rq_jobs.ok)
    worker = rq_worker(redis_server.url, "flaky", tmp_path / "rq.log", burst=True)
    try:
        # Done when the three jobs are in their registries; not when the process exits:
        # RQ's pub/sub thread can hold the exit for up to a minute (a race in its stop).
        wait_for(lambda: redis_client.zcard("rq:failed:flaky") == 2
                 and redis_client.zcard("rq:finished:flaky") == 1, timeout=60,
                 what="the worker to run the three jobs")
    finally:
        worker.kill()

    samples = collect(exporter(redis_server.url))

    assert rq_value(samples, m.TASKS_FAILED, "flaky") == 2
    assert rq_value(samples, m.QUEUE_DEPTH, "flaky") == 0
    assert rq_value(samples, m.TASKS_STARTED, "flaky") == 0


def test_started_jobs_while_a_real_worker_runs_them(redis_server, redis_client, tmp_path: Path):
    queue = Queue("slow", connection=redis_client)
    queue.enqueue(rq_jobs.wait_for_key, "release")
    queue.enqueue(rq_jobs.ok)
    collector = exporter(redis_server.url)
    worker = rq_worker(redis_server.url, "slow", tmp_path / "rq.log")
    try:
        samples = wait_for(
            lambda: (s := collect(collector)) and rq_value(s, m.TASKS_STARTED, "slow") == 1 and s,
            timeout=30, what="the worker to start the job",
        )
        assert rq_value(samples, m.QUEUE_DEPTH, "slow") == 1
        redis_client.set("release", 1)
        wait_for(
            lambda: (s := collect(collector)) and rq_value(s, m.TASKS_STARTED, "slow") == 0
            and rq_value(s, m.QUEUE_DEPTH, "slow") == 0,
            timeout=30, what="the worker to finish",
        )
    finally:
        redis_client.set("release", 1)
        worker.kill()  # its jobs are done; RQ's exit can hang on its pub/sub thread
    assert rq_value(collect(collector), m.TASKS_FAILED, "slow") == 0


def test_counting_does_not_clean_up_expired_registry_entries(redis_server, redis_client):
    Queue("stale", connection=redis_client).enqueue(rq_jobs.ok)
    redis_client.zadd("rq:wip:stale", {"dead-job:exec": time.time() - 60})
    redis_client.zadd("rq:failed:stale", {"old-failure": time.time() - 60,
                                          "new-failure": time.time() + 3600,
                                          "kept-forever": -1})

    samples = collect(exporter(redis_server.url))

    assert rq_value(samples, m.TASKS_STARTED, "stale") == 0
    assert rq_value(samples, m.TASKS_FAILED, "stale") == 2
    # Still there: the exporter only reads.
    assert redis_client.zcard("rq:wip:stale") == 1
    assert redis_client.zcard("rq:failed:stale") == 3


def test_head_job_without_a_hash_is_skipped_for_age(redis_server, redis_client):
    queue = Queue("gaps", connection=redis_client)
    lost = queue.enqueue(rq_jobs.ok)
    kept = queue.enqueue(rq_jobs.ok)
    redis_client.delete(lost.key)
    now = kept.enqueued_at.timestamp() + 3.0

    collector = exporter(redis_server.url, clock=lambda: now)
    collect(collector)
    samples = collect(collector)

    assert rq_value(samples, m.QUEUE_DEPTH, "gaps") == 2
    assert abs(rq_value(samples, m.OLDEST_TASK_AGE, "gaps") - 3.0) < 1e-6
    assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="rq", queue="gaps") == 1


def test_rq_queues_appear_and_disappear(redis_server, redis_client):
    collector = exporter(redis_server.url, "--queue", "rq:listed")
    assert rq_value(collect(collector), m.QUEUE_DEPTH, "new") is None
    queue = Queue("new", connection=redis_client)
    queue.enqueue(rq_jobs.ok)
    assert rq_value(collect(collector), m.QUEUE_DEPTH, "new") == 1
    queue.delete()
    samples = collect(collector)
    assert rq_value(samples, m.QUEUE_DEPTH, "new") is None
    assert rq_value(samples, m.QUEUE_DEPTH, "listed") == 0


def test_a_registry_of_the_wrong_type_is_logged_once(redis_server, redis_client,
                                                     caplog: pytest.LogCaptureFixture):
    Queue("default", connection=redis_client).enqueue(rq_jobs.ok)
    redis_client.set("rq:failed:default", "not a sorted set")
    collector = exporter(redis_server.url)

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            samples = collect(collector)
            assert rq_value(samples, m.QUEUE_DEPTH, "default") == 1
            assert rq_value(samples, m.TASKS_FAILED, "default") == 0
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read 'rq:failed:default': WRONGTYPE Operation against a key holding the wrong "
        "kind of value"]


def test_a_listed_rq_queue_is_found_while_empty_without_discovery(
        redis_server, redis_client, caplog: pytest.LogCaptureFixture):
    # Only the listed queue is read, but RQ declares it in rq:queues: an empty queue,
    # not a database without queues (which is what the warning is for).
    queue = Queue("jobs", connection=redis_client)
    collector = exporter(redis_server.url, "--no-discovery", "--queue", "rq:jobs")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            job = queue.enqueue(rq_jobs.ok)
            assert rq_value(collect(collector), m.QUEUE_DEPTH, "jobs") == 1
            queue.remove(job)  # what a worker's pop of the last job leaves
            assert redis_client.sismember("rq:queues", "rq:queue:jobs")
            assert rq_value(collect(collector), m.QUEUE_DEPTH, "jobs") == 0
    assert [r.getMessage() for r in caplog.records] == []
    # Gone from RQ too: now it is said, once.
    queue.delete()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            collect(collector)
    assert [r.getMessage()[:32] for r in caplog.records] == ["no Celery or RQ queue in Redis d"]
