"""At most one scaler acts: a lease with an expiry, held through Redis or DynamoDB.

Every instance evaluates; only the one whose `hold()` answers `held` may change desired
counts, and only while its clock reads less than `until`. The store keeps the lease for
`ttl` after each renewal, so when the holder dies (stops renewing) the lease is free after
at most `ttl`, and another instance, calling `hold()` once per evaluation, has it within
`ttl` plus one interval. `until` stops short of the store's expiry by a third of the ttl:
an instance that can no longer reach the store stops acting before anyone else can take
over, and a change it started just before `until` has time to land.

Nothing here raises from `hold()` or `release()`: a store that cannot be read or written
means "not held" (with `error`), never "held" on unknown.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

# boto3 and redis are imported where a client is made: reading a config (check-config)
# needs neither, and they take a quarter of a second to import.
from botocore.exceptions import ClientError

from exporter.redaction import secrets_of_url

log = logging.getLogger(__name__)

DEFAULT_NAME: Final = "taskqueue-scaler"
# The default ttl is this many intervals, and at least MIN_DEFAULT_TTL seconds.
DEFAULT_TTL_INTERVALS: Final = 3
MIN_DEFAULT_TTL: Final = 15.0
# `until` = now + ttl - ttl * SAFETY_FRACTION.
SAFETY_FRACTION: Final = 1 / 3
REDIS_SCHEMES: Final = ("redis", "rediss")
DYNAMODB_KEY_ATTRIBUTE: Final = "id"
# A store's call gives up after a few seconds: a hold() that returns late has a shorter
# `until` left (it counts from the `now` passed in), and the loop waits on it.
STORE_TIMEOUT: Final = 2.0

StoreKind = Literal["redis", "dynamodb"]


@dataclass(frozen=True)
class LeaseStatus:
    held: bool  # this instance may act until `until`
    holder: str | None  # who holds it, when known (an identity string)
    until: float | None  # epoch seconds (our clock) until which our hold is safe
    error: str | None = None  # why the store could not be read or written (one line, no secrets)


class Lease(Protocol):
    identity: str

    def hold(self, now: float) -> LeaseStatus:
        """Acquire if free or expired, renew if ours; never raises.

        `now` is this instance's clock (epoch seconds) read just before the call: `until`
        counts from it, so a call that takes long leaves less time to act.
        """
        ...

    def release(self) -> None:
        """Give it up if ours (on shutdown); never raises."""
        ...


@dataclass(frozen=True)
class LeaseConfig:
    """The config's `lease:` section. `url` never holds a password (that goes in `url_env`)."""

    kind: StoreKind
    ttl: float
    name: str = DEFAULT_NAME
    # redis: exactly one of these
    url: str | None = None
    url_env: str | None = None
    # dynamodb
    table: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    key_attribute: str = DYNAMODB_KEY_ATTRIBUTE


class LeaseError(ValueError):
    """The lease cannot be set up (a variable not set, a bad URL); one line, no secrets."""


def default_ttl(interval: float) -> float:
    return max(DEFAULT_TTL_INTERVALS * interval, MIN_DEFAULT_TTL)


def safe_until(now: float, ttl: float) -> float:
    """Until when a hold taken or renewed at `now` may be acted on."""
    return now + ttl - ttl * SAFETY_FRACTION


def default_identity() -> str:
    """hostname/pid/random: unique per process, and readable in a log line."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- messages

_URL_USERINFO = re.compile(r"(//)[^/@\s]+@")
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=]{100,}")
_MAX_TEXT = 200


def _one_line(text: str, hidden: Sequence[str] = ()) -> str:
    """The first non-empty line, without passwords, keys or tokens, at most 200 characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    for secret in hidden:
        if secret:
            line = line.replace(secret, "***")
    line = _URL_USERINFO.sub(r"\1***@", line)
    line = _ACCESS_KEY_ID.sub("***", line)
    line = _LONG_TOKEN.sub("***", line)
    return line if len(line) <= _MAX_TEXT else line[: _MAX_TEXT - 3] + "..."


