"""Reads RQ queues and registries from Redis into snapshots.

Counts the registry sorted sets directly: RQ's own count methods run a cleanup
first that moves jobs between registries, and an exporter must only read.
Three round trips per scrape whatever the number of queues.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import redis

from exporter.messages import MessageError, fingerprint, parse_iso_time
from exporter.pipeline import KeyProblems, run_pipeline
from exporter.snapshot import BrokerSnapshot, QueueSnapshot, Unparseable

QUEUES_KEY = "rq:queues"
QUEUE_PREFIX = "rq:queue:"
# A head job whose hash is gone is skipped; look this many jobs deep for one that is not.
HEAD_JOBS = 4


class RQReader:
    system = "rq"

    def __init__(
        self,
        client: redis.Redis,
        *,
        queues: Sequence[str] = (),
        discover: bool = True,
        exclude: Sequence[str] = (),
    ) -> None:
        self._client = client
        self._explicit = tuple(dict.fromkeys(queues))
        self._discover = discover
        self._exclude = tuple(exclude)
        self._problems = KeyProblems()

    def read(self, now: float) -> BrokerSnapshot:
        try:
            snapshot = self._read(now)
        except BaseException:
            self._problems.settle(complete=False)
            raise
        self._problems.settle(complete=True)
        return snapshot

    def _read(self, now: float) -> BrokerSnapshot:
        known = self._known_queues()
        queues = sorted(set(self._explicit) | set(known))
        problems = self._problems

        def build(pipe: Any) -> None:
            for q in queues:
                pipe.llen(QUEUE_PREFIX + q)
                pipe.lrange(QUEUE_PREFIX + q, 0, HEAD_JOBS - 1)
                # RQ's cleanup removes entries scored in [0, now] (deadline or
                # expiry passed); -1 means "keep forever". Count the rest, read-only.
                for registry in ("wip", "failed"):
                    pipe.zcount(f"rq:{registry}:{q}", "-inf", "(0")
                    pipe.zcount(f"rq:{registry}:{q}", f"({now}", "+inf")
                pipe.zcard(f"rq:scheduled:{q}")
                # Declared to RQ: the queue exists, empty or not (--no-discovery
                # does not read the set's other members).
                pipe.sismember(QUEUES_KEY, QUEUE_PREFIX + q)

        results = run_pipeline(self._client, build)
        rows = [results[i * 8:(i + 1) * 8] for i in range(len(queues))]
        heads = [
            [job_id.decode("utf-8", "replace")
             for job_id in (problems.as_value(row[1], QUEUE_PREFIX + q) or [])]
            for q, row in zip(queues, rows, strict=True)
        ]
        enqueued = self._enqueued_at(heads)
        unparseable: list[Unparseable] = []
        snapshots: list[QueueSnapshot] = []
        for q, row, ids in zip(queues, rows, heads, strict=True):
            oldest = None
            for job_id in ids:
                raw = enqueued.get(job_id)
                try:
                    if raw is None:
                        raise MessageError("job hash has no enqueued_at")
                    oldest = parse_iso_time(raw)
                    break
                except MessageError as error:
                    unparseable.append(
                        Unparseable("rq", q, fingerprint(job_id.encode()), str(error))
                    )
            snapshots.append(
                QueueSnapshot(
                    system="rq",
                    queue=q,
                    depth=problems.as_int(row[0], QUEUE_PREFIX + q),
                    oldest_enqueued_at=oldest,
                    started=(problems.as_int(row[2], f"rq:wip:{q}")
                             + problems.as_int(row[3], f"rq:wip:{q}")),
                    failed=(problems.as_int(row[4], f"rq:failed:{q}")
                            + problems.as_int(row[5], f"rq:failed:{q}")),
                    scheduled=problems.as_int(row[6], f"rq:scheduled:{q}"),
                )
            )
        found = bool(known) or any(row[7] == 1 for row in rows) or any(
            q.depth or q.started or q.failed or q.scheduled for q in snapshots)
        return BrokerSnapshot(taken_at=now, queues=tuple(snapshots),
                              unparseable=tuple(unparseable), found=found)

    def _known_queues(self) -> list[str]:
        """The queues RQ lists in `rq:queues` (when discovering), exclusions left out."""
        if not self._discover:
            return []
        names = []
        for key in self._client.smembers(QUEUES_KEY):
            text = key.decode("utf-8", "replace")
            name = text[len(QUEUE_PREFIX):]
            if text.startswith(QUEUE_PREFIX) and not any(
                fnmatch.fnmatchcase(name, pattern) for pattern in self._exclude
            ):
                names.append(name)
        return names
    def _enqueued_at(self, heads: list[list[str]]) -> dict[str, bytes | None]:
        ids = [job_id for ids in heads for job_id in ids]
        results = run_pipeline(
            self._client, lambda p: [p.hget(f"rq:job:{job_id}", "enqueued_at") for job_id in ids]
        )
        return {job_id: self._problems.as_value(r, f"rq:job:{job_id}")
                for job_id, r in zip(ids, results, strict=True)}
