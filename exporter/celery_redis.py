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
from exporter.pipeline import PackedBatch, as_int, as_value, run_pipeline
from exporter.snapshot import BrokerSnapshot, QueueSnapshot, Unparseable

log = logging.getLogger(__name__)

SCAN_COUNT = 5000
DEFAULT_UNACKED_BATCH = 1000
# After the tail (LINDEX -1), look this many more messages deep per round for
# the oldest due task; past the last window the age is a lower bound.
WALK_WINDOWS = (32, 1024)
# Behind a message over --max-message-bytes, walk in small steps: its
# neighbours are likely as large, and each window is read whole.
OVERSIZED_WINDOW = 4
# Unacked entries whose routing cannot be read at all.
UNKNOWN_QUEUE = "(unknown)"


@dataclass(slots=True)
class _Sublist:
    queue: str
    key: str
    depth: int
    examined: int = 0
    due: CeleryMessage | None = None
    oversized: bool = False


@dataclass(frozen=True, slots=True)
class _Unacked:
    routing: tuple[str, str] | None  # exchange, routing key
    eta: float | None
    problem: str | None
    fingerprint: bytes


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
        self._batch: PackedBatch | None = None
        self._batch_keys: list[tuple[str, str]] = []
        self._unacked_seen: dict[bytes, _Unacked] = {}
        self._bindings_batch: PackedBatch | None = None
        self._bindings_batch_keys: tuple[str, ...] = ()

    def read(self, now: float) -> BrokerSnapshot:
        try:
            return self._read(now)
        except BaseException:
            # A restarted or flushed Redis may come back with other queues.
            self._scanned_at = -math.inf
            raise

    def _read(self, now: float) -> BrokerSnapshot:
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
        if self._bindings_batch is None or self._bindings_batch_keys != keys:
            self._bindings_batch_keys = keys
            self._bindings_batch = PackedBatch([("SMEMBERS", k) for k in keys])
        results = self._bindings_batch.run(self._client)
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
        # A binding set that vanished means its queue was deleted (or Redis was
        # flushed): stop reading it, and look for what exists now at the next scrape.
        if set(keys) - set(alive) - set(self._explicit_binding_keys):
            self._scanned_at = -math.inf
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
        if self._batch is None or self._batch_keys != keyed:
            self._batch_keys = keyed
            self._batch = PackedBatch(
                [cmd for _, key in keyed for cmd in (("LLEN", key), ("LINDEX", key, -1))]
            )
        results = self._batch.run(self._client)
        sublists: list[_Sublist] = []
        depth = dict.fromkeys(queues, 0)
        # The hot loop of a scrape (one pass per sub-list): kept flat.
        for (queue, key), length, head in zip(
            keyed, results[0::2], results[1::2], strict=True
        ):
            if type(length) is not int:
                length = as_int(length, key)
            if not length:
                continue
            depth[queue] += length
            sub = _Sublist(queue=queue, key=key, depth=length)
            if type(head) is bytes:
                self._examine(sub, (head,), now, unparseable)
            else:
                as_value(head, key)
            sublists.append(sub)
        self._walk(sublists, now, unparseable)
        return depth, self._oldest(sublists, now)

    def _examine(
        self, sub: _Sublist, raws: Sequence[bytes], now: float, unparseable: list[Unparseable]
    ) -> None:
        """Look at messages from oldest to newest until one is due."""
        for raw in raws:
            sub.examined += 1
            if len(raw) > self._max_bytes:
                sub.oversized = True
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
                    pipe.lrange(
                        s.key,
                        -(s.examined + (OVERSIZED_WINDOW if s.oversized else window)),
                        -(s.examined + 1),
                    )
                    for s in pending
                ],
            )
            for sub, chunk in zip(pending, chunks, strict=True):
                chunk = as_value(chunk, sub.key) or []
                # LRANGE lists newest first; walk from the oldest end.
                self._examine(sub, chunk[::-1], now, unparseable)
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
        # A tag's value never changes (kombu writes it once per delivery), so
        # what was parsed in the last scrape is reused.
        previous, current = self._unacked_seen, {}
        for tag, raw in self._client.hscan_iter(
            self._layout.unacked_hash, count=self._unacked_batch
        ):
            current[tag] = previous.get(tag) or self._parse_unacked(raw, now)
        self._unacked_seen = current
        unacked: dict[str, int] = {}
        scheduled: dict[str, int] = {}
        for entry in current.values():
            queue = routing.queue_for(*entry.routing) if entry.routing else UNKNOWN_QUEUE
            if entry.problem is not None:
                unparseable.append(Unparseable("celery", queue, entry.fingerprint, entry.problem))
            if queue not in queues:
                continue
            unacked[queue] = unacked.get(queue, 0) + 1
            if entry.eta is not None and entry.eta > now:
                scheduled[queue] = scheduled.get(queue, 0) + 1
        return unacked, scheduled

    def _parse_unacked(self, raw: bytes, now: float) -> _Unacked:
        try:
            entry = parse_unacked_entry(raw, now, self._max_bytes)
        except MessageError as error:
            try:
                routing: tuple[str, str] | None = routing_of_unacked(raw)
            except MessageError:
                routing = None
            return _Unacked(routing, None, str(error), fingerprint(raw))
        return _Unacked((entry.exchange, entry.routing_key), entry.eta, None, b"")
