import base64
import json
import pickle
import zlib

import pytest

from exporter.messages import (
    PUBLISHED_AT_HEADER,
    CeleryMessage,
    MessageError,
    fingerprint,
    parse_celery_message,
    parse_epoch,
    parse_iso_time,
    parse_unacked_entry,
    routing_of_unacked,
)

NOW = 1_800_000_000.0
MAX = 1 << 20


def envelope(headers: dict | None = None, **extra: object) -> dict:
    """A task protocol 2 message: the task's fields in the headers, with `task`."""
    message: dict = {
        "body": "W10=",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "properties": {"correlation_id": "corr-1", "delivery_info": {"routing_key": "q"}},
        **extra,
    }
    if isinstance(headers, dict):
        message["headers"] = {"task": "tests.add", **headers}
    elif headers is not None:
        message["headers"] = headers
    return message


def v1_envelope(body: object, headers: dict | None = None, **extra: object) -> dict:
    """A task protocol 1 message: the task's fields in the (base64 JSON) body."""
    encoded = base64.b64encode(body if isinstance(body, bytes) else json.dumps(body).encode())
    return {
        "body": encoded.decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers or {},
        "properties": {"correlation_id": "corr-1", "body_encoding": "base64",
                       "delivery_info": {"routing_key": "q"}},
        **extra,
    }


V1_BODY = {"task": "tests.add", "id": "t1", "args": [1, 2], "kwargs": {}, "retries": 0,
           "eta": "2027-01-15T08:00:00+00:00", "expires": "2027-01-15T09:00:00+00:00",
           "utc": True}


def raw(message: object) -> bytes:
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("headers", "task_id", "published_at", "eta"),
    [
        ({"id": "t1"}, "t1", None, None),
        ({"id": "t1", PUBLISHED_AT_HEADER: NOW - 5}, "t1", NOW - 5, None),
        ({"id": "t1", PUBLISHED_AT_HEADER: str(NOW - 5)}, "t1", NOW - 5, None),
        # Small clock skew between producer and exporter is tolerated.
        ({"id": "t1", PUBLISHED_AT_HEADER: NOW + 30}, "t1", NOW + 30, None),
        ({"id": "t1", "eta": "2027-01-15T08:00:00+00:00"}, "t1", None, NOW),
        ({"id": "t1", "eta": "2027-01-15T08:00:00"}, "t1", None, NOW),
        ({"id": "t1", "eta": "2027-01-15T09:00:00+01:00"}, "t1", None, NOW),
        # No id header: the id is the correlation id.
        ({"task": "x"}, "corr-1", None, None),
    ],
)
def test_parse_celery_message_reads_fields(headers, task_id, published_at, eta):
    message = parse_celery_message(raw(envelope(headers)), NOW, MAX)
    assert (message.task_id, message.published_at, message.eta) == (task_id, published_at, eta)


@pytest.mark.parametrize(
    ("message", "task_id", "published_at", "eta"),
    [
        (v1_envelope(V1_BODY), "t1", None, NOW),
        # The producer hook stamps the headers in protocol 1 too.
        (v1_envelope({**V1_BODY, "eta": None}, {PUBLISHED_AT_HEADER: NOW - 5}), "t1", NOW - 5,
         None),
        (v1_envelope({**V1_BODY, "id": None}), "corr-1", None, NOW),
        # kombu on RabbitMQ: the body as it is, not base64.
        ({**v1_envelope(V1_BODY), "body": json.dumps(V1_BODY),
          "properties": {"correlation_id": "corr-1"}}, "t1", None, NOW),
    ],
)
def test_parse_celery_message_reads_a_protocol_1_body(message, task_id, published_at, eta):
    parsed = parse_celery_message(raw(message), NOW, MAX)
    assert (parsed.task_id, parsed.published_at, parsed.eta) == (task_id, published_at, eta)
    unacked_entry = parse_unacked_entry(unacked(message, "", "q"), NOW, MAX)
    assert unacked_entry.eta == eta


PICKLED = {**v1_envelope(V1_BODY), "content-type": "application/x-python-serialize"}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (PICKLED, "task protocol 1 body in 'application/x-python-serialize'"),
        ({**v1_envelope(V1_BODY), "content-type": "application/x-msgpack"},
         "task protocol 1 body in 'application/x-msgpack'"),
        (v1_envelope(V1_BODY, {"compression": "application/x-gzip"}),
         "task protocol 1 body in 'application/json' compressed with 'application/x-gzip'"),
        (v1_envelope(b"not json"), "task protocol 1 body not readable"),
        ({**v1_envelope(V1_BODY), "body": "not base64!"}, "task protocol 1 body not readable"),
        ({**v1_envelope(V1_BODY), "content-type": "x" * 500},
         "task protocol 1 body in '" + "x" * 59),
    ],
)
def test_an_unreadable_protocol_1_body_leaves_the_task_due(message, reason):
    # Its ETA (here in the future) is inside: the task is known by its headers
    # and properties alone, and taken as due, with the reason why.
    parsed = parse_celery_message(raw(message), NOW, MAX)
    assert parsed == CeleryMessage("corr-1", None, None, eta_unreadable=reason)
    assert parsed.is_due(NOW)
    stamped = {**message, "headers": {**message["headers"], PUBLISHED_AT_HEADER: NOW - 5}}
    assert parse_celery_message(raw(stamped), NOW, MAX) == CeleryMessage(
        "corr-1", NOW - 5, None, eta_unreadable=reason)
    entry = parse_unacked_entry(unacked(message, "", "q"), NOW, MAX)
    assert (entry.eta, entry.eta_unreadable) == (None, reason)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (v1_envelope({"n": 1}), "neither task headers nor a task protocol 1 body"),
        (v1_envelope([1, 2]), "neither task headers nor a task protocol 1 body"),
        (v1_envelope({**V1_BODY, "eta": "soon"}), "time is not ISO 8601"),
        # Neither a stamp nor an id: nothing to date it by.
        ({**PICKLED, "properties": {}}, "no task id and no publish time"),
    ],
)
def test_protocol_1_bodies_that_are_not_tasks_raise_with_reason(message, reason):
    with pytest.raises(MessageError) as info:
        parse_celery_message(raw(message), NOW, MAX)
    assert str(info.value) == reason


