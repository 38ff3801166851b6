"""Reading the few fields the exporter needs out of raw broker messages.

Pure functions over bytes: no Redis, no clock (callers pass `now`). Every
failure raises MessageError with a short reason; callers count the message in
depth and move on, so a broken message never breaks a scrape.
"""

from __future__ import annotations

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

    def is_due(self, now: float) -> bool:
        return self.eta is None or self.eta <= now


@dataclass(frozen=True)
class UnackedEntry:
    exchange: str
    routing_key: str
    eta: float | None


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


def _celery_fields(envelope: Any, now: float) -> CeleryMessage:
    if not isinstance(envelope, dict):
        raise MessageError("not a kombu envelope")
    headers = envelope.get("headers")
    if not isinstance(headers, dict):
        raise MessageError("no headers")
    task_id = headers.get("id")
    if not isinstance(task_id, str):
        properties = envelope.get("properties")
        correlation = properties.get("correlation_id") if isinstance(properties, dict) else None
        task_id = correlation if isinstance(correlation, str) else None
    stamp = headers.get(PUBLISHED_AT_HEADER)
    published_at = None if stamp is None else parse_epoch(stamp, now)
    if published_at is None and task_id is None:
        raise MessageError("no task id and no publish time")
    eta_value = headers.get("eta")
    eta = None if eta_value is None else parse_iso_time(eta_value)
    return CeleryMessage(task_id=task_id, published_at=published_at, eta=eta)


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
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    if not isinstance(headers, dict):
        raise MessageError("no headers")
    eta = headers.get("eta")
    return UnackedEntry(exchange, routing_key, None if eta is None else parse_iso_time(eta))


def routing_of_unacked(raw: bytes) -> tuple[str, str]:
    """Exchange and routing key of an unacked entry without parsing its message."""
    return _routing_from_tail(raw)
