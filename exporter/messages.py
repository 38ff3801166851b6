"""Reading the few fields the exporter needs out of raw broker messages.

Pure functions over bytes: no Redis, no clock (callers pass `now`). Every
failure raises MessageError with a short reason; callers count the message in
depth and move on, so a broken message never breaks a scrape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# The header instrument_celery() stamps at publish time: epoch seconds (float).
PUBLISHED_AT_HEADER = "taskqueue_published_at"

# A stamp further ahead of the exporter's clock than this is treated as garbage
# rather than clock skew: it would otherwise hide the queue's real age.
MAX_CLOCK_SKEW = 60.0
# 2000-01-01: anything earlier is not a real publish time.
MIN_TIMESTAMP = 946_684_800.0

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
_FINGERPRINT_PREFIX_BYTES = 1 << 16


class MessageError(ValueError):
    """A message the exporter cannot use; str(error) is the reason."""


@dataclass(frozen=True)
class CeleryMessage:
    task_id: str | None
    published_at: float | None
    eta: float | None
    # Why the ETA could not be read (a task protocol 1 body in pickle, say):
    # such a message is taken as due, as it was before bodies were read.
    eta_unreadable: str | None = None

    def is_due(self, now: float) -> bool:
        return self.eta is None or self.eta <= now


@dataclass(frozen=True)
class UnackedEntry:
    exchange: str
    routing_key: str
    eta: float | None
    eta_unreadable: str | None = None


def fingerprint(raw: bytes) -> bytes:
    """Identity of a message for counting it once; bounded cost for huge messages."""
    digest = hashlib.blake2b(raw[:_FINGERPRINT_PREFIX_BYTES], digest_size=16)
    digest.update(len(raw).to_bytes(8, "big"))
    return digest.digest()


def _load_json(raw: bytes, max_bytes: int) -> Any:
    if len(raw) > max_bytes:
        raise MessageError(f"larger than {max_bytes} bytes")
    try:
        # orjson: three times json's speed, and every scrape parses the head of
        # every sub-list and every unacked entry.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MessageError("not JSON") from None


def parse_epoch(value: object, now: float) -> float:
    """A publish timestamp in epoch seconds, checked for plausibility."""
    kind = type(value)
    if kind is float or kind is int:  # exact types: bool is an int, and rejected below
        stamp = float(value)  # type: ignore[arg-type]
    elif kind is str:
        try:
            stamp = float(value)  # type: ignore[arg-type]
        except ValueError:
            raise MessageError("timestamp is not a number") from None
    else:
        raise MessageError("timestamp is not a number")
    if not math.isfinite(stamp) or stamp < MIN_TIMESTAMP:
        raise MessageError("timestamp out of range")
    if stamp > now + MAX_CLOCK_SKEW:
        raise MessageError("timestamp in the future")
    return stamp


def parse_iso_time(value: object) -> float:
    """ISO 8601 to epoch seconds; a naive time is UTC (Celery and RQ write UTC)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        raise MessageError("time is not a string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MessageError("time is not ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _headers(envelope: Any) -> dict[str, Any]:
    if not isinstance(envelope, dict):
        raise MessageError("not a kombu envelope")
    headers = envelope.get("headers")
    if not isinstance(headers, dict):
        raise MessageError("no headers")
    return headers


def _task_fields(
    envelope: dict[str, Any], headers: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """Where the task's id and eta are: the headers, or a protocol 1 body.

    Celery's task protocol 2 puts them in the headers, with `task`; protocol 1
    (`task_protocol = 1`) leaves the headers empty (but for the producer hook's
    stamp) and puts `task`, `id`, `eta`... in the body. Celery's worker tells
    them apart the same way: by `task` in the headers. A protocol 1 body that
    cannot be read (pickle, msgpack, YAML, compressed) gives no fields, and the
    reason why as the second value: the task is then known by its headers and
    properties alone (publish stamp, correlation id), with no ETA.
    """
    if "task" in headers:
        return headers, None
    body = envelope.get("body")
    if not isinstance(body, str):
        raise MessageError("neither task headers nor a task protocol 1 body")
    try:
        fields = _protocol1_body(envelope, body, headers)
    except _Unreadable as unreadable:
        return {}, str(unreadable)
    if not isinstance(fields, dict) or not isinstance(fields.get("task"), str):
        raise MessageError("neither task headers nor a task protocol 1 body")
    return fields, None


class _Unreadable(Exception):
    """A protocol 1 body the exporter cannot decode; str() says why."""


# A content type is the sender's text: kept short in what is logged.
_MAX_SHOWN_TYPE = 60


def _protocol1_body(envelope: dict[str, Any], body: str, headers: dict[str, Any]) -> Any:
    content_type = envelope.get("content-type")
    if content_type != "application/json" or "compression" in headers:
        shown = repr(content_type)[:_MAX_SHOWN_TYPE]
        compressed = headers.get("compression")
        raise _Unreadable(f"task protocol 1 body in {shown}"
                          + (f" compressed with {repr(compressed)[:_MAX_SHOWN_TYPE]}"
                             if compressed else ""))
    properties = envelope.get("properties")
    encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
    if encoding not in ("base64", None):
        raise _Unreadable("task protocol 1 body not readable")
    try:
        raw = base64.b64decode(body, validate=True) if encoding == "base64" else body
        return orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError):
        raise _Unreadable("task protocol 1 body not readable") from None


def _celery_fields(envelope: Any, now: float) -> CeleryMessage:
    headers = _headers(envelope)
    fields, eta_unreadable = _task_fields(envelope, headers)
    task_id = fields.get("id")
    if not isinstance(task_id, str):
        properties = envelope.get("properties")
        correlation = properties.get("correlation_id") if isinstance(properties, dict) else None
        task_id = correlation if isinstance(correlation, str) else None
    # The producer hook stamps the headers in both protocols.
    stamp = headers.get(PUBLISHED_AT_HEADER)
    published_at = None if stamp is None else parse_epoch(stamp, now)
    if published_at is None and task_id is None:
        raise MessageError("no task id and no publish time")
    eta_value = fields.get("eta")
    eta = None if eta_value is None else parse_iso_time(eta_value)
    return CeleryMessage(task_id=task_id, published_at=published_at, eta=eta,
                         eta_unreadable=eta_unreadable)


def parse_celery_message(raw: bytes, now: float, max_bytes: int) -> CeleryMessage:
    """The task id, publish stamp and ETA of a kombu JSON envelope."""
    return _celery_fields(_load_json(raw, max_bytes), now)


# The two strings that close kombu's `[message, exchange, routing_key]` array.
_TAIL = re.compile(rb',\s*("(?:[^"\\]|\\.)*")\s*,\s*("(?:[^"\\]|\\.)*")\s*\]\s*$')
_TAIL_WINDOW = 4096


def _routing_from_tail(raw: bytes) -> tuple[str, str]:
    match = _TAIL.search(raw[-_TAIL_WINDOW:])
    if match is None:
        raise MessageError("not an unacked entry")
    try:
        return json.loads(match.group(1)), json.loads(match.group(2))
    except (ValueError, UnicodeDecodeError):
        raise MessageError("not an unacked entry") from None


def parse_unacked_entry(raw: bytes, now: float, max_bytes: int) -> UnackedEntry:
    """Exchange, routing key and ETA of one value of kombu's `unacked` hash.

    Raises MessageError when the message inside cannot be read; the routing
    part is still available from `routing_of_unacked` so the entry counts.
    """
    entry = _load_json(raw, max_bytes)
    if not (isinstance(entry, list) and len(entry) == 3):
        raise MessageError("not an unacked entry")
    envelope, exchange, routing_key = entry
    if not (isinstance(exchange, str) and isinstance(routing_key, str)):
        raise MessageError("not an unacked entry")
    # Only the ETA matters here: a bad publish stamp must not hide it.
    fields, eta_unreadable = _task_fields(envelope, _headers(envelope))
    eta = fields.get("eta")
    return UnackedEntry(exchange, routing_key, None if eta is None else parse_iso_time(eta),
                        eta_unreadable)


def routing_of_unacked(raw: bytes) -> tuple[str, str]:
    """Exchange and routing key of an unacked entry without parsing its message."""
    return _routing_from_tail(raw)
