"""The exporter against real Redis with messages made by real Celery producers and workers."""

from __future__ import annotations

import json
import logging
import pickle
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue, pools

from exporter import instrument_celery
from exporter import metric_names as m
from exporter.celery_hook import DISPATCH_UID
from exporter.cli import build_collector
from exporter.config import parse_config
from tests.celery_app import create_app
from tests.scrape import Samples, collect, exporter, series, value
from tests.services import RedisServer, wait_for
from tests.workers import celery_worker

TEN_STEPS = {"priority_steps": list(range(10))}
TEN_STEPS_FLAG = ["--broker-transport-option", "priority_steps=0,1,2,3,4,5,6,7,8,9"]


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def celery_value(samples: Samples, spec: m.MetricSpec, queue: str) -> float | None:
    return value(samples, spec.name, system="celery", queue=queue)


@pytest.fixture
def stamped() -> Iterator[None]:
    instrument_celery()
    yield
    before_task_publish.disconnect(dispatch_uid=DISPATCH_UID)


@pytest.fixture
def make_app(
    redis_client: redis.Redis, redis_server: RedisServer
) -> Iterator[Callable[..., Celery]]:
    apps: list[Celery] = []

    def make(transport_options: dict | None = None) -> Celery:
        app = create_app(redis_server.url, transport_options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def delete_queue(app: Celery, name: str) -> None:
    """Delete a queue as kombu does: its binding goes, then its lists."""
    with app.connection_for_write() as connection:
        queue = Queue(name, Exchange(name), routing_key=name)(connection.default_channel)
        queue.declare()
        queue.delete()


def add(app: Celery):
    return app.tasks["tests.add"]


@pytest.mark.parametrize(
    ("options", "flags", "sublists"),
    [({}, [], 4), (TEN_STEPS, TEN_STEPS_FLAG, 10)],
    ids=["4-steps", "10-steps"],
)
def test_depth_sums_every_priority_sublist(make_app, redis_server, redis_client, options, flags,
                                           sublists):
    app = make_app(options)
    for priority in range(10):
        for _ in range(priority + 1):
            add(app).apply_async((1, 2), priority=priority)
    add(app).apply_async((1, 2), queue="emails", priority=9)

    samples = collect(exporter(redis_server.url, *flags))

    assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 55
    assert celery_value(samples, m.QUEUE_DEPTH, "emails") == 1
    # The bare list holds only the lowest step: a plain LLEN, as peers do, misses the rest.
    assert redis_client.llen("celery") < 55
    assert len([k for k in redis_client.keys("celery*")]) == sublists


def test_oldest_age_is_the_oldest_stamped_task_across_sublists(make_app, redis_server, stamped):
    app = make_app(TEN_STEPS)
    before = time.time()
    add(app).apply_async((1, 2), priority=7)
    after = time.time()
    for priority in (0, 3, 9):
        add(app).apply_async((1, 2), priority=priority)
    clock = Clock(after + 100.0)

    samples = collect(exporter(redis_server.url, *TEN_STEPS_FLAG, clock=clock))

    age = celery_value(samples, m.OLDEST_TASK_AGE, "celery")
    assert clock.now - after <= age <= clock.now - before


def test_age_follows_the_tail_across_scrapes_of_one_exporter(make_app, redis_server,
                                                             redis_client, stamped):
    # One exporter reuses what it parsed of an unchanged tail: every way the tail
    # changes between scrapes must still be seen.
    app = make_app()
    clock = Clock(time.time() + 1000.0)
    add(app).apply_async((1, 2), countdown=500)  # oldest: held for an ETA until now+500
    first = time.time()
    add(app).apply_async((1, 2))
    second = time.time()
    add(app).apply_async((1, 2))
    collector = exporter(redis_server.url, clock=clock)

    # The ETA task is due at the exporter's clock (now + 1000): it is the oldest.
    assert celery_value(collect(collector), m.OLDEST_TASK_AGE, "celery") >= clock.now - first
    redis_client.rpop("celery")  # a worker takes the oldest
    age = celery_value(collect(collector), m.OLDEST_TASK_AGE, "celery")
    assert clock.now - second <= age <= clock.now - first
    # Same key, same length, different tail (LSET): parsed anew, and unparseable.
    redis_client.lset("celery", -1, b"not json")
    samples = collect(collector)
    assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 2
    assert clock.now - time.time() <= celery_value(samples, m.OLDEST_TASK_AGE, "celery") <= (
        clock.now - second)
    assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery", queue="celery") == 1


def test_a_future_eta_tail_becomes_the_oldest_when_due(make_app, redis_server, stamped):
    app = make_app()
    before = time.time()
    add(app).apply_async((1, 2), countdown=60)
    after = time.time()
    add(app).apply_async((1, 2))
    clock = Clock(time.time() + 10.0)
    collector = exporter(redis_server.url, clock=clock)

    assert celery_value(collect(collector), m.OLDEST_TASK_AGE, "celery") <= clock.now - after
    clock.now += 100.0  # past the ETA; the tail itself has not changed
    age = celery_value(collect(collector), m.OLDEST_TASK_AGE, "celery")
    assert clock.now - after <= age <= clock.now - before


def test_global_keyprefix_keeps_apps_apart(make_app, redis_server, redis_client):
    tenant = make_app({"global_keyprefix": "tenant1:", **TEN_STEPS})
    plain = make_app()
    for priority in (0, 5, 9):
        add(tenant).apply_async((1, 2), priority=priority, queue="work")
    add(plain).apply_async((1, 2), queue="work")

    prefixed = collect(exporter(redis_server.url, "--broker-transport-option",
                                "global_keyprefix=tenant1:", *TEN_STEPS_FLAG))
    unprefixed = collect(exporter(redis_server.url))

    assert celery_value(prefixed, m.QUEUE_DEPTH, "work") == 3
    assert celery_value(unprefixed, m.QUEUE_DEPTH, "work") == 1
    assert redis_client.exists("tenant1:_kombu.binding.work")


def test_future_eta_tasks_are_skipped_for_age(make_app, redis_server, stamped):
    app = make_app()
    # 40 ETA tasks at the oldest end: past the first walk window of 32.
    for _ in range(40):
        add(app).apply_async((1, 2), countdown=3600)
    before = time.time()
    add(app).apply_async((1, 2))
    after = time.time()
    for _ in range(3):
        add(app).apply_async((1, 2), queue="later", eta=datetime.now(UTC) + timedelta(seconds=600))
    clock = Clock(after + 30.0)

    samples = collect(exporter(redis_server.url, clock=clock))

    assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 41
    assert clock.now - after <= celery_value(samples, m.OLDEST_TASK_AGE, "celery") <= (
        clock.now - before)
    assert celery_value(samples, m.QUEUE_DEPTH, "later") == 3
    assert celery_value(samples, m.OLDEST_TASK_AGE, "later") == 0.0


def test_unstamped_task_age_counts_from_first_sight(make_app, redis_server):
    app = make_app()
    add(app).apply_async((1, 2))
    clock = Clock(2_000_000_000.0)
    collector = exporter(redis_server.url, clock=clock)

    assert celery_value(collect(collector), m.OLDEST_TASK_AGE, "celery") == 0.0
    clock.now += 42.0
    assert celery_value(collect(collector), m.OLDEST_TASK_AGE, "celery") == 42.0


def test_pickled_and_compressed_celery_tasks_still_give_age(make_app, redis_server, stamped):
    app = make_app()
    app.conf.accept_content = ["json", "pickle"]
    before = time.time()
    add(app).apply_async((1, 2), serializer="pickle", compression="zlib")
    clock = Clock(before + 10.0)

    samples = collect(exporter(redis_server.url, clock=clock))

    assert 9.0 <= celery_value(samples, m.OLDEST_TASK_AGE, "celery") <= 10.0
    assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery",
                 queue="celery") is None


