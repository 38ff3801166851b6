"""Plain data that broker readers return and the metric mapping consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

System = Literal["celery", "rq"]


class BrokerReadError(Exception):
    """The broker could not be read; str(error) is one line a user can act on.

    Readers raise it for what the operator must fix or wait out (broker down,
    vhost missing, wrong credentials); the collector reports the scrape as
    failed and logs the line.
    """


@dataclass(frozen=True)
class QueueSnapshot:
    """One queue as read in one scrape.

    A field that does not apply to the queue's system is None and is not
    exported (RQ has no unacked hash; Celery keeps no started registry).
    """

    system: System
    queue: str
    depth: int
    # Epoch seconds the oldest due task was enqueued; None when nothing due waits.
    oldest_enqueued_at: float | None = None
    unacked: int | None = None
    scheduled: int | None = None
    started: int | None = None
    failed: int | None = None
    consumers: int | None = None
    # False when tasks wait but the broker cannot tell their age (RabbitMQ
    # messages without a timestamp): the age is then not exported, not 0.
    age_known: bool = True


@dataclass(frozen=True)
class Unparseable:
    """A message that could not be read for age or scheduling.

    `fingerprint` identifies the message so that the same broken message seen
    on every scrape counts once.
    """

    system: System
    queue: str
    fingerprint: bytes
    reason: str


@dataclass(frozen=True)
class BrokerSnapshot:
    taken_at: float
    queues: tuple[QueueSnapshot, ...]
    unparseable: tuple[Unparseable, ...] = ()
    # Whether the broker holds any queue of the reader's system, listed or not
    # (a --queue that does not exist is exported all the same); None when the
    # reader cannot tell.
    found: bool | None = None
