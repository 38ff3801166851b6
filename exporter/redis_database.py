"""Saying which Redis database the exporter reads, when it holds no queue at all."""

from __future__ import annotations

import redis


def empty_database_warning(client: redis.Redis) -> str:
    """The warning for a database without queues, naming it and the databases with keys.

    A wrong database number (or key prefix) otherwise shows only as a
    /metrics without queue series.
    """
    db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    try:
        keyspace = client.info("keyspace")
    except redis.RedisError:
        keyspace = {}
    others = sorted(
        int(name[2:]) for name, stats in keyspace.items()
        if name.startswith("db") and name[2:].isdigit() and int(name[2:]) != db
        and isinstance(stats, dict) and stats.get("keys")
    )
    where = f"Redis database {db}"
    if others:
        plural = "s" if len(others) > 1 else ""
        where += f" (keys are in database{plural} {', '.join(map(str, others))})"
    return (f"no Celery or RQ queue in {where}: nothing to export until one appears (are the "
            "database number in --broker-url and the global_keyprefix the app's?)")