def test_empty_queue_reports_zero(make_app, redis_server, redis_client):
    app = make_app()
    add(app).apply_async((1, 2))
    redis_client.delete("celery")  # what a worker's BRPOP of the last message leaves

    samples = collect(exporter(redis_server.url))

    assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 0
    assert celery_value(samples, m.OLDEST_TASK_AGE, "celery") == 0.0


def test_bad_messages_count_in_depth_and_never_break_a_scrape(make_app, redis_server,
                                                              redis_client, stamped):
    app = make_app()
    before = time.time()
    add(app).apply_async((1, 2))  # the one good, oldest-but-for-the-garbage message
    good = redis_client.lpop("celery")
    now = time.time()
    envelope = json.loads(good)
    no_headers = {k: v for k, v in envelope.items() if k != "headers"}
    garbage_stamp = {**envelope, "headers": {**envelope["headers"], "taskqueue_published_at": "x"}}
    future_stamp = {**envelope, "headers": {**envelope["headers"],
                                            "taskqueue_published_at": now + 86400}}
    huge = {**envelope, "body": "A" * (10 * 1024 * 1024)}
    bad = [
        b"this is not json",
        pickle.dumps(envelope),
        zlib.compress(good),
        json.dumps(no_headers).encode(),
        json.dumps(garbage_stamp).encode(),
        json.dumps(future_stamp).encode(),
        json.dumps(huge).encode(),
    ]
    # RPUSH puts them at the oldest end, ahead of the good message.
    redis_client.lpush("celery", good)
    redis_client.rpush("celery", *bad)
    clock = Clock(now + 5.0)
    collector = exporter(redis_server.url, clock=clock)

    first, second = collect(collector), collect(collector)

    for samples in (first, second):
        assert value(samples, m.SCRAPE_SUCCESS.name) == 1.0
        assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 8
        assert clock.now - now <= celery_value(samples, m.OLDEST_TASK_AGE, "celery") <= (
            clock.now - before)
        # Each broken message counts once, however many scrapes see it.
        assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery",
                     queue="celery") == len(bad)


