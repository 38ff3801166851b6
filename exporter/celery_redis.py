"""Reads Celery queues from a Redis broker into snapshots.

Round trips per scrape do not grow with the number of queues: the binding
sets, then every sub-list's length and tail, are each read in one pipeline;
only the rare walk past future-ETA or broken messages and the HSCAN batches
of the `unacked` hash (which grow with in-flight work) add more.
"""

from __future__ import annotations

import contextlib
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
from exporter.pipeline import KeyProblems, PackedBatch, run_pipeline
from exporter.snapshot import BrokerSnapshot, QueueSnapshot, Unparseable
from exporter.unparseable import Said

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
    """A sub-list whose tail is not due (or not readable): walked deeper."""

    queue: str
    key: str
    depth: int
    examined: int
    oversized: bool


@dataclass(frozen=True, slots=True)
class _Unacked:
    routing: tuple[str, str] | None  # exchange, routing key
    eta: float | None
    problem: str | None
    fingerprint: bytes
    eta_unreadable: str | None = None


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
        # Sub-list key -> (raw tail message, what it parsed to) from the last
        # scrape. An idle queue's tail does not change between scrapes, and
        # comparing bytes costs far less than parsing JSON again.
        self._tails_seen: dict[str, tuple[bytes, CeleryMessage]] = {}
        self._bindings_batch: PackedBatch | None = None
        self._bindings_batch_keys: tuple[str, ...] = ()
        self._problems = KeyProblems()
        self._said = Said()

    def read(self, now: float) -> BrokerSnapshot:
        try:
            snapshot = self._read(now)
        except BaseException:
            # A restarted or flushed Redis may come back with other queues.
            self._scanned_at = -math.inf
            self._problems.settle(complete=False)
            raise
        self._problems.settle(complete=True)
        return snapshot

    def _read(self, now: float) -> BrokerSnapshot:
        bindings = self._read_bindings(now)
        queues = self._queue_names(bindings)
        unparseable: list[Unparseable] = []
        depth, oldest = self._read_lists(queues, now, unparseable)
        routing = Routing(bindings)
        for binding in routing.broken:
            self._problems.warn(("pattern", binding), "binding of queue %r: pattern %r is not a "
                                "regular expression", binding.queue, binding.pattern)
        unacked, scheduled = self._read_unacked(routing, set(queues), now, unparseable)
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
        found = bool(bindings) or any(q.depth or q.unacked for q in snapshots)
        return BrokerSnapshot(taken_at=now, queues=snapshots, unparseable=tuple(unparseable),
                              found=found)

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
        sep = self._layout.sep
        for key, members in zip(keys, results, strict=True):
            if isinstance(members, Exception):
                # A key of another type: it holds no binding, but it is there, and
                # dropping it would make every scrape SCAN the keyspace to find it again.
                self._problems.as_value(members, key)
                alive.append(key)
                continue
            if not members:
                continue
            alive.append(key)
            exchange = self._layout.exchange_of_binding_key(key)
            for member in members:
                try:
                    text = member.decode("utf-8")
                except UnicodeDecodeError:
                    self._problems.warn(("utf-8", key),
                                        "binding %r: a member is not UTF-8, ignored", key)
                    continue
                binding = parse_binding_member(exchange, text, sep)
                if binding is None:
                    # kombu's members all split this way: one cause, a wrong sep (which
                    # hides every queue), however many bindings show it.
                    self._problems.warn(
                        "sep", "binding %r: a member does not split in three at sep %r, ignored "
                        "(is --broker-transport-option sep= the app's?)", key, sep)
                elif not binding.is_internal:
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
        depth = dict.fromkeys(queues, 0)
        due: list[tuple[str, CeleryMessage]] = []  # (queue, oldest due message of a sub-list)
        walks: list[_Sublist] = []  # sub-lists whose tail is not due or not readable
        previous, tails = self._tails_seen, {}
        max_bytes = self._max_bytes
        # The hot loop of a scrape (one pass per sub-list): kept flat, and fed
        # reply by reply so parsing overlaps with Redis answering.
        with contextlib.closing(self._batch.stream(self._client)) as replies:
            for queue, key in keyed:
                length = next(replies)
                tail = next(replies)
                if type(length) is not int:
                    length = self._problems.as_int(length, key)
                if not length:
                    continue
                depth[queue] += length
                if type(tail) is not bytes:
                    self._problems.as_value(tail, key)
                    continue
                seen = previous.get(key)
                if seen is not None and seen[0] == tail:
                    message: CeleryMessage | None = seen[1]
                else:
                    message = self._parse(queue, tail, now, unparseable)
                if message is not None:
                    tails[key] = (tail, message)
                    if message.is_due(now):
                        due.append((queue, message))
                        continue
                walks.append(_Sublist(queue, key, length, 1, len(tail) > max_bytes))
        self._tails_seen = tails
        due.extend(self._walk(walks, now, unparseable))
        return depth, self._oldest(due, now)

    def _parse(
        self, queue: str, raw: bytes, now: float, unparseable: list[Unparseable]
    ) -> CeleryMessage | None:
        try:
            message = parse_celery_message(raw, now, self._max_bytes)
        except MessageError as error:
            unparseable.append(Unparseable("celery", queue, fingerprint(raw), str(error)))
            return None
        if message.eta_unreadable is not None:
            self._eta_unreadable(queue, message.eta_unreadable)
        return message

    def _eta_unreadable(self, queue: str, reason: str) -> None:
        # Every message of a queue may be like this: said once per queue and reason.
        if self._said.first((queue, reason)):
            log.warning("celery queue %r: %s hides its ETA: such tasks are taken as due "
                        "(this is not logged again for this queue)", queue, reason)

    def _walk(
        self, walks: list[_Sublist], now: float, unparseable: list[Unparseable]
    ) -> list[tuple[str, CeleryMessage]]:
        """Read past the tail, window by window, for each sub-list's oldest due message."""
        found: list[tuple[str, CeleryMessage]] = []
        pending = [s for s in walks if s.examined < s.depth]
        for window in WALK_WINDOWS:
            if not pending:
                break
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
            still: list[_Sublist] = []
            for sub, chunk in zip(pending, chunks, strict=True):
                message = self._examine(sub, self._problems.as_value(chunk, sub.key) or [], now,
                                        unparseable)
                if message is not None:
                    found.append((sub.queue, message))
                elif sub.examined < sub.depth:
                    still.append(sub)
            pending = still
        return found

    def _examine(
        self, sub: _Sublist, chunk: list[bytes], now: float, unparseable: list[Unparseable]
    ) -> CeleryMessage | None:
        """The first due message of an LRANGE chunk, oldest first (LRANGE lists newest first)."""
        if not chunk:
            # The list shrank under us: nothing more to read.
            sub.examined = sub.depth
            return None
        for raw in reversed(chunk):
            sub.examined += 1
            if len(raw) > self._max_bytes:
                sub.oversized = True
            message = self._parse(sub.queue, raw, now, unparseable)
            if message is not None and message.is_due(now):
                return message
        return None

    def _oldest(self, due: list[tuple[str, CeleryMessage]], now: float) -> dict[str, float]:
        first_seen = self._first_seen.observe(
            [m.task_id for _, m in due if m.published_at is None and m.task_id is not None], now
        )
        oldest: dict[str, float] = {}
        for queue, message in due:
            if message.published_at is not None:
                enqueued = message.published_at
            elif message.task_id is not None:
                enqueued = first_seen[message.task_id]
            else:
                continue
            if enqueued < oldest.get(queue, math.inf):
                oldest[queue] = enqueued
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
            queue = (routing.queue_for(*entry.routing) if entry.routing else None) or UNKNOWN_QUEUE
            if entry.problem is not None:
                unparseable.append(Unparseable("celery", queue, entry.fingerprint, entry.problem))
            if queue not in queues:
                continue
            if entry.eta_unreadable is not None:
                self._eta_unreadable(queue, entry.eta_unreadable)
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
        return _Unacked((entry.exchange, entry.routing_key), entry.eta, None, b"",
                        entry.eta_unreadable)
