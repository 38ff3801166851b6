"""Redis round trips per scrape do not grow with the number of queues."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from exporter import metric_names as m
from exporter.cli import build_collector
from exporter.config import parse_config
from tests.scrape import collect, value
from tests.services import RedisServer

SEP = "\x06\x16"


class CountingConnection(redis.connection.Connection):
    """A round trip is one send: a pipeline sends all its commands at once."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def fill(client: redis.Redis, queues: int, unacked: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(queues):
        name = f"q{i}"
        pipe.sadd(f"_kombu.binding.{name}", f"{name}{SEP}{SEP}{name}")
        for priority in range(10):
            key = name if priority == 0 else f"{name}{SEP}{priority}"
            message = {"headers": {"id": str(uuid.uuid4()), "eta": None}, "properties": {}}
            pipe.lpush(key, json.dumps(message))
    for _ in range(unacked):
        message = {"headers": {"id": str(uuid.uuid4()), "eta": None}, "properties": {}}
        pipe.hset("unacked", str(uuid.uuid4()), json.dumps([message, "", "q0"]))
    pipe.execute()


def round_trips(server: RedisServer) -> tuple[int, float | None, float | None]:
    config = parse_config(
        ["--broker-url", server.url, "--discovery-interval", "3600",
         "--broker-transport-option", "priority_steps=0,1,2,3,4,5,6,7,8,9"], {})
    pool = redis.ConnectionPool(connection_class=CountingConnection, host="127.0.0.1",
                                port=server.port)
    collector = build_collector(config, redis.Redis(connection_pool=pool))
    collect(collector)  # the first scrape connects and runs the discovery SCAN
    CountingConnection.sends = 0
    samples = collect(collector)
    return (
        CountingConnection.sends,
        value(samples, m.QUEUE_DEPTH.name, system="celery", queue="q0"),
        value(samples, m.TASKS_UNACKED.name, system="celery", queue="q0"),
    )


def test_round_trips_do_not_grow_with_queue_count(redis_server, redis_client):
    fill(redis_client, queues=2, unacked=10)
    few = round_trips(redis_server)
    redis_client.flushall()
    fill(redis_client, queues=200, unacked=10)
    many = round_trips(redis_server)

    assert few[1:] == many[1:] == (10, 10)
    # SMEMBERS of the bindings, LLEN+LINDEX of every sub-list, HSCAN, SMEMBERS
    # rq:queues; the RQ pipelines have no queue to read. The discovery SCAN
    # (every --discovery-interval) grows with the keyspace, not per scrape.
    assert few[0] == many[0] == 4


def test_unacked_hash_is_read_in_hscan_batches(redis_server, redis_client):
    fill(redis_client, queues=1, unacked=2500)
    trips, _, unacked = round_trips(redis_server)
    assert unacked == 2500
    # HSCAN's COUNT is a hint: about three batches of 1000, plus the three other reads.
    assert 3 + 3 <= trips <= 3 + 5