def test_a_key_of_the_wrong_type_does_not_break_the_scrape(make_app, redis_server, redis_client):
    app = make_app()
    add(app).apply_async((1, 2), queue="good")
    add(app).apply_async((1, 2), queue="broken")
    redis_client.delete("broken")
    redis_client.set("broken", "a string where a list should be")

    samples = collect(exporter(redis_server.url))

    assert value(samples, m.SCRAPE_SUCCESS.name) == 1.0
    assert celery_value(samples, m.QUEUE_DEPTH, "good") == 1
    assert celery_value(samples, m.QUEUE_DEPTH, "broken") == 0


def test_a_broken_key_is_logged_once_until_it_is_fixed(make_app, redis_server, redis_client,
                                                      caplog: pytest.LogCaptureFixture):
    app = make_app()
    add(app).apply_async((1, 2), queue="broken")
    redis_client.delete("broken")
    redis_client.set("broken", "a string where a list should be")
    # A binding member in another separator than the configured one (a wrong
    # --broker-transport-option sep), and one that is not UTF-8.
    redis_client.sadd("_kombu.binding.odd", "odd:odd:odd", b"\xff\x06\x16\x06\x16odd")
    collector = exporter(redis_server.url)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert celery_value(collect(collector), m.QUEUE_DEPTH, "broken") == 0
        assert len(warnings()) == 3, warnings()
        assert len([w for w in warnings() if "'broken'" in w and "WRONGTYPE" in w]) == 1
        assert len([w for w in warnings() if "'_kombu.binding.odd'" in w]) == 2
        caplog.clear()
        redis_client.delete("broken")  # fixed: read fine again...
        assert celery_value(collect(collector), m.QUEUE_DEPTH, "broken") == 0
        redis_client.set("broken", "broken again")  # ...then broken anew: said again
        for _ in range(2):
            collect(collector)
        assert [w for w in warnings() if "'_kombu.binding.odd'" not in w] == [
            "cannot read 'broken': WRONGTYPE Operation against a key holding the wrong kind "
            "of value"]


def test_a_database_without_queues_is_said_once(make_app, redis_server, redis_client,
                                                caplog: pytest.LogCaptureFixture):
    # The app's queues are in database 1; the exporter is pointed at database 0.
    elsewhere = create_app(redis_server.url.replace("/0", "/1"))
    add(elsewhere).apply_async((1, 2))
    elsewhere.close()
    collector = exporter(redis_server.url, "--queue", "celery")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            samples = collect(collector)
            assert value(samples, m.SCRAPE_SUCCESS.name) == 1
            assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 0
        assert said() == [
            "no Celery or RQ queue in Redis database 0 (keys are in database 1): nothing to "
            "export until one appears (are the database number in --broker-url and the "
            "global_keyprefix the app's?)"]
        caplog.clear()
        app = make_app()
        add(app).apply_async((1, 2), queue="reports")
        assert celery_value(collect(collector), m.QUEUE_DEPTH, "reports") == 1
        delete_queue(app, "reports")
        for _ in range(2):  # appeared and vanished: said again, once
            collect(collector)
        assert len(said()) == 1 and said()[0].startswith("no Celery or RQ queue in Redis "
                                                         "database 0"), said()