def _describe(error: BaseException, hidden: Sequence[str] = ()) -> str:
    detail = _one_line(str(error), hidden)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _text(value: Any) -> str:
    """A holder as read from the store, printable whatever another program wrote there."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return _one_line(text) or repr(text)


def _check_ttl(ttl: float) -> None:
    if not ttl > 0:
        raise ValueError(f"ttl must be > 0 (got {ttl!r})")


# --------------------------------------------------------------------------- Redis

# Renew only a lease that is still ours, in one step: between a GET and a PEXPIRE sent
# separately, the key could expire and be taken by another instance.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A Redis string `name` = holder's identity, expiring `ttl` after the last renewal.

    The expiry is Redis's own, so the instances' clocks need not agree.
    """

    def __init__(self, client: Any, name: str, ttl: float, identity: str | None = None,
                 *, hidden: Sequence[str] = ()) -> None:
        _check_ttl(ttl)
        self.client = client
        self.name = name
        self.ttl = ttl
        self.identity = identity or default_identity()
        self._ttl_ms = max(1, round(ttl * 1000))
        # Secrets (the URL's password) to strip from error messages, should one show up.
        self._hidden = tuple(hidden)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def hold(self, now: float) -> LeaseStatus:
        try:
            return self._hold(now)
        except Exception as error:  # never raises: an unknown state is "not held"
            return LeaseStatus(False, None, None, self._error(error))

    def _hold(self, now: float) -> LeaseStatus:
        current = self._renew(keys=[self.name], args=[self.identity, self._ttl_ms])
        if current == 1:
            return LeaseStatus(True, self.identity, safe_until(now, self.ttl))
        if current is None:
            if self.client.set(self.name, self.identity, nx=True, px=self._ttl_ms):
                return LeaseStatus(True, self.identity, safe_until(now, self.ttl))
            current = self.client.get(self.name)  # another instance was quicker
        return LeaseStatus(False, None if current is None else _text(current), None)

    def release(self) -> None:
        try:
            self._release(keys=[self.name], args=[self.identity])
        except Exception as error:
            log.warning("lease %s: could not release it (%s); another instance takes over "
                        "when it expires", self.name, self._error(error))

    def _error(self, error: Exception) -> str:
        if "WRONGTYPE" in str(error):
            return (f"redis: key {self.name!r} holds a value that is not a string: another "
                    f"program uses it; choose another lease.name")
        return f"redis: {_describe(error, self._hidden)}"


# --------------------------------------------------------------------------- DynamoDB


