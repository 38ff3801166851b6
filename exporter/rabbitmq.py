"""Reads Celery queues from a RabbitMQ broker into snapshots.

Two sources, chosen by the operator:
- the management HTTP API: one GET per scrape lists every queue of the vhost
  with its ready and unacknowledged counts, consumers and the timestamp of its
  head message, so queues are discovered and their age is known when
  producers set the AMQP `timestamp` property;
- passive `queue.declare` over AMQP, for brokers without the management
  plugin: ready count and consumers of each queue named on the command line,
  nothing more (no discovery, no unacked count, no age).

The management API's figures are sampled by RabbitMQ every
`collect_statistics_interval` (5 s by default), so they lag the queue by that
much; passive declares are exact at the time of the scrape.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import amqp
import orjson
import requests
from amqp import exceptions as amqp_errors

from exporter.celery_events import EVENT_QUEUE_PREFIX
from exporter.redaction import MASK, redact_url
from exporter.snapshot import BrokerReadError, BrokerSnapshot, QueueSnapshot

log = logging.getLogger(__name__)

BROKER_SCHEMES = ("amqp", "amqps", "pyamqp")
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
DEFAULT_USER = "guest"
DEFAULT_PASSWORD = "guest"
MANAGEMENT_COLUMNS = (
    "name,messages_ready,messages_unacknowledged,consumers,head_message_timestamp"
)
# Plumbing, not work, never scaled on: Celery's event queues and worker
# mailboxes (`<node>.celery.pidbox`, which also covers the
# `<uuid>.reply.celery.pidbox` reply queues), this exporter's event queue, and
# server-named (exclusive, reply) queues.
INTERNAL_PREFIXES = ("celeryev.", f"{EVENT_QUEUE_PREFIX}.", "amq.gen-")
INTERNAL_SUFFIXES = (".celery.pidbox", ".reply.celery.pidbox")
# AMQP sends a queue name as a short string.
MAX_QUEUE_NAME_BYTES = 255


@dataclass(frozen=True)
class AmqpTarget:
    """Where the broker is, from a Celery `broker_url`."""

    url: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    vhost: str
    tls: bool

    @property
    def display(self) -> str:
        """The URL as the operator wrote it, password masked."""
        return redact_url(self.url)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ManagementEndpoint:
    """The management API's base URL (no credentials) and the credentials it carried."""

    base_url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)


def _shown(url: str) -> str:
    """The URL for a message about the URL itself, password masked even when malformed."""
    if "://" in url:
        return redact_url(url)
    # Without a scheme, urlsplit reads "user:password@host" as scheme "user".
    return f"{MASK}@{url.rsplit('@', 1)[1]}" if "@" in url else url


def vhost_of_path(path: str) -> str:
    """The vhost a broker URL's path names, by kombu's rules.

    `amqp://host` and `amqp://host/` mean the default vhost `/`, as does
    `amqp://host//` (the path minus its leading slash); `/%2f` is `/` too.
    """
    name = unquote(path[1:] if path.startswith("/") else path)
    return name or "/"


def parse_broker_url(url: str) -> AmqpTarget:
    """Raises ValueError with a message for the command line."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"invalid broker URL {_shown(url)}: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in BROKER_SCHEMES:
        raise ValueError(
            f"invalid broker URL {_shown(url)}: RabbitMQ needs amqp://, amqps:// or pyamqp://"
        )
    tls = scheme == "amqps"
    return AmqpTarget(
        url=url,
        host=unquote(parts.hostname or "") or "localhost",
        port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        user=unquote(parts.username or "") or DEFAULT_USER,
        password=unquote(parts.password or "") or DEFAULT_PASSWORD,
        vhost=vhost_of_path(parts.path),
        tls=tls,
    )


def parse_management_url(url: str) -> ManagementEndpoint:
    """Splits credentials off, so they go in the Authorization header and never in a message."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"invalid management URL {_shown(url)}: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"invalid management URL {_shown(url)}: expected http://host:15672 "
            "or https://host:port"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port is not None else host
    # A path is kept: the API may sit behind a proxy under a prefix.
    base = f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return ManagementEndpoint(base, user, password)


def is_internal_queue(name: str) -> bool:
    return name.startswith(INTERNAL_PREFIXES) or name.endswith(INTERNAL_SUFFIXES)