def test_queues_appear_and_disappear_without_restart(make_app, redis_server):
    app = make_app()
    collector = exporter(redis_server.url, "--queue", "always")
    add(app).apply_async((1, 2))
    samples = collect(collector)
    assert set(series(samples, m.QUEUE_DEPTH.name)) == {
        frozenset({("system", "celery"), ("queue", "celery")}),
        frozenset({("system", "celery"), ("queue", "always")}),
    }

    add(app).apply_async((1, 2), queue="reports")
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "reports") == 1

    delete_queue(app, "reports")
    samples = collect(collector)
    assert celery_value(samples, m.QUEUE_DEPTH, "reports") is None
    assert celery_value(samples, m.QUEUE_DEPTH, "always") == 0  # listed: kept even when absent


def test_discovery_interval_delays_new_queues_but_not_gone_ones(make_app, redis_server):
    app = make_app()
    clock = Clock(1_000_000.0)
    config = parse_config(["--broker-url", redis_server.url, "--discovery-interval", "30"], {})
    collector = build_collector(config, redis.Redis.from_url(redis_server.url), clock)
    add(app).apply_async((1, 2), queue="a")
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "a") == 1

    add(app).apply_async((1, 2), queue="b")
    clock.now += 10
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "b") is None
    clock.now += 20
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "b") == 1

    delete_queue(app, "a")
    clock.now += 1
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "a") is None


def test_excluded_queues_are_not_exported(make_app, redis_server):
    app = make_app()
    add(app).apply_async((1, 2), queue="tmp.1")
    add(app).apply_async((1, 2), queue="keep")

    samples = collect(exporter(redis_server.url, "--exclude-queue", "tmp.*"))

    assert {dict(labels)["queue"] for labels in series(samples, m.QUEUE_DEPTH.name)} == {"keep"}


def test_unacked_and_scheduled_after_a_real_worker_prefetches(make_app, redis_server,
                                                              redis_client, tmp_path: Path):
    app = make_app()
    app.tasks["tests.wait_for_key"].apply_async(("release",))
    for i in range(9):
        add(app).apply_async((i, i))
    add(app).apply_async((1, 1), countdown=600)
    collector = exporter(redis_server.url)
    worker = celery_worker(redis_server.url, tmp_path / "worker.log")
    try:
        # One running (acks_late) and three prefetched: prefetch multiplier 4 x concurrency 1.
        samples = wait_for(
            lambda: (s := collect(collector))
            and celery_value(s, m.TASKS_UNACKED, "celery") == 4 and s,
            what="the worker to hold 4 tasks",
        )
        assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 7
        assert celery_value(samples, m.TASKS_SCHEDULED, "celery") == 0
        # The worker's remote-control queue is Celery plumbing, not a task queue.
        wait_for(lambda: redis_client.exists("_kombu.binding.celery.pidbox"), what="pidbox")
        queues = series(collect(collector), m.QUEUE_DEPTH.name)
        assert [dict(k)["queue"] for k in queues] == ["celery"]

        redis_client.set("release", 1)
        # What is left: the ETA task, held by the worker until it is due.
        wait_for(
            lambda: (s := collect(collector))
            and celery_value(s, m.QUEUE_DEPTH, "celery") == 0
            and celery_value(s, m.TASKS_UNACKED, "celery") == 1
            # kombu takes a message off the list before it adds it to the unacked
            # hash: an `add` in between would look like this too.
            and celery_value(s, m.TASKS_SCHEDULED, "celery") == 1,
            what="the worker to finish all but the ETA task, held as scheduled",
        )
    finally:
        redis_client.set("release", 1)
        worker.stop()


def test_unacked_on_a_topic_exchange_is_attributed_by_pattern(make_app, redis_server,
                                                             redis_client):
    app = make_app()
    media = Exchange("media", type="topic")
    queues = [Queue("video", media, routing_key="video.#"),
              Queue("audio", media, routing_key="audio.*")]
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            queue(channel).declare()
        producer = connection.Producer(channel)
        for key in ("video.compress", "video.compress.4k", "audio.mp3"):
            producer.publish({"n": 1}, exchange=media, routing_key=key, declare=[media])
        # Taken and not acknowledged: kombu writes [message, "media", key] to `unacked`
        # (and puts it back when the channel closes).
        held = [queues[0](channel).get(no_ack=False), queues[0](channel).get(no_ack=False)]
        assert all(held) and redis_client.hlen("unacked") == 2

        samples = collect(exporter(redis_server.url))

    assert celery_value(samples, m.TASKS_UNACKED, "video") == 2
    assert celery_value(samples, m.TASKS_UNACKED, "audio") == 0
    assert celery_value(samples, m.QUEUE_DEPTH, "audio") == 1