def test_future_eta_is_not_due_and_past_eta_is():
    future = parse_celery_message(
        raw(envelope({"id": "a", "eta": "2030-01-01T00:00:00Z"})), NOW, MAX)
    past = parse_celery_message(raw(envelope({"id": "a", "eta": "2020-01-01T00:00:00Z"})), NOW, MAX)
    assert not future.is_due(NOW)
    assert past.is_due(NOW)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (pickle.dumps({"headers": {"id": "x"}}), "not JSON"),
        (zlib.compress(raw(envelope({"id": "x"}))), "not JSON"),
        (raw([1, 2, 3]), "not a kombu envelope"),
        (raw("a string"), "not a kombu envelope"),
        (raw(envelope(None)), "no headers"),
        (raw(envelope("headers-as-string")), "no headers"),  # type: ignore[arg-type]
        (raw({"headers": {"task": "x"}}), "no task id and no publish time"),
        (raw({"headers": {}}), "neither task headers nor a task protocol 1 body"),
        (raw(envelope({"id": "x", PUBLISHED_AT_HEADER: "yesterday"})), "timestamp is not a number"),
        (raw(envelope({"id": "x", PUBLISHED_AT_HEADER: True})), "timestamp is not a number"),
        (raw(envelope({"id": "x", PUBLISHED_AT_HEADER: [1]})), "timestamp is not a number"),
        (raw(envelope({"id": "x", PUBLISHED_AT_HEADER: 12})), "timestamp out of range"),
        (b'{"headers": {"id": "x", "taskqueue_published_at": NaN}}', "not JSON"),
        (b'{"headers": {"id": "x", "taskqueue_published_at": 1e400}}', "not JSON"),
        (raw(envelope({"id": "x", PUBLISHED_AT_HEADER: NOW + 86400})), "timestamp in the future"),
        (raw(envelope({"id": "x", "eta": "next tuesday"})), "time is not ISO 8601"),
        (raw(envelope({"id": "x", "eta": 5})), "time is not a string"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_bad_messages_raise_with_reason(payload, reason):
    with pytest.raises(MessageError) as info:
        parse_celery_message(payload, NOW, MAX)
    assert str(info.value) == reason


def test_message_over_the_size_limit_is_not_parsed():
    big = raw(envelope({"id": "x", PUBLISHED_AT_HEADER: NOW}, body="A" * 2000))
    assert parse_celery_message(big, NOW, len(big)).task_id == "x"
    with pytest.raises(MessageError, match="larger than 100 bytes"):
        parse_celery_message(big, NOW, 100)


def test_parse_epoch_bounds():
    assert parse_epoch(NOW + 60, NOW) == NOW + 60
    with pytest.raises(MessageError):
        parse_epoch(NOW + 60.5, NOW)
    with pytest.raises(MessageError):
        parse_epoch(float("inf"), NOW)


def test_parse_iso_time_accepts_rq_format_and_bytes():
    assert parse_iso_time(b"2027-01-15T08:00:00.500000Z") == NOW + 0.5


def unacked(message: object, exchange: str = "", routing_key: str = "q") -> bytes:
    return json.dumps([message, exchange, routing_key]).encode()


def test_parse_unacked_entry():
    entry = parse_unacked_entry(
        unacked(envelope({"id": "a", "eta": "2030-01-01T00:00:00+00:00"}), "ex", "rk"), NOW, MAX
    )
    assert (entry.exchange, entry.routing_key, entry.eta) == ("ex", "rk", 1_893_456_000.0)


@pytest.mark.parametrize(
    ("payload", "routing"),
    [
        (unacked(envelope(None), "ex", 'r"k'), ("ex", 'r"k')),
        (unacked(envelope({"id": "x", "eta": "soon"}), "", "emails"), ("", "emails")),
        (unacked({"body": "x" * 5000}, "", "big"), ("", "big")),
    ],
)
def test_unacked_entry_with_unreadable_message_keeps_its_routing(payload, routing):
    with pytest.raises(MessageError):
        parse_unacked_entry(payload, NOW, 4000)
    assert routing_of_unacked(payload) == routing


@pytest.mark.parametrize("payload", [b"garbage", b'["a", "b"]', b'{"x": 1}', b""])
def test_unacked_garbage_has_no_routing(payload):
    with pytest.raises(MessageError):
        parse_unacked_entry(payload, NOW, MAX)
    if payload != b'["a", "b"]':
        with pytest.raises(MessageError):
            routing_of_unacked(payload)


def test_fingerprint_tells_messages_apart_and_is_stable():
    a, b = b"x" * 100_000, b"x" * 100_001
    assert fingerprint(a) == fingerprint(b"x" * 100_000)
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(b"abc") != fingerprint(b"abd")
