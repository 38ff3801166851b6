"""Reads Celery queues from a Redis broker into snapshots.

Round trips per scrape do not grow with the number of queues: the binding
sets, then every sub-list's length and tail, are each read in one pipeline;
only the rare walk past future-ETA or broken messages and the HSCAN batches
of the `unacked` hash (which grow with in-flight work) add more.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from exporter.celery_layout import Binding, CeleryRedisLayout, Routing, parse_binding_member
from exporter.first_seen import FirstSeen
from exporter.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    CeleryMessage,
    MessageError,
    fingerprint,
    parse_celery_message,
    parse_unacked_entry,
    routing_of_unacked,
)
from exporter.pipeline import as_int, as_value, run_pipeline
from exporter.snapshot import BrokerSnapshot, QueueSnapshot, Unparseable

log = logging.getLogger(__name__)

SCAN_COUNT = 5000
DEFAULT_UNACKED_BATCH = 1000
# After the tail (LINDEX -1), look this many more messages deep per round for
# the oldest due task; past the last window the age is a lower bound.
WALK_WINDOWS = (32, 1024)
# Unacked entries whose routing cannot be read at all.
UNKNOWN_QUEUE = "(unknown)"


@dataclass
class _Sublist:
    queue: str
    key: str
    depth: int
    examined: int = 0
    due: CeleryMessage | None = None


class CeleryRedisReader:
    system = "celery"

    def __init__(
        self,
        client: redis.Redis,
        layout: CeleryRedisLayout,
        *,
        queues: Sequence[str] = (),
        discover: bool = True,
        discovery_interval: float = 30.0,
        exclude: Sequence[str] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        unacked_batch: int = DEFAULT_UNACKED_BATCH,
        first_seen: FirstSeen | None = None,
    ) -> None:
        self._client = client
        self._layout = layout
        self._explicit = tuple(dict.fromkeys(queues))
        self._discover = discover
        self._discovery_interval = discovery_interval
        self._exclude = tuple(exclude)
        self._max_bytes = max_message_bytes
        self._unacked_batch = unacked_batch
        self._first_seen = first_seen or FirstSeen()
        # The default for a queue declared by Celery is an exchange of the same name.
        self._explicit_binding_keys = tuple(layout.binding_key(q) for q in self._explicit)
        self._binding_keys: tuple[str, ...] = self._explicit_binding_keys
        self._scanned_at = -math.inf

    def read(self, now: float) -> BrokerSnapshot:
        bindings = self._read_bindings(now)
        queues = self._queue_names(bindings)
        unparseable: list[Unparseable] = []
        depth, oldest = self._read_lists(queues, now, unparseable)
        unacked, scheduled = self._read_unacked(Routing(bindings), set(queues), now, unparseable)
        snapshots = tuple(
            QueueSnapshot(
                system="celery",
                queue=q,
                depth=depth[q],
                oldest_enqueued_at=oldest.get(q),
                unacked=unacked.get(q, 0),
                scheduled=scheduled.get(q, 0),
            )
            for q in queues
        )
        return BrokerSnapshot(taken_at=now, queues=snapshots, unparseable=tuple(unparseable))

    def _read_bindings(self, now: float) -> list[Binding]:
        if self._discover and now - self._scanned_at >= self._discovery_interval:
            found = {
                key.decode("utf-8", "replace")
                for key in self._client.scan_iter(
                    match=self._layout.binding_scan_pattern, count=SCAN_COUNT
                )
            }
            self._binding_keys = tuple(sorted(found | set(self._explicit_binding_keys)))
            self._scanned_at = now
        keys = self._binding_keys
        results = run_pipeline(self._client, lambda p: [p.smembers(k) for k in keys])
        bindings: list[Binding] = []
        alive: list[str] = []
        for key, members in zip(keys, results, strict=True):
            members = as_value(members, key)
            if not members:
                continue
            alive.append(key)
            exchange = self._layout.exchange_of_binding_key(key)
            for member in members:
                try:
                    text = member.decode("utf-8")
                except UnicodeDecodeError:
                    log.warning("binding %r: member is not UTF-8, ignored", key)
                    continue
                binding = parse_binding_member(exchange, text, self._layout.sep)
                if binding is not None and not binding.is_internal:
                    bindings.append(binding)
        # A binding set that vanished means its queue was deleted: stop reading
        # it until a later discovery finds it again.
        self._binding_keys = tuple(dict.fromkeys(alive + list(self._explicit_binding_keys)))
        return bindings

    def _queue_names(self, bindings: list[Binding]) -> list[str]:
        discovered = {
            b.queue
            for b in bindings
            if not any(fnmatch.fnmatchcase(b.queue, pattern) for pattern in self._exclude)
        }
        return sorted(discovered | set(self._explicit))

    def _read_lists(
        self, queues: list[str], now: float, unparseable: list[Unparseable]
    ) -> tuple[dict[str, int], dict[str, float]]:
        keyed = [(q, key) for q in queues for key in self._layout.sublist_keys(q)]

        def build(pipe: Any) -> None:
            for _, key in keyed:
                pipe.llen(key)
                pipe.lindex(key, -1)

        results = run_pipeline(self._client, build)
        sublists: list[_Sublist] = []
        depth = dict.fromkeys(queues, 0)
        for i, (queue, key) in enumerate(keyed):
            length = as_int(results[2 * i], key)
            depth[queue] += length
            sub = _Sublist(queue=queue, key=key, depth=length)
            head = as_value(results[2 * i + 1], key)
            if length and head is not None:
                self._examine(sub, [head], now, unparseable)
            sublists.append(sub)
        self._walk(sublists, now, unparseable)
        return depth, self._oldest(sublists, now)

    def _examine(
        self, sub: _Sublist, raws: list[bytes], now: float, unparseable: list[Unparseable]
    ) -> None:
        """Look at messages from oldest to newest until one is due."""
        for raw in raws:
            sub.examined += 1
            try:
                message = parse_celery_message(raw, now, self._max_bytes)
            except MessageError as error:
                unparseable.append(
                    Unparseable("celery", sub.queue, fingerprint(raw), str(error))
                )
                continue
            if message.is_due(now):
                sub.due = message
                return

    def _walk(self, sublists: list[_Sublist], now: float, unparseable: list[Unparseable]) -> None:
        for window in WALK_WINDOWS:
            pending = [s for s in sublists if s.due is None and s.examined < s.depth]
            if not pending:
                return
            chunks = run_pipeline(
                self._client,
                lambda pipe, pending=pending, window=window: [
                    pipe.lrange(s.key, -(s.examined + window), -(s.examined + 1)) for s in pending
                ],
            )
            for sub, chunk in zip(pending, chunks, strict=True):
                chunk = as_value(chunk, sub.key) or []
                # LRANGE lists newest first; walk from the oldest end.
                self._examine(sub, list(reversed(chunk)), now, unparseable)
                if not chunk:
                    sub.examined = sub.depth

    def _oldest(self, sublists: list[_Sublist], now: float) -> dict[str, float]:
        unstamped = [
            s.due.task_id for s in sublists
            if s.due is not None and s.due.published_at is None and s.due.task_id is not None
        ]
        first_seen = self._first_seen.observe(unstamped, now)
        oldest: dict[str, float] = {}
        for s in sublists:
            if s.due is None:
                continue
            if s.due.published_at is not None:
                enqueued = s.due.published_at
            elif s.due.task_id is not None:
                enqueued = first_seen[s.due.task_id]
            else:
                continue
            oldest[s.queue] = min(oldest.get(s.queue, enqueued), enqueued)
        return oldest

    def _read_unacked(
        self, routing: Routing, queues: set[str], now: float, unparseable: list[Unparseable]
    ) -> tuple[dict[str, int], dict[str, int]]:
        # HSCAN may return a field twice while Redis rehashes: key by delivery tag.
        entries: dict[bytes, tuple[str, bool]] = {}
        for tag, raw in self._client.hscan_iter(
            self._layout.unacked_hash, count=self._unacked_batch
        ):
            entries[tag] = self._unacked_entry(raw, routing, now, unparseable)
        unacked: dict[str, int] = {}
        scheduled: dict[str, int] = {}
        for queue, is_scheduled in entries.values():
            if queue not in queues:
                continue
            unacked[queue] = unacked.get(queue, 0) + 1
            if is_scheduled:
                scheduled[queue] = scheduled.get(queue, 0) + 1
        return unacked, scheduled

    def _unacked_entry(
        self, raw: bytes, routing: Routing, now: float, unparseable: list[Unparseable]
    ) -> tuple[str, bool]:
        try:
            entry = parse_unacked_entry(raw, now, self._max_bytes)
        except MessageError as error:
            try:
                queue = routing.queue_for(*routing_of_unacked(raw))
            except MessageError:
                queue = UNKNOWN_QUEUE
            unparseable.append(Unparseable("celery", queue, fingerprint(raw), str(error)))
            return queue, False
        queue = routing.queue_for(entry.exchange, entry.routing_key)
        return queue, entry.eta is not None and entry.eta > now