def test_broken_unacked_entries_still_count_where_they_can(make_app, redis_server,
                                                          redis_client):
    app = make_app()
    add(app).apply_async((1, 2))
    good = json.loads(redis_client.rpop("celery"))
    no_headers = {k: v for k, v in good.items() if k != "headers"}
    future_eta = {**good, "headers": {**good["headers"], "eta": "2999-01-01T00:00:00+00:00"}}
    bad_stamp = {**future_eta, "headers": {**future_eta["headers"], "taskqueue_published_at": "x"}}
    redis_client.hset("unacked", mapping={
        "tag-good": json.dumps([good, "", "celery"]),
        "tag-eta": json.dumps([future_eta, "", "celery"]),
        "tag-eta-bad-stamp": json.dumps([bad_stamp, "", "celery"]),
        "tag-no-headers": json.dumps([no_headers, "", "celery"]),
        "tag-garbage": b"\x00 not an unacked entry",
    })
    collector = exporter(redis_server.url)

    for samples in (collect(collector), collect(collector)):
        assert value(samples, m.SCRAPE_SUCCESS.name) == 1.0
        # The entry without headers still counts: its routing is at the end of the entry.
        assert celery_value(samples, m.TASKS_UNACKED, "celery") == 4
        # A bad publish stamp does not hide the ETA of a task a worker holds.
        assert celery_value(samples, m.TASKS_SCHEDULED, "celery") == 2
        assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery", queue="celery") == 1
        assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery",
                     queue="(unknown)") == 1


def test_oversized_messages_are_walked_past_in_small_steps(make_app, redis_server,
                                                          redis_client, stamped):
    app = make_app()
    add(app).apply_async((1, 2))
    envelope = json.loads(redis_client.lindex("celery", -1))
    big = [json.dumps({**envelope, "body": f"{i:04d}" + "A" * (2 << 20)}).encode()
           for i in range(20)]
    redis_client.rpush("celery", *big)  # at the oldest end, ahead of the good message
    sent_before = redis_client.info("stats")["total_net_output_bytes"]

    samples = collect(exporter(redis_server.url))

    sent = redis_client.info("stats")["total_net_output_bytes"] - sent_before
    assert value(samples, m.SCRAPE_SUCCESS.name) == 1.0
    assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 21
    # The tail, then two windows of 4: nine 2 MB messages read, not all twenty.
    assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery", queue="celery") == 9
    assert sent < 10 * (2 << 20)


def test_queues_come_back_after_redis_is_flushed(make_app, redis_server, redis_client):
    app = make_app()
    config = parse_config(["--broker-url", redis_server.url, "--discovery-interval", "3600"], {})
    collector = build_collector(config, redis.Redis.from_url(redis_server.url))
    add(app).apply_async((1, 2), queue="before")
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "before") == 1

    redis_client.flushall()
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "before") is None
    pools.reset()  # so that the producer declares its queue again
    add(make_app()).apply_async((1, 2), queue="after")
    assert celery_value(collect(collector), m.QUEUE_DEPTH, "after") == 1


@pytest.mark.parametrize("protocol", [1, 2])
def test_countdown_tasks_are_not_due_in_either_task_protocol(protocol, make_app, redis_server,
                                                             stamped, tmp_path: Path):
    # Protocol 1 (task_protocol = 1, still set by some apps) carries id, task, eta
    # and expires in the message body; protocol 2 in the headers.
    app = make_app()
    app.conf.task_protocol = protocol
    for _ in range(3):  # the oldest, held back by their countdown
        add(app).apply_async((1, 2), countdown=600, expires=1200)
    before = time.time()
    add(app).apply_async((1, 2))
    after = time.time()
    add(app).apply_async((1, 2), queue="later", countdown=600)
    clock = Clock(after + 100.0)
    collector = exporter(redis_server.url, clock=clock)

    samples = collect(collector)
    assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 4
    assert clock.now - after <= celery_value(samples, m.OLDEST_TASK_AGE, "celery") <= (
        clock.now - before)
    assert celery_value(samples, m.QUEUE_DEPTH, "later") == 1
    assert celery_value(samples, m.OLDEST_TASK_AGE, "later") == 0.0
    assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery", queue="celery") is None

    # A real worker runs the due task and holds the three others until their ETA.
    worker = celery_worker(redis_server.url, tmp_path / "worker.log")
    try:
        samples = wait_for(
            lambda: (s := collect(collector)) and celery_value(s, m.QUEUE_DEPTH, "celery") == 0
            and celery_value(s, m.TASKS_UNACKED, "celery") == 3 and s,
            what="the worker to hold the three countdown tasks")
    finally:
        worker.stop()
    assert celery_value(samples, m.TASKS_SCHEDULED, "celery") == 3
    assert celery_value(samples, m.OLDEST_TASK_AGE, "celery") == 0.0


