"""PackedBatch against real Redis: replies in order, errors per command, no stray replies."""

from __future__ import annotations

import contextlib

import pytest
import redis

from exporter.pipeline import PackedBatch


def test_replies_come_in_order_with_errors_in_place(redis_client):
    redis_client.rpush("list", "a", "b")
    redis_client.set("string", "x")
    batch = PackedBatch([("LLEN", "list"), ("LLEN", "string"), ("LINDEX", "list", -1)])

    first = batch.run(redis_client)
    second = batch.run(redis_client)  # the packed commands are reused

    for replies in (first, second):
        assert replies[0] == 2
        assert isinstance(replies[1], redis.ResponseError)
        assert replies[2] == b"b"


def test_a_stream_closed_early_leaves_no_replies_for_the_next_command(redis_client):
    redis_client.rpush("list", *[str(i) for i in range(100)])
    batch = PackedBatch([("LINDEX", "list", i) for i in range(100)])

    with contextlib.closing(batch.stream(redis_client)) as replies:
        assert next(replies) == b"0"

    # The connection with 99 unread replies was dropped, not handed out again.
    assert redis_client.get("missing") is None
    assert redis_client.lindex("list", 5) == b"5"
    assert batch.run(redis_client) == [str(i).encode() for i in range(100)]


def test_an_empty_batch_sends_nothing(redis_client):
    assert PackedBatch([]).run(redis_client) == []


def test_a_dead_server_raises_and_the_next_read_reconnects(own_redis):
    client = redis.Redis.from_url(own_redis.start().url)
    batch = PackedBatch([("PING",)])
    assert batch.run(client) == [b"PONG"]
    own_redis.stop()
    with pytest.raises(redis.ConnectionError):
        batch.run(client)
    own_redis.start()
    assert batch.run(client) == [b"PONG"]
