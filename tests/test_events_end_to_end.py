"""Celery events from real workers, over Redis and over the machine's RabbitMQ.

The real exporter process receives the events; real workers run real tasks
published by a real producer. Counts must match what the test published and
ran; a SIGKILLed worker must drop out within the heartbeat expiry.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter import metric_names as m
from tests import celery_app as celery_app_module
from tests import events_app
from tests.rabbitmq import MANAGEMENT_URL, Vhost, require_rabbitmq
from tests.scrape import Samples, value
from tests.services import Exporter, RedisServer, get, require, self_signed_certificate, wait_for
from tests.workers import BIN, WorkerProcess, _env, celery_worker

Q = events_app.QUEUE
# Worker heartbeats every second: gone 3 s after the last one.
HEARTBEAT = 1


@dataclass
class Broker:
    url: str
    exporter_flags: tuple[str, ...]


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    if request.param == "redis":
        server = RedisServer(tmp_path).start()
        try:
            yield Broker(server.url, ())
        finally:
            server.stop()
        return
    vhost = Vhost(require_rabbitmq()).create()
    try:
        yield Broker(vhost.broker_url(), ("--rabbitmq-management-url", MANAGEMENT_URL))
    finally:
        vhost.delete()


def start_worker(broker: Broker, tmp_path: Path, name: str,
                 transport_options: dict[str, Any] | None = None) -> WorkerProcess:
    args = [
        str(BIN / "celery"), "-A", "tests.events_app", "worker", "-E", "-P", "threads",
        "-c", "4", "-Q", Q, "-n", f"{name}@%h", "--heartbeat-interval", str(HEARTBEAT),
        "--without-gossip", "--without-mingle", "-l", "warning",
    ]
    env = _env(TQ_TEST_BROKER_URL=broker.url,
               TQ_TEST_TRANSPORT_OPTIONS=json.dumps(transport_options or {}))
    return WorkerProcess(args, env, tmp_path / f"{name}.log")


def subscribed(server: RedisServer) -> None:
    """Wait until the receiver's pub/sub subscription exists on the broker.

    kombu subscribes at the first poll after the consumer is ready (when the
    exporter reports connected); Redis drops what is published before that.
    """
    client = server.client()

    def count() -> int:
        return (int(client.execute_command("PUBSUB", "NUMPAT"))
                + len(client.execute_command("PUBSUB", "CHANNELS")))

    try:
        wait_for(lambda: count() >= 1, what="the event receiver's subscription")
    finally:
        client.close()


def tasks(s: Samples, task: str, state: str) -> float:
    return value(s, m.TASKS_TOTAL.name, queue=Q, task=task, state=state) or 0.0


def test_events_from_real_workers(broker: Broker, tmp_path: Path) -> None:
    exporter = Exporter(tmp_path, "--broker-url", broker.url, "--queue", Q,
                        "--inspect-interval", "1", "--per-worker-metrics",
                        *broker.exporter_flags)
    worker = start_worker(broker, tmp_path, "first")
    app = events_app.create_app(broker.url)
    try:
        # The worker shows up by heartbeat; its queue comes from active_queues.
        wait_for(lambda: value(exporter.scrape(), m.WORKERS.name, queue=Q) == 1, timeout=30,
                 what="the worker online for the queue")
        for _ in range(20):
            app.tasks["ev.sleep"].apply_async((0.05,))
        for _ in range(3):
            app.tasks["ev.fail"].apply_async()
        app.tasks["ev.retry_once"].apply_async()
        for _ in range(2):
            app.tasks["ev.sleep"].apply_async((0.0,), countdown=1)

        def finished() -> Samples | None:
            s = exporter.scrape()
            done = (tasks(s, "ev.sleep", "succeeded") == 22
                    and tasks(s, "ev.fail", "failed") == 3
                    and tasks(s, "ev.retry_once", "succeeded") == 1
                    # Another thread may run the re-published task before the
                    # first one reports task-retried.
                    and tasks(s, "ev.retry_once", "retried") == 1)
            return s if done else None

        s = wait_for(finished, timeout=30, interval=0.2, what="every task to finish")
        assert {state: tasks(s, "ev.sleep", state)
                for state in ("sent", "received", "started", "succeeded")} == {
            "sent": 22, "received": 22, "started": 22, "succeeded": 22}
        assert {state: tasks(s, "ev.fail", state)
                for state in ("sent", "received", "started", "failed", "succeeded")} == {
            "sent": 3, "received": 3, "started": 3, "failed": 3, "succeeded": 0}
        # The retry is re-published (a second task-sent) and runs twice.
        assert {state: tasks(s, "ev.retry_once", state)
                for state in ("sent", "received", "started", "retried", "succeeded")} == {
            "sent": 2, "received": 2, "started": 2, "retried": 1, "succeeded": 1}

        wait = "taskqueue_task_wait_seconds"
        assert value(s, f"{wait}_count", queue=Q, task="ev.sleep") == 22
        # Nothing waited long on an idle worker with 4 threads; the two ETA tasks
        # count from their ETA, not from their publish a second earlier.
        assert value(s, f"{wait}_bucket", queue=Q, task="ev.sleep", le="1.0") == 22
        assert value(s, f"{wait}_count", queue=Q, task="ev.retry_once") == 2
        runtime = "taskqueue_task_runtime_seconds"
        assert value(s, f"{runtime}_count", queue=Q, task="ev.sleep") == 22
        assert value(s, f"{runtime}_count", queue=Q, task="ev.fail") == 3
        # Twenty 50 ms sleeps: each above 0.05 s, far below 1 s; two sleeps of 0 s at or
        # below 0.05 s (not 0.025: a worker descheduled for 25 ms would miss it).
        assert value(s, f"{runtime}_bucket", queue=Q, task="ev.sleep", le="0.05") == 2
        assert value(s, f"{runtime}_bucket", queue=Q, task="ev.sleep", le="1.0") == 22
        assert value(s, f"{runtime}_sum", queue=Q, task="ev.sleep") >= 20 * 0.05
        assert value(s, m.TASKS_ACTIVE.name, queue=Q) == 0
        assert value(s, m.EVENTS_CONNECTED.name) == 1
        assert value(s, "taskqueue_exporter_events_total", type="task-started") == 27
        assert (value(s, "taskqueue_exporter_events_total", type="worker-heartbeat") or 0) >= 1
        assert value(s, m.LAST_EVENT.name, group="task") is not None
        if broker.exporter_flags:
            # The management API samples every 5 s; the worker's one consumer shows then.
            wait_for(lambda: value(exporter.scrape(), m.QUEUE_CONSUMERS.name, system="celery",
                                   queue=Q) == 1, timeout=15, what="the worker's consumer")
            queues = {dict(labels)["queue"] for (name, labels) in exporter.scrape()
                      if name == m.QUEUE_DEPTH.name}
            assert queues == {Q}, "Celery's and the exporter's own queues are left out"

        # Two long tasks run; then the worker dies without a word.
        for _ in range(2):
            app.tasks["ev.sleep"].apply_async((60.0,))
        wait_for(lambda: value(exporter.scrape(), m.TASKS_ACTIVE.name, queue=Q) == 2,
                 timeout=15, what="two active tasks")
        # The inspect poll (every second) sees the same two from the worker's side.
        s = wait_for(lambda: (lambda s: s if value(s, m.INSPECT_TASKS.name, queue=Q,
                                                   state="active") == 2 else None)(
            exporter.scrape()), timeout=15, what="inspect to report two active tasks")
        assert value(s, m.INSPECT_SUCCESS.name) == 1
        (host,) = [dict(labels)["worker"] for (name, labels) in s if name == m.WORKER_UP.name]
        assert host.startswith("first@")
        # The heartbeat's own count, once one has come since the tasks started.
        wait_for(lambda: value(exporter.scrape(), m.WORKER_TASKS_ACTIVE.name, worker=host) == 2,
                 timeout=10, what="a heartbeat counting two active tasks")
        lint = subprocess.run([require("promtool"), "check", "metrics"],
                              input=get(exporter.url("/metrics"))[1], capture_output=True,
                              text=True, timeout=30)
        assert lint.returncode == 0 and not lint.stdout + lint.stderr, lint.stdout + lint.stderr
        worker.kill()
        wait_for(lambda: (lambda s: value(s, m.WORKERS.name, queue=Q) == 0
                          and value(s, m.TASKS_ACTIVE.name, queue=Q) == 0)(exporter.scrape()),
                 timeout=3 * HEARTBEAT + 5, interval=0.2,
                 what="the killed worker and its tasks to drop out")
    finally:
        app.close()
        worker.stop()
        code = exporter.stop()
    log = exporter.output()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert ":guest@" not in log  # the broker password (the test user's is "guest")
    assert "sent no task event" not in log, log  # the worker has -E


def test_workers_without_task_events_show_by_heartbeat_only(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    exporter = Exporter(tmp_path, "--broker-url", server.url, "--queue", Q)
    # No -E: Celery still sends worker heartbeats, never task events.
    args = [str(BIN / "celery"), "-A", "tests.events_app", "worker", "-P", "threads", "-c", "1",
            "-Q", Q, "-n", "quiet@%h", "--heartbeat-interval", "1", "--without-gossip",
            "--without-mingle", "-l", "warning"]
    worker = WorkerProcess(args, _env(TQ_TEST_BROKER_URL=server.url), tmp_path / "quiet.log")
    app = events_app.create_app(server.url)
    try:
        wait_for(lambda: value(exporter.scrape(), m.WORKERS.name, queue=Q) == 1, timeout=30,
                 what="the worker online by heartbeat without -E")
        app.tasks["ev.sleep"].apply_async((0.0,))
        wait_for(lambda: tasks(exporter.scrape(), "ev.sleep", "sent") == 1,
                 what="the task-sent event")
        # The worker runs it, silently: no task event follows.
        client = server.client()
        wait_for(lambda: not client.llen(Q), what="the task taken")
        client.close()
        s = exporter.scrape()
        assert value(s, m.LAST_EVENT.name, group="worker") is not None
        # The producer's task-sent arrives; nothing from the worker's side.
        assert value(s, m.LAST_EVENT.name, group="sent") is not None
        assert value(s, m.LAST_EVENT.name, group="task") is None
        assert tasks(s, "ev.sleep", "sent") == 1
        assert tasks(s, "ev.sleep", "started") == 0
    finally:
        app.close()
        worker.stop()
        exporter.stop()
        server.stop()


def test_connecting_gives_known_workers_a_fresh_heartbeat_window(redis_server) -> None:
    from exporter.celery_events import EventStream, TrackerFeed, celery_app
    from exporter.event_tracker import EventTracker

    t0 = 1_700_000_000.0
    tracker = EventTracker()
    # A worker seen running a task before an outage of 30 s (heartbeat every 2 s).
    for event in ({"type": "worker-heartbeat", "hostname": "w@h", "freq": 2.0, "active": 1},
                  {"type": "task-sent", "uuid": "a", "queue": Q, "name": "n"},
                  {"type": "task-started", "uuid": "a", "hostname": "w@h"}):
        tracker.handle(event, t0)
    feed = TrackerFeed(tracker, threading.Lock(), clock=lambda: t0 + 30)
    stream = EventStream(celery_app(redis_server.url, {}, 5.0), feed, shown_url="redis",
                         on_connected=feed.resume)
    stream.start()
    try:
        wait_for(lambda: stream.connected, what="the receiver connected")
    finally:
        stream.stop()
    # Had the outage's silence counted, the worker and its task would be gone.
    assert tracker.snapshot(t0 + 30.5).active == {Q: 1}


def test_the_exporters_kombu_channels_never_emulate_acks(redis_server) -> None:
    import kombu.transport.redis
    from kombu.transport import virtual

    from exporter.celery_events import celery_app

    # Asked for (say, copied from the app's options), it is still off.
    app = celery_app(redis_server.url, {"ack_emulation": True, "sep": ":"}, 5.0)
    assert app.conf.broker_transport_options == {"ack_emulation": False, "sep": ":"}
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        assert channel.ack_emulation is False
        # The plain QoS restores nothing it did not deliver itself.
        assert channel.qos.restore_visible.__func__ is virtual.QoS.restore_visible
        assert not isinstance(channel.qos, kombu.transport.redis.QoS)
    app.close()


def test_the_receiver_reconnects_after_a_broker_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    exporter = Exporter(tmp_path, "--broker-url", server.url, "--queue", Q)
    app = events_app.create_app(server.url)

    def sent() -> float:
        return tasks(exporter.scrape(), "ev.sleep", "sent")

    try:
        wait_for(lambda: value(exporter.scrape(), m.EVENTS_CONNECTED.name) == 1,
                 what="the receiver connected")
        subscribed(server)
        app.tasks["ev.sleep"].apply_async((0.0,))
        wait_for(lambda: sent() == 1, what="the first task-sent")
        server.stop()
        wait_for(lambda: value(exporter.scrape(), m.EVENTS_CONNECTED.name) == 0,
                 what="the receiver to notice")
        server.start()
        # Back-off starts at 1 s and doubles: connected again within a few seconds.
        wait_for(lambda: value(exporter.scrape(), m.EVENTS_CONNECTED.name) == 1, timeout=20,
                 what="the receiver to reconnect")
        subscribed(server)
        app.close()
        app = events_app.create_app(server.url)
        app.tasks["ev.sleep"].apply_async((0.0,))
        wait_for(lambda: sent() == 2, what="a task-sent after the restart")
    finally:
        app.close()
        code = exporter.stop()
        server.stop()
    log = exporter.output()
    assert code == 0, log
    assert log.count("event receiver: cannot read events") == 1, log
    assert log.count("event receiver: receiving Celery events") == 2, log


def test_broken_event_messages_are_counted_and_keep_the_connection(tmp_path: Path) -> None:
    from celery.events.event import get_exchange
    from kombu import Connection, Producer

    server = RedisServer(tmp_path).start()
    exporter = Exporter(tmp_path, "--broker-url", server.url, "--queue", Q)
    good = {"type": "task-sent", "uuid": "u1", "name": "ev.sleep", "queue": Q,
            "timestamp": 1.0, "clock": 1, "utcoffset": 0, "hostname": "p", "pid": 1}
    try:
        wait_for(lambda: value(exporter.scrape(), m.EVENTS_CONNECTED.name) == 1,
                 what="the receiver connected")
        subscribed(server)
        with Connection(server.url) as connection:
            # Celery's event exchange, as its dispatcher declares it (fanout on Redis).
            exchange = get_exchange(connection)
            producer = Producer(connection)

            def publish(body: object, **options: object) -> None:
                # Declared, or kombu's Redis transport routes it as direct (to nobody).
                producer.publish(body, declare=[exchange], **options)

            publish({"no_type": 1, "argsrepr": "('card-4111',)"}, exchange=exchange,
                    routing_key="task.sent", serializer="json")
            # A batch with a broken event first: the good one behind it counts.
            publish([{"timestamp": "noon"}, good], exchange=exchange,
                    routing_key="task.multi", serializer="json")
            publish(b"\x80not json card-4111", exchange=exchange, routing_key="task.sent",
                    content_type="application/x-msgpack", content_encoding="binary")
        wait_for(lambda: value(exporter.scrape(), "taskqueue_exporter_events_total",
                               type="other") == 3, what="three broken events counted")
        s = exporter.scrape()
        assert tasks(s, "ev.sleep", "sent") == 1
        assert value(s, m.EVENTS_CONNECTED.name) == 1
    finally:
        code = exporter.stop()
        server.stop()
    log = exporter.output()
    assert code == 0, log
    assert log.count("event receiver: receiving Celery events") == 1, log
    assert log.count("ignored a malformed event") == 1, log
    assert "card-4111" not in log


PASSWORD = "s3cret-Pa55"


def test_the_password_as_a_query_parameter_reaches_events_and_inspect(tmp_path: Path) -> None:
    # redis-py's form of the URL; kombu alone cannot read it. The worker and the
    # producer use the other form, as the app's own config would.
    server = RedisServer(tmp_path, password=PASSWORD).start()
    url = f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}"
    exporter = Exporter(tmp_path, "--broker-url", url, "--queue", Q)
    worker = start_worker(Broker(server.url, ()), tmp_path, "query")
    app = events_app.create_app(server.url)
    try:
        # The worker's queue comes from an active_queues question (remote control).
        wait_for(lambda: value(exporter.scrape(), m.WORKERS.name, queue=Q) == 1, timeout=30,
                 what="the worker online for its queue")
        app.tasks["ev.sleep"].apply_async((0.0,))
        wait_for(lambda: tasks(exporter.scrape(), "ev.sleep", "succeeded") == 1,
                 what="the task's events")
        server.stop()
        wait_for(lambda: "event receiver: cannot read events" in exporter.output(),
                 what="the receiver to report the outage")
    finally:
        app.close()
        worker.stop()
        code = exporter.stop()
        server.stop()
    log = exporter.output()
    assert code == 0, log
    assert f"cannot read events from redis://127.0.0.1:{server.port}/0?password=***:" in log, log
    assert PASSWORD not in log


def test_events_over_tls_with_the_password_as_a_query_parameter(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = RedisServer(tmp_path, password=PASSWORD, tls_cert=cert, tls_key=key).start()
    # No ssl_cert_reqs: verified against the CA, as redis-py does by default.
    url = f"rediss://127.0.0.1:{server.port}/0?password={PASSWORD}&ssl_ca_certs={cert}"
    exporter = Exporter(tmp_path, "--broker-url", url, "--queue", Q)
    app = events_app.create_app(server.url)
    try:
        wait_for(lambda: value(exporter.scrape(), m.EVENTS_CONNECTED.name) == 1,
                 what="the receiver connected over TLS")
        subscribed(server)
        app.tasks["ev.sleep"].apply_async((0.0,))
        s = wait_for(lambda: (s := exporter.scrape()) and tasks(s, "ev.sleep", "sent") == 1
                     and s, what="the task-sent event over TLS")
        assert value(s, m.QUEUE_DEPTH.name, system="celery", queue=Q) == 1
    finally:
        app.close()
        code = exporter.stop()
        server.stop()
    log = exporter.output()
    assert code == 0, log
    assert PASSWORD not in log
    assert "insecure" not in log, log


@pytest.mark.parametrize(
    "options",
    [{"sep": ":"},
     {"global_keyprefix": "app1:", "sep": "|", "priority_steps": list(range(10)),
      "unacked_key": "held"},
     # Where events and broadcasts go (pub/sub channel names): with kombu's default
     # the exporter would hear no event and no worker would hear its questions.
     {"fanout_prefix": "/myapp.", "fanout_patterns": False}],
    ids=["sep", "global_keyprefix-sep-priority_steps-unacked_key", "fanout"],
)
def test_every_connection_honours_the_apps_transport_options(
    options: dict[str, Any], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path).start()
    flags = [f"--broker-transport-option={key}="
             + (",".join(map(str, value)) if isinstance(value, list)
                else str(value).lower() if isinstance(value, bool) else value)
             for key, value in options.items()]
    exporter = Exporter(tmp_path, "--broker-url", server.url, "--discovery-interval", "0",
                        *flags)
    worker = start_worker(Broker(server.url, ()), tmp_path, "opts", options)
    app = events_app.create_app(server.url, options)
    client = server.client()
    try:
        # The worker's queues come from its answer to the exporter's active_queues
        # question: it must read the reply binding the exporter wrote.
        wait_for(lambda: value(exporter.scrape(), m.WORKERS.name, queue=Q) == 1, timeout=30,
                 what="the worker online for its queue")
        app.tasks["ev.sleep"].apply_async((0.0,))
        app.tasks["ev.sleep"].apply_async((0.0,), queue="later", priority=9, countdown=600)
        s = wait_for(lambda: (s := exporter.scrape())
                     and tasks(s, "ev.sleep", "succeeded") == 1 and s, what="the task's events")
        assert value(s, m.QUEUE_DEPTH.name, system="celery", queue="later") == 1
        assert value(s, m.QUEUE_DEPTH.name, system="celery", queue=Q) == 0
        prefix = options.get("global_keyprefix", "")
        bindings = list(client.scan_iter(match=f"{prefix}_kombu.binding.*"))
        assert bindings
        for key in bindings:
            for member in client.smembers(key):
                assert len(member.decode().split(options.get("sep", "\x06\x16"))) == 3, (
                    key, member)
    finally:
        client.close()
        app.close()
        worker.stop()
        code = exporter.stop()
        server.stop()
    assert code == 0, exporter.output()
    worker_log = (tmp_path / "opts.log").read_text()
    assert "not enough values to unpack" not in worker_log, worker_log


def test_workers_without_task_events_are_named_from_the_event_stream(tmp_path: Path) -> None:
    # Nothing scrapes this exporter: the advice must come from the events alone.
    server = RedisServer(tmp_path).start()
    exporter = Exporter(tmp_path, "--broker-url", server.url, "--queue", Q)
    app = events_app.create_app(server.url)
    args = [str(BIN / "celery"), "-A", "tests.events_app", "worker", "-P", "threads", "-c", "1",
            "-Q", Q, "-n", "quiet@%h", "--heartbeat-interval", str(HEARTBEAT),
            "--without-gossip", "--without-mingle", "-l", "warning"]

    def advice() -> list[str]:
        return [line for line in exporter.output().splitlines() if "-E" in line]

    try:
        # The same worker twice: killed (no worker-offline), then back online, still without -E.
        for times in (1, 2):
            worker = WorkerProcess(args, _env(TQ_TEST_BROKER_URL=server.url),
                                   tmp_path / f"quiet-{times}.log")
            try:
                app.tasks["ev.sleep"].apply_async((0.0,))
                wait_for(lambda times=times: len(advice()) == times, timeout=30,
                         what=f"advice number {times}")
            finally:
                worker.kill() if times == 1 else worker.stop()
    finally:
        app.close()
        code = exporter.stop()
        server.stop()
    assert code == 0, exporter.output()
    assert all(line.split(": ", 1)[1].startswith("worker quiet@") for line in advice()), advice()
    assert all("ran 1 task but sent no task event: start the workers with -E (or set "
               "worker_send_task_events = True)" in line for line in advice()), advice()


def test_remote_control_never_restores_the_apps_unacked_tasks(tmp_path: Path) -> None:
    # The app gives its workers 12 h (long ETAs, as Celery's docs advise); kombu's
    # default is 1 h. The exporter's own connections must not apply theirs to the
    # app's unacked entries: the worker still holds the task, so a restore runs it twice.
    server = RedisServer(tmp_path).start()
    options = {"visibility_timeout": 43200}
    worker = celery_worker(server.url, tmp_path / "holder.log", options)
    app = celery_app_module.create_app(server.url, options)
    client = server.client()
    exporter = None
    try:
        app.tasks["tests.add"].apply_async((1, 2), countdown=86400)
        wait_for(lambda: client.hlen("unacked") == 1 and not client.llen("celery"), timeout=30,
                 what="the worker to hold the countdown task")
        (tag,) = client.zrange("unacked_index", 0, -1)
        # Held for two hours: past kombu's default, well inside the app's.
        client.zadd("unacked_index", {tag: time.time() - 7200})
        held = client.hgetall("unacked"), client.zrange("unacked_index", 0, -1, withscores=True)
        # This worker sends no events (no -E, no heartbeat): every PUBLISH is a broadcast
        # of the exporter's remote control, four per inspect poll. The first poll of a
        # channel that emulates acks sweeps the unacked index.
        published = client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
        exporter = Exporter(tmp_path, "--broker-url", server.url, "--inspect-interval", "1",
                            "--inspect-timeout", "0.5")

        def polls() -> float:
            calls = client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
            return (calls - published) / 4

        def polled() -> Samples | None:
            s = exporter.scrape()
            answered = value(s, m.INSPECT_TASKS.name, queue="celery", state="scheduled")
            return s if answered and polls() >= 2 else None

        s = wait_for(polled, timeout=30, interval=0.2, what="two inspect polls answered")
        # A restored entry goes back to the queue, and the worker takes it again at
        # once: its queue reads empty, but its index score is new and the worker
        # holds the task twice (and will run it twice).
        assert value(s, m.INSPECT_TASKS.name, queue="celery", state="scheduled") == 1
        assert (client.hgetall("unacked"),
                client.zrange("unacked_index", 0, -1, withscores=True)) == held
        assert client.llen("celery") == 0
        assert not client.exists("unacked_mutex")
        s = exporter.scrape()
        assert value(s, m.TASKS_UNACKED.name, system="celery", queue="celery") == 1
        assert value(s, m.TASKS_SCHEDULED.name, system="celery", queue="celery") == 1
    finally:
        client.close()
        app.close()
        worker.stop()
        code = exporter.stop() if exporter else 0
        server.stop()
    assert code == 0, exporter.output() if exporter else ""