def _count(row: dict[str, object], key: str, queue: str) -> int:
    value = row.get(key)
    # RabbitMQ leaves the figures out (or null) until it has sampled a new
    # queue once: nothing is known to wait yet.
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ValueError(f"queue {queue!r}: {key} is {value!r}, not a count")
    return value


def _timestamp(value: object) -> float | None:
    # Null when the head message has no timestamp; some RabbitMQ versions send "".
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def snapshots_from_management(
    rows: object, *, explicit: Sequence[str], discover: bool, exclude: Sequence[str]
) -> tuple[QueueSnapshot, ...]:
    """Maps the answer of GET /api/queues/<vhost> to snapshots, sorted by queue.

    Raises ValueError when the answer is not the list of queue objects the API sends.

    The age comes from `head_message_timestamp`, which RabbitMQ takes as the
    oldest `timestamp` property among the next ready message and the oldest
    delivered, unacknowledged one: while a worker holds an old message, the
    age reported is that message's (an upper bound for the waiting ones).
    """
    if not isinstance(rows, list):
        raise ValueError(f"expected a list of queues, got {type(rows).__name__}")
    wanted = set(explicit)
    found: dict[str, QueueSnapshot] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ValueError(f"expected queue objects with a name, got {str(row)[:80]!r}")
        name: str = row["name"]
        if name not in wanted and (
            not discover
            or is_internal_queue(name)
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
        ):
            continue
        depth = _count(row, "messages_ready", name)
        head = _timestamp(row.get("head_message_timestamp"))
        found[name] = QueueSnapshot(
            system="celery",
            queue=name,
            depth=depth,
            oldest_enqueued_at=head if depth else None,
            unacked=_count(row, "messages_unacknowledged", name),
            consumers=_count(row, "consumers", name),
            age_known=depth == 0 or head is not None,
        )
    for name in wanted - found.keys():
        found[name] = _absent(name, unacked=0)
    return tuple(found[name] for name in sorted(found))


def _absent(name: str, *, unacked: int | None) -> QueueSnapshot:
    """A queue the broker does not have: nothing waits in it."""
    return QueueSnapshot(system="celery", queue=name, depth=0, unacked=unacked, consumers=0)


def _root_cause(error: BaseException) -> str:
    """The innermost OS error's text ("[Errno 111] Connection refused"), not urllib3's layers."""
    best = str(error)
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        module = type(current).__module__.split(".")[0]
        if isinstance(current, OSError) and module not in ("requests", "urllib3"):
            best = str(current) or type(current).__name__
        # requests wraps urllib3's error in args, urllib3 keeps its cause in `reason`.
        reason = getattr(current, "reason", None)
        first = current.args[0] if current.args else None
        if isinstance(reason, BaseException):
            current = reason
        elif isinstance(first, BaseException):
            current = first
        else:
            current = current.__cause__ or current.__context__
    return best


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """Masks passwords in text we did not write (server replies, library errors)."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class _Source(Protocol):
    def read(self) -> tuple[QueueSnapshot, ...]: ...

    def close(self) -> None: ...


class _ManagementSource:
    def __init__(
        self,
        endpoint: ManagementEndpoint,
        target: AmqpTarget,
        *,
        queues: Sequence[str],
        discover: bool,
        exclude: Sequence[str],
        timeout: float,
        session: requests.Session | None,
    ) -> None:
        self._base = endpoint.base_url
        self._vhost = target.vhost
        # Credentials in the management URL win; otherwise the broker's, as
        # the same RabbitMQ user usually may read both.
        if endpoint.user is not None:
            self._auth = (endpoint.user, endpoint.password or "")
        else:
            self._auth = (target.user, target.password)
        self._path = f"/api/queues/{quote(target.vhost, safe='')}"
        self._explicit = tuple(dict.fromkeys(queues))
        self._discover = discover
        self._exclude = tuple(exclude)
        self._timeout = timeout
        self._owns_session = session is None
        self._session = session or requests.Session()
        self._secrets = tuple(s for s in (endpoint.password, target.password) if s)

    def read(self) -> tuple[QueueSnapshot, ...]:
        where = f"RabbitMQ management API at {self._base}"
        try:
            response = self._session.get(
                self._base + self._path,
                params={"columns": MANAGEMENT_COLUMNS},
                auth=self._auth,
                timeout=self._timeout,
            )
        except requests.Timeout:
            raise BrokerReadError(f"{where}: no answer within {self._timeout:g} s") from None
        except requests.RequestException as error:
            detail = _scrub(_root_cause(error), self._secrets)
            raise BrokerReadError(
                f"cannot connect to the RabbitMQ management API at {self._base}: {detail}"
            ) from None
        if response.status_code == 404:
            raise BrokerReadError(
                f"vhost {self._vhost!r} does not exist (RabbitMQ management API answered 404)"
            )
        if response.status_code == 401:
            reason = self._error_reason(response)
            if reason == "Not management user":
                raise BrokerReadError(
                    f"{where}: 401 Unauthorized: user {self._auth[0]!r} may not use the "
                    "management API (give it the monitoring tag)"
                )
            raise BrokerReadError(f"{where}: 401 Unauthorized (check the user and password)")
        if response.status_code != 200:
            reason = self._error_reason(response)
            raise BrokerReadError(
                f"{where}: {response.status_code} {response.reason}"
                + (f": {reason}" if reason else "")
            )
        try:
            rows = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BrokerReadError(
                f"{where}: the answer to {self._path} is not JSON (is this the management port?)"
            ) from None
        try:
            return snapshots_from_management(
                rows, explicit=self._explicit, discover=self._discover, exclude=self._exclude
            )
        except ValueError as error:
            detail = _scrub(str(error), self._secrets)
            raise BrokerReadError(f"{where}: unexpected answer to {self._path}: {detail}") from None

    def _error_reason(self, response: requests.Response) -> str:
        """The `reason` of RabbitMQ's JSON error body, shortened; "" if there is none."""
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return ""
        reason = body.get("reason") if isinstance(body, dict) else None
        return _scrub(str(reason)[:200], self._secrets) if reason else ""

    def close(self) -> None:
        if self._owns_session:
            self._session.close()