class DynamoDbLease:
    """An item `{id: name, holder, expires_at}` in a table, written only under a condition.

    `expires_at` is in the writer's clock and compared with the reader's: the instances'
    clocks must agree within a fraction of the ttl (well under a third of it; NTP-synced
    hosts such as ECS tasks agree within milliseconds).
    """

    def __init__(self, client: Any, table: str, name: str, ttl: float,
                 identity: str | None = None, *,
                 key_attribute: str = DYNAMODB_KEY_ATTRIBUTE) -> None:
        _check_ttl(ttl)
        self.client = client
        self.table = table
        self.name = name
        self.ttl = ttl
        self.identity = identity or default_identity()
        self._key = {key_attribute: {"S": name}}
        self._key_attribute = key_attribute

    def hold(self, now: float) -> LeaseStatus:
        try:
            return self._hold(now)
        except Exception as error:  # never raises: an unknown state is "not held"
            return LeaseStatus(False, None, None, f"dynamodb: {_dynamodb_error(error)}")

    def _hold(self, now: float) -> LeaseStatus:
        try:
            self.client.put_item(
                TableName=self.table,
                Item={**self._key, "holder": {"S": self.identity},
                      "expires_at": {"N": _number(now + self.ttl)}},
                # Free, expired, or ours. The names are placeholders: NAME is a reserved word.
                ConditionExpression=(
                    "attribute_not_exists(#k) OR #expires_at < :now OR #holder = :me"),
                ExpressionAttributeNames={"#k": self._key_attribute, "#holder": "holder",
                                          "#expires_at": "expires_at"},
                ExpressionAttributeValues={":now": {"N": _number(now)},
                                           ":me": {"S": self.identity}},
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise
            item = self.client.get_item(TableName=self.table, Key=self._key,
                                        ConsistentRead=True).get("Item") or {}
            holder = item.get("holder", {}).get("S")
            return LeaseStatus(False, None if holder is None else _text(holder), None)
        return LeaseStatus(True, self.identity, safe_until(now, self.ttl))

    def release(self) -> None:
        try:
            self.client.delete_item(
                TableName=self.table, Key=self._key,
                ConditionExpression="#holder = :me",
                ExpressionAttributeNames={"#holder": "holder"},
                ExpressionAttributeValues={":me": {"S": self.identity}},
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":  # not ours: nothing to do
                log.warning("lease %s: could not release it (dynamodb: %s); another instance "
                            "takes over when it expires", self.name, _dynamodb_error(error))
        except Exception as error:
            log.warning("lease %s: could not release it (dynamodb: %s); another instance "
                        "takes over when it expires", self.name, _dynamodb_error(error))


def _number(seconds: float) -> str:
    return f"{seconds:.3f}"


def _code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _dynamodb_error(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        code = _code(error)
        message = str(response.get("Error", {}).get("Message", ""))
        return f"{code}: {_one_line(message)}" if message else code or type(error).__name__
    return _describe(error)


# --------------------------------------------------------------------------- clients


def build_lease(config: LeaseConfig, env: Mapping[str, str],
                identity: str | None = None) -> Lease:
    """The lease the config asks for, with a client of its own; LeaseError if it cannot be
    (whatever the client library raised, in one line without secrets)."""
    if config.kind == "redis":
        return _redis_lease(config, env, identity)
    try:
        client = dynamodb_client(config.region or "", config.endpoint_url)
    except Exception as error:  # botocore: InvalidRegionError, ValueError (endpoint)...
        raise LeaseError(f"dynamodb: cannot make a client: {_describe(error)}") from None
    return DynamoDbLease(client, config.table or "", config.name, config.ttl, identity,
                         key_attribute=config.key_attribute)


def _redis_lease(config: LeaseConfig, env: Mapping[str, str],
                 identity: str | None) -> RedisLease:
    where = f"lease.url_env: environment variable {config.url_env}" if config.url_env else (
        "lease.url")
    url = env.get(config.url_env) if config.url_env else config.url
    if not url:
        raise LeaseError(f"{where} is not set")
    hidden = secrets_of_url(url)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in REDIS_SCHEMES:
        # Not the URL itself: it may hold a password.
        raise LeaseError(f"{where} must be a redis:// or rediss:// URL (got scheme {scheme!r})")
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client = redis.Redis.from_url(
            url, socket_timeout=STORE_TIMEOUT, socket_connect_timeout=STORE_TIMEOUT,
            # One retry reconnects a pooled connection the server has closed; more would
            # hold the loop for longer than the lease's safety margin.
            retry=Retry(NoBackoff(), 1),
        )
    except Exception as error:
        raise LeaseError(f"{where}: not a valid Redis URL: {_describe(error, hidden)}"
                         ) from None
    return RedisLease(client, config.name, config.ttl, identity, hidden=hidden)


def dynamodb_client(region: str, endpoint_url: str | None = None) -> Any:
    """A boto3 DynamoDB client from a session of its own, with short timeouts."""
    import boto3
    from botocore.config import Config

    config = Config(
        # total_max_attempts counts the first call too: two calls at most.
        retries={"mode": "standard", "total_max_attempts": 2},
        connect_timeout=STORE_TIMEOUT,
        read_timeout=STORE_TIMEOUT,
    )
    # A session of its own: boto3's default session is module state and not thread-safe.
    return boto3.session.Session().client("dynamodb", region_name=region,
                                          endpoint_url=endpoint_url, config=config)
