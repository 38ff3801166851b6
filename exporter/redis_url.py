"""A Redis broker URL, read once as redis-py reads it, for the kombu connections too.

The queue reads go through redis-py, which takes credentials and options in
the URL's query (`redis://host:6379/0?password=...&db=1`). kombu cannot: any
query parameter but `ssl_*` reaches its connection as an unknown argument
(`TypeError: dict() got multiple values for keyword argument 'password'`).
So the event receiver and remote control are given what redis-py read, as
kombu's separate settings, and a URL with neither credentials nor query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.connection import parse_url

# redis-py URL parameters that kombu's Redis transport takes as transport options.
_TRANSPORT_OPTIONS = frozenset({
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "retry_on_timeout",
    "max_connections", "health_check_interval", "client_name",
})
# Read into the settings themselves, or redis-py's own choice of class.
_HANDLED = frozenset({"host", "port", "db", "username", "password", "connection_class"})
# redis-py's default for rediss://; kombu's would be to verify nothing.
_DEFAULT_SSL = {"ssl_cert_reqs": "required"}


@dataclass(frozen=True)
class KombuRedisSettings:
    """What kombu needs to reach the broker redis-py reaches with the same URL."""

    url: str  # scheme, host, port and database only
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: Mapping[str, Any] | None = None
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    # URL parameters redis-py takes and kombu has no place for.
    ignored: tuple[str, ...] = ()


def kombu_redis_settings(url: str) -> KombuRedisSettings:
    """Split a redis:// or rediss:// URL as redis-py reads it; ValueError if it cannot."""
    options = parse_url(url)
    scheme = url.split("://", 1)[0].lower()
    host = options.get("host") or "localhost"
    if ":" in host:
        host = f"[{host}]"
    port = f":{options['port']}" if "port" in options else ""
    ssl: dict[str, Any] | None = None
    if scheme == "rediss":
        ssl = {k: v for k, v in options.items() if k.startswith("ssl_")} or dict(_DEFAULT_SSL)
    return KombuRedisSettings(
        url=f"{scheme}://{host}{port}/{options.get('db', 0)}",
        user=options.get("username"),
        password=options.get("password"),
        ssl=ssl,
        transport_options={k: v for k, v in options.items() if k in _TRANSPORT_OPTIONS},
        ignored=tuple(sorted(
            k for k in options
            if k not in _HANDLED and k not in _TRANSPORT_OPTIONS and not k.startswith("ssl_")
        )),
    )