class _ConnectionLost(BrokerReadError):
    """An established connection failed: worth one fresh attempt in the same read."""


class _PassiveDeclareSource:
    def __init__(self, target: AmqpTarget, *, queues: Sequence[str], timeout: float) -> None:
        self._target = target
        self._queues = tuple(dict.fromkeys(queues))
        self._timeout = timeout
        self._connection: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._secrets = tuple(s for s in (target.password,) if s)

    def read(self) -> tuple[QueueSnapshot, ...]:
        reused = self._connection is not None
        try:
            return self._read_queues()
        except _ConnectionLost:
            self._drop()
            if not reused:
                raise
        except BaseException:
            # Whatever went wrong, the connection may be mid-frame: start afresh next time.
            self._drop()
            raise
        # The connection sat idle since the last scrape and died meanwhile (a
        # broker restart, a proxy's idle timeout): a new one tells whether the
        # broker itself is down, without failing a scrape for a stale socket.
        log.debug("connection to %s lost since the last scrape, reconnecting", self._target.display)
        try:
            return self._read_queues()
        except BaseException:
            self._drop()
            raise

    def _read_queues(self) -> tuple[QueueSnapshot, ...]:
        self._connect()
        found = [self._declare(name) for name in self._queues]
        return tuple(sorted(found, key=lambda q: q.queue))

    def _declare(self, name: str) -> QueueSnapshot:
        try:
            ok = self._open_channel().queue_declare(queue=name, passive=True)
        except amqp_errors.NotFound:
            # RabbitMQ closed the channel with the 404; py-amqp reopens it, and
            # _open_channel opens another if it did not.
            return _absent(name, unacked=None)
        except amqp_errors.ChannelError as error:
            raise BrokerReadError(
                f"cannot read queue {name!r} in vhost {self._target.vhost!r} on RabbitMQ at "
                f"{self._target.display}: {self._reply(error)}"
            ) from None
        except amqp_errors.ConnectionError as error:
            raise _ConnectionLost(
                f"RabbitMQ at {self._target.display} closed the connection: {self._reply(error)}"
            ) from None
        except OSError as error:
            raise _ConnectionLost(
                f"lost the connection to RabbitMQ at {self._target.display}: "
                f"{_scrub(str(error) or type(error).__name__, self._secrets)}"
            ) from None
        depth = ok.message_count
        return QueueSnapshot(
            system="celery",
            queue=name,
            depth=depth,
            unacked=None,
            consumers=ok.consumer_count,
            # A passive declare tells nothing about the messages themselves.
            age_known=depth == 0,
        )

    def _open_channel(self) -> amqp.Channel:
        if self._channel is None or not self._channel.is_open:
            assert self._connection is not None
            self._channel = self._connection.channel()
        return self._channel

    def _connect(self) -> None:
        if self._connection is not None:
            return
        target = self._target
        connection = amqp.Connection(
            target.address,
            userid=target.user,
            password=target.password,
            virtual_host=target.vhost,
            ssl={"server_hostname": target.host} if target.tls else False,
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            write_timeout=self._timeout,
            # No heartbeats: nothing would send them between scrapes, and a
            # connection the broker closed is replaced at the next read.
            heartbeat=0,
        )
        try:
            connection.connect()
        except amqp_errors.AccessRefused:
            connection.collect()
            raise BrokerReadError(
                f"RabbitMQ at {target.display}: login refused for user {target.user!r} "
                "(check the user and password)"
            ) from None
        except amqp_errors.NotAllowed as error:
            connection.collect()
            text = error.reply_text or ""
            if "not found" in text:
                problem = f"vhost {target.vhost!r} does not exist"
            elif "refused for user" in text:
                problem = f"access to vhost {target.vhost!r} refused for user {target.user!r}"
            else:
                problem = f"RabbitMQ refused the connection: {self._reply(error)}"
            raise BrokerReadError(
                f"{problem} (RabbitMQ at {target.display} answered NOT_ALLOWED)"
            ) from None
        except amqp_errors.AMQPError as error:
            connection.collect()
            raise BrokerReadError(
                f"RabbitMQ at {target.display} refused the connection: {self._reply(error)}"
            ) from None
        except OSError as error:
            connection.collect()
            detail = _scrub(str(error) or type(error).__name__, self._secrets)
            raise BrokerReadError(
                f"cannot connect to RabbitMQ at {target.display}: {detail}"
            ) from None
        self._connection = connection

    def _reply(self, error: amqp_errors.AMQPError) -> str:
        text = getattr(error, "reply_text", "") or str(error)
        return _scrub(text, self._secrets)

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            # No closing handshake: the connection is broken or mid-frame.
            connection.collect()

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None:
            return
        try:
            connection.close()
        except (OSError, amqp_errors.AMQPError):
            connection.collect()


