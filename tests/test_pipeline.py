"""Batched reads against real Redis, and warnings about broken keys.

PackedBatch: replies in order, errors per command, no stray replies.
KeyProblems: one warning per broken key, not one per scrape.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import redis

from exporter.pipeline import KeyProblems, PackedBatch


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


def test_key_problems_warn_once_per_cause(caplog: pytest.LogCaptureFixture) -> None:
    problems = KeyProblems()
    error = redis.ResponseError("WRONGTYPE")
    with caplog.at_level(logging.WARNING):
        assert problems.as_int(error, "a") == 0
        assert problems.as_value(error, "a") is None
        problems.settle(complete=True)
        problems.as_int(error, "a")
        problems.settle(complete=False)  # cut short before "a" was read
        problems.settle(complete=False)
        problems.as_int(error, "a")
        problems.settle(complete=True)
        problems.settle(complete=True)  # a complete scrape without it: the cause is over
        problems.as_int(error, "a")
    assert [r.getMessage() for r in caplog.records] == ["cannot read 'a': WRONGTYPE"] * 2
    assert problems.as_int(b"7", "b") == 7