def test_pickled_protocol_1_tasks_are_due_with_their_age_and_one_warning(
        make_app, redis_server, redis_client, stamped, caplog: pytest.LogCaptureFixture):
    # Their ETA is inside the pickle: taken as due, as before bodies were read,
    # rather than walked past (a full queue reading as idle) one warning each.
    app = make_app()
    app.conf.update(task_protocol=1, task_serializer="pickle", accept_content=["json", "pickle"])
    before = time.time()
    for _ in range(200):
        add(app).apply_async((1, 2))
    after = time.time()
    add(app).apply_async((1, 2), queue="later", countdown=600)
    clock = Clock(after + 600.0)
    collector = exporter(redis_server.url, clock=clock)

    with caplog.at_level(logging.WARNING):
        for samples in (collect(collector), collect(collector)):
            assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 200
            assert clock.now - after <= celery_value(samples, m.OLDEST_TASK_AGE, "celery") <= (
                clock.now - before)
            # The countdown cannot be read either: due too (the README says so).
            assert celery_value(samples, m.OLDEST_TASK_AGE, "later") > 0
            assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery",
                         queue="celery") is None
        # A consumer holds the countdown task, as a worker that accepts pickle would:
        # unacked, and not known to be scheduled.
        with app.connection_for_read() as connection:
            later = Queue("later", Exchange("later"), routing_key="later")
            with connection.Consumer(later, accept=["pickle"], callbacks=[lambda *_: None]):
                connection.drain_events(timeout=5)
                samples = collect(collector)
                assert celery_value(samples, m.TASKS_UNACKED, "later") == 1
                assert celery_value(samples, m.TASKS_SCHEDULED, "later") == 0
                assert celery_value(samples, m.QUEUE_DEPTH, "later") == 0
                assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery",
                             queue="later") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"celery queue {queue!r}: task protocol 1 body in 'application/x-python-serialize' hides "
        "its ETA: such tasks are taken as due (this is not logged again for this queue)"
        for queue in ("celery", "later")], warnings


def test_a_flood_of_broken_messages_is_counted_and_logged_once_per_reason(
        make_app, redis_server, redis_client, caplog: pytest.LogCaptureFixture):
    app = make_app()
    add(app).apply_async((1, 2))
    redis_client.rpush("celery", *[f"not json {i}".encode() for i in range(100)],
                       *[json.dumps({"headers": {}, "n": i}).encode() for i in range(50)])
    collector = exporter(redis_server.url)

    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            samples = collect(collector)
            assert value(samples, m.UNPARSEABLE_MESSAGES.name, system="celery",
                         queue="celery") == 150
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(warnings) == [
        f"celery queue 'celery': skipped a message for age: {reason} (more such messages are "
        "counted in taskqueue_exporter_unparseable_messages_total, not logged)"
        for reason in ("neither task headers nor a task protocol 1 body", "not JSON")], warnings


def test_a_binding_key_of_the_wrong_type_is_kept_and_logged_once(
        make_app, redis_server, redis_client, caplog: pytest.LogCaptureFixture):
    add(make_app()).apply_async((1, 2))
    redis_client.set("_kombu.binding.broken", "a string where a set should be")
    collector = exporter(redis_server.url, "--discovery-interval", "3600")
    redis_client.config_resetstat()

    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            samples = collect(collector)
            assert value(samples, m.SCRAPE_SUCCESS.name) == 1
            assert celery_value(samples, m.QUEUE_DEPTH, "celery") == 1
    # One discovery SCAN in the hour, not one per scrape.
    assert redis_client.info("commandstats")["cmdstat_scan"]["calls"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read '_kombu.binding.broken': WRONGTYPE Operation against a key holding the "
        "wrong kind of value"]