class RabbitMQReader:
    """Celery queues on RabbitMQ, read through the management API or by passive declares."""

    system = "celery"

    def __init__(
        self,
        target: AmqpTarget,
        *,
        management: ManagementEndpoint | None,
        queues: Sequence[str],
        discover: bool,
        exclude: Sequence[str],
        timeout: float,
        session: requests.Session | None = None,
    ) -> None:
        self._source: _Source
        if management is not None:
            self._source = _ManagementSource(
                management,
                target,
                queues=queues,
                discover=discover,
                exclude=exclude,
                timeout=timeout,
                session=session,
            )
            return
        if not queues:
            raise ValueError(
                "--queue is required for RabbitMQ without --rabbitmq-management-url"
            )
        too_long = [q for q in queues if len(q.encode()) > MAX_QUEUE_NAME_BYTES]
        if too_long:
            raise ValueError(
                f"queue name {too_long[0][:40]!r}... is longer than RabbitMQ's "
                f"{MAX_QUEUE_NAME_BYTES} bytes"
            )
        self._source = _PassiveDeclareSource(target, queues=queues, timeout=timeout)

    def read(self, now: float) -> BrokerSnapshot:
        return BrokerSnapshot(taken_at=now, queues=self._source.read())

    def close(self) -> None:
        self._source.close()


def build_rabbitmq_reader(
    broker_url: str,
    *,
    management_url: str | None,
    queues: Sequence[str],
    discover: bool,
    exclude: Sequence[str],
    timeout: float,
    session: requests.Session | None = None,
) -> RabbitMQReader:
    """The reader the CLI runs; raises ValueError with a message for the command line.

    Nothing is contacted here: an unreachable broker shows as a failed scrape.
    """
    return RabbitMQReader(
        parse_broker_url(broker_url),
        management=parse_management_url(management_url) if management_url else None,
        queues=queues,
        discover=discover,
        exclude=exclude,
        timeout=timeout,
        session=session,
    )

