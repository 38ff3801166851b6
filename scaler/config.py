"""The scaler's YAML config, parsed and validated once into frozen objects.

Every error is collected, not just the first, each with its key path and the
bad value: `services[2].rules[0].target: must be > 0 (got -5)`. Nothing here
touches Prometheus or ECS.

Bad input is refused at the door, with bounded work whatever the file says: the
YAML within limits (scaler.yaml_document), templates rendered with bounded work
(scaler.templates), queries parsed as PromQL (scaler.promql_syntax), every number
within a range that makes sense, no two services on one ECS service.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from exporter import metric_names
from scaler import child_limits, ecs_names, query_checks, templates, yaml_document
from scaler.decision import (
    Behavior,
    Direction,
    Limits,
    Policy,
    default_scale_down,
    default_scale_up,
)
from scaler.lease import DEFAULT_NAME as DEFAULT_LEASE_NAME
from scaler.lease import DYNAMODB_KEY_ATTRIBUTE, REDIS_SCHEMES, LeaseConfig, default_ttl
from scaler.local import LocalBackend
from scaler.prometheus import PrometheusSettings, show_url
from scaler.rules import Drain, Expression, PerWorker, Threshold
from scaler.template_sandbox import promql_string as promql_string

T = TypeVar("T")
RuleKind = Literal["per_worker", "drain", "threshold", "expression"]
RULE_KINDS: tuple[RuleKind, ...] = ("per_worker", "drain", "threshold", "expression")
DEFAULT_PORT = 9809
# Every exporter scraped and read its broker, and none is missing: one that cannot read
# its broker reports 0; one that is down or gone has no series at all (stale), so the
# exporters reporting success now are compared with the most seen in the last 10 minutes.
DEFAULT_HEALTH_QUERY = (
    f"count({metric_names.SCRAPE_SUCCESS.name} == 1) >= "
    f"max_over_time(count({metric_names.SCRAPE_SUCCESS.name})[10m:])")
# ECS runs at most 5,000 tasks per service (a quota that cannot be raised).
ECS_MAX_TASKS = 5000
LOCAL_MAX_PROCESSES = 1000
# Beyond this a float no longer holds every integer, and no setting needs more.
MAX_MAGNITUDE = 1e15
MAX_DURATION = 7 * 86400.0
MIN_DURATION = 0.001
DAY = 86400.0
# Each service costs every evaluation a decision and its share of the queries: beyond a
# few thousand one loop cannot keep a 15 s interval (bench-scaler: 1,000 in about 1 s).
MAX_SERVICES = 5000
# Values once for_each has stamped its services: 5,000 services of 100 values each.
MAX_STAMPED_VALUES = 500_000
# The local backend's commands and ready patterns, all services together: splitting and
# compiling them takes microseconds a character, and a machine runs a few such services.
MAX_LOCAL_TEXT = 64 * 1024
# (label, value) pairs a series must carry to be read; () reads every series.
Selector = tuple[tuple[str, str], ...]


# An error line's length at most: a message may quote a parser's, a key path 64 keys.
MAX_ERROR_LINE = 500


def one_line(text: str) -> str:
    """`text` as one error line: every character that is not printable escaped as repr()
    escapes it (a key or a value may hold a newline that would forge a line of its own,
    or a terminal's escape sequence), at most MAX_ERROR_LINE characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_ERROR_LINE else text[:MAX_ERROR_LINE - 3] + "..."


class ConfigError(ValueError):
    """Every problem found in a config, one line each (one_line)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = [one_line(error) for error in errors]
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class EcsBackend:
    cluster: str
    service: str
    region: str
    endpoint_url: str | None = None


@dataclass(frozen=True)
class RuleConfig:
    name: str
    kind: RuleKind
    query: str
    rule: PerWorker | Drain | Threshold | Expression
    aggregate: Literal["sum", "max"] | None = None
    on_empty: Literal["hold", "zero"] = "hold"
    # drain only: per-worker throughput (tasks/s) as a constant or a query, and arrivals.
    throughput: float | None = None
    throughput_query: str | None = None
    arrival_query: str | None = None
    # Which series of each of the rule's query results this service reads: one
    # `sum by (queue)` query then serves every service of a for_each.
    match_labels: Selector = ()


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    backend: EcsBackend | LocalBackend
    limits: Limits
    behavior: Behavior
    rules: tuple[RuleConfig, ...]
    activation_query: str | None = None
    scale_down_guard: str | None = None
    match_labels: Selector = ()  # for activation_query and scale_down_guard
    # Non-zero while the data the rules read can be trusted; without it an empty result
    # is never read as 0 (on_empty: zero). None: no such check.
    health_query: str | None = None


@dataclass(frozen=True)
class ScalerConfig:
    prometheus: PrometheusSettings
    services: tuple[ServiceConfig, ...]
    interval: float = 15.0
    concurrency: int = 16
    listen_address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    bearer_token_env: str | None = field(default=None, repr=False)
    restore: RestoreConfig = field(default_factory=lambda: RestoreConfig())
    lease: LeaseConfig | None = None  # None: no lease, this instance always acts


@dataclass(frozen=True)
class RestoreConfig:
    """Where a starting scaler reads what it decided before: its own series in Prometheus."""

    enabled: bool = True
    # PromQL label matchers that pick this scaler's own series, when one Prometheus
    # scrapes several scalers that share service names: 'job="taskqueue-scaler"'.
    matchers: str = ""


# --------------------------------------------------------------------------- values

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|min|m|h|hour)\s*$")
_RATE_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}


class _Invalid(ValueError):
    pass


class _Shown(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int of over 4,300 digits raises; one that long is shown by size.
        return repr(x) if abs(x) < 10**60 else f"<{x.bit_length()}-bit integer>"


_SHOWN = _Shown()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxset = 3, 6, 4, 6
_SHOWN.maxtuple, _SHOWN.maxstring, _SHOWN.maxother = 6, 64, 64


def _show(value: Any) -> str:
    """The value as in an error message: its repr, cut after 60 characters, in bounded time
    (a value can be a megabyte string, or a list aliased a thousand times), and any URL's
    user and password in it shown as *** (a command line may hold a broker's URL)."""
    text = repr(_redacted(value)[:61]) if isinstance(value, str) else _SHOWN.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SPACE = re.compile(r"\s")


def _redacted(text: str) -> str:
    """`text` with all before the last "@" of a URL (its user and password) as ***, for
    the URLs that start where _show shows them: each token read once."""
    if "@" not in text:
        return text
    parts = []
    position = 0
    while 0 <= (start := text.find("://", position)) < 64:
        space = _SPACE.search(text, start)
        end = len(text) if space is None else space.start()
        at = text.rfind("@", start, end)
        parts.append(text[position:start + 3] + ("***" if at >= 0 else text[start + 3:end]))
        position = at if at >= 0 else end
    parts.append(text[position:])
    return "".join(parts)


def _numeral(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid(f"must be a number (got {_show(value)})")
    if isinstance(value, int) and abs(value) > MAX_MAGNITUDE:
        number = math.inf if value > 0 else -math.inf  # float() of a huge int raises
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Invalid(f"must be a number (got {_show(value)})") from None
    else:
        raise _Invalid(f"must be a number (got {_show(value)})")
    if math.isnan(number):
        raise _Invalid(f"must be a finite number (got {_show(value)})")
    if not abs(number) <= MAX_MAGNITUDE:
        raise _Invalid(f"must be between -{MAX_MAGNITUDE:g} and {MAX_MAGNITUDE:g} "
                       f"(got {_show(value)})")
    return number


def _integer(value: Any) -> int:
    number = _number(value)
    if number != int(number):
        raise _Invalid(f"must be a whole number (got {_show(value)})")
    return int(number)


def _seconds(value: Any) -> float:
    """Seconds, finite, from a number of seconds or `500ms`, `15s`, `5m`, `1h`."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise _Invalid(f"must be a duration like 30s, 5m or 1h (got {_show(value)})")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        try:
            seconds = _number(value)
        except _Invalid:
            raise _Invalid(f"must be a duration like 30s, 5m or 1h (got {_show(value)})") from None
    if not abs(seconds) <= MAX_MAGNITUDE:  # "9999...9s"
        raise _Invalid(f"must be a duration like 30s, 5m or 1h (got {_show(value)})")
    return seconds


def _duration(value: Any) -> float:
    """A duration in the config: at most 7 days, and 0 or at least a millisecond."""
    seconds = _seconds(value)
    if seconds > MAX_DURATION:
        raise _Invalid(f"must be at most 7 days (got {_show(value)})")
    if 0 < seconds < MIN_DURATION:
        raise _Invalid(f"must be 0 or at least 1ms (got {_show(value)})")
    return seconds


def _rate(value: Any) -> float:
    """Tasks per second, from a number (per second) or `2/min`, `120/h`, `0.5/s`."""
    if isinstance(value, str):
        match = _RATE.match(value)
        if match is None:
            raise _Invalid(f"must be a rate like 2/min, 0.5/s or 100/h (got {_show(value)})")
        rate = float(match.group(1)) / _RATE_SECONDS[match.group(2)]
        if not rate <= MAX_MAGNITUDE:
            raise _Invalid(f"must be a rate like 2/min, 0.5/s or 100/h (got {_show(value)})")
        return rate
    return _number(value)


def parse_duration(value: Any) -> float:
    """Seconds from `30s`, `5m`, `1h`, `500ms` or a number; ValueError names the bad value."""
    return _seconds(value)


def parse_rate(value: Any) -> float:
    """Tasks per second from `2/min`, `0.5/s`, `100/h` or a number."""
    return _rate(value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string (got {_show(value)})")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false (got {_show(value)})")
    return value


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _selector(value: Any) -> Selector:
    if not isinstance(value, Mapping):
        raise _Invalid(f"must map label names to values (got {_show(value)})")
    pairs = []
    for name, label_value in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
            raise _Invalid(f"label name {_show(name)} is not a valid Prometheus label name")
        if not isinstance(label_value, str):
            # YAML has already turned 010 into 8 and 1.10 into 1.1: only a quoted value
            # is the label value as written.
            raise _Invalid(f"label {name}: value must be a quoted string "
                           f"(got {_show(label_value)})")
        pairs.append((name, label_value))
    return tuple(sorted(pairs))


def _ecs_cluster(value: Any) -> str:
    text = _string(value)
    if ecs_names.cluster(text) is None:
        raise _Invalid("must be an ECS cluster name (up to 255 letters, digits, - and _) or "
                       f"ARN (got {_show(text)})")
    return text


def _ecs_service(value: Any) -> str:
    text = _string(value)
    if ecs_names.service(text) is None:
        raise _Invalid("must be an ECS service name (up to 255 letters, digits, - and _) or "
                       f"ARN (got {_show(text)})")
    return text


def _region(value: Any) -> str:
    text = _string(value)
    if not ecs_names.region(text):
        raise _Invalid(f"must be an AWS region like eu-west-1 (got {_show(text)})")
    return text


def _endpoint(value: Any) -> str:
    text = _string(value)
    if not ecs_names.endpoint(text):
        raise _Invalid(f"must be an http:// or https:// URL (got {_show_url(text)})")
    return text


# http(s), any case, a host, and nothing a request line cannot hold.
_HTTP_URL = re.compile(r"https?://[^/\s\x00-\x1f\x7f]+(/[^\s\x00-\x1f\x7f]*)?", re.IGNORECASE)


def _show_url(text: str) -> str:
    """A URL as in an error message: never its user, password, query or fragment."""
    return _show(show_url(text))


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)} (got {_show(value)})")
        return value

    return check


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class _Pending:
    """A query's place in the list of errors, until every query of the config is checked."""

    key: str
    query: query_checks.Query
    # Its error line's message once found invalid; None: "not valid PromQL: ...".
    invalid: str | None = None


class _Report:
    """Every error of one config, each once, in the order found."""

    def __init__(self) -> None:
        self._entries: list[str | _Pending] = []
        self._seen: set[str] = set()
        self.keys: set[str] = set()  # key paths with an error
        self._queries: dict[query_checks.Query, None] = {}  # each checked once, in order
        self.local_text_left = MAX_LOCAL_TEXT

    def defer(self, key: str, query: query_checks.Query, invalid: str | None = None) -> None:
        """`query` is checked with all the config's others, by finish(); its error, if
        any, takes this place in the list."""
        self._queries[query] = None
        self._entries.append(_Pending(key, query, invalid))

    def finish(self, cpu_seconds: float) -> list[str]:
        """Every error, the queries' included."""
        queries = list(self._queries)
        results = dict(zip(queries, query_checks.check_all(queries, cpu_seconds), strict=True))
        errors: list[str] = []
        seen: set[str] = set()
        for entry in self._entries:
            if isinstance(entry, _Pending):
                result = results[entry.query]
                if isinstance(result, query_checks.Invalid):
                    message = entry.invalid or (f"not valid PromQL: {result.problem} "
                                                f"(got {_show(entry.query.text)})")
                elif isinstance(result, query_checks.Refused) and result.reason:
                    message = result.reason
                else:
                    continue
                entry = f"{entry.key}: {message}"
            if entry not in seen:
                seen.add(entry)
                errors.append(entry)
        return errors

    def local_text(self, convert: Callable[[Any], T]) -> Callable[[Any], T]:
        """`convert`, within what is left of MAX_LOCAL_TEXT."""

        def within(value: Any) -> T:
            parts = value if isinstance(value, list) else [value]
            self.local_text_left -= sum(len(p) for p in parts if isinstance(p, str))
            if self.local_text_left < 0:
                raise _Invalid(f"the local backend's commands and ready patterns pass "
                               f"{MAX_LOCAL_TEXT} characters in all")
            return convert(value)

        return within

    def add(self, key: str, message: str) -> None:
        entry = f"{key}: {message}" if key else message
        if entry not in self._seen:
            self._seen.add(entry)
            self._entries.append(entry)
        self.keys.add(key)


def _key_name(name: Any) -> str:
    if type(name) is str and len(name) <= 40:
        return name
    text = str(name) if isinstance(name, str | int | float | bool) or name is None else "?"
    return text if len(text) <= 40 else text[:37] + "..."


class _Node:
    """A mapping in the YAML with its key path; records errors instead of raising."""

    def __init__(self, data: Mapping[str, Any], path: str, report: _Report,
                 failed: frozenset[str] = frozenset()) -> None:
        self.data = data
        self.path = path
        self.report = report
        # Key paths whose template failed (reported already): not checked again.
        self.failed = failed
        self.used: set[str] = set()
        self.error_count = 0

    def key(self, name: Any) -> str:
        return f"{self.path}.{_key_name(name)}" if self.path else _key_name(name)

    def error(self, name: Any, message: str) -> None:
        self.error_count += 1
        self.report.add(self.key(name), message)

    def has_error(self, name: str) -> bool:
        return self.key(name) in self.report.keys

    def _value(self, name: str) -> Any:
        """The value, or None when missing or when its template failed."""
        self.used.add(name)
        if self.failed and self.key(name) in self.failed:
            return None
        return self.data.get(name)

    def get(self, name: str, convert: Callable[[Any], T], default: T) -> T:
        value = self._value(name)
        if value is None:
            return default
        try:
            return convert(value)
        except _Invalid as problem:
            self.error(name, str(problem))
            return default

    def require(self, name: str, convert: Callable[[Any], T]) -> T | None:
        value = self._value(name)
        if value is None:
            if self.key(name) not in self.failed:
                self.error(name, "required")
            return None
        try:
            return convert(value)
        except _Invalid as problem:
            self.error(name, str(problem))
            return None

    def query(self, name: str, default: str | None = None, *, required: bool = False,
              false_is_none: bool = False) -> str | None:
        """A PromQL query whose result a rule can read; checked as PromQL with the config's
        other queries (_Report.defer). `false_is_none`: false is no query."""
        value = self._value(name)
        if value is None:
            if required and self.key(name) not in self.failed:
                self.error(name, "required")
            return default
        if false_is_none and value is False:
            return None
        if not isinstance(value, str) or not value.strip():
            expected = "a PromQL query, or false for none" if false_is_none else (
                "a non-empty string")
            self.error(name, f"must be {expected} (got {_show(value)})")
            return default
        self.report.defer(self.key(name), query_checks.Query(value, instant=True))
        return value

    def child(self, name: str, required: bool = False) -> _Node | None:
        self.used.add(name)
        value = self.data.get(name)
        if value is None:
            if required:
                self.error(name, "required")
            return None
        if not isinstance(value, Mapping):
            self.error(name, f"must be a mapping (got {_show(value)})")
            return None
        return _Node(value, self.key(name), self.report, self.failed)

    def items(self, name: str) -> list[_Node]:
        self.used.add(name)
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(name, f"must be a list (got {_show(value)})")
            return []
        nodes = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                self.report.add(f"{self.key(name)}[{i}]", f"must be a mapping (got {_show(item)})")
                continue
            nodes.append(_Node(item, f"{self.key(name)}[{i}]", self.report, self.failed))
        return nodes

    def check_unknown(self) -> None:
        for name in self.data:
            if name not in self.used:
                self.error(name, "unknown key")

    def at_least(self, name: str, value: float | None, low: float, strict: bool = False) -> None:
        if value is None:
            return
        if (value <= low) if strict else (value < low):
            self.error(name, f"must be {'>' if strict else '>='} {low:g} (got {_numeral(value)})")

    def at_most(self, name: str, value: float | None, high: float, why: str = "") -> None:
        if value is not None and value > high:
            self.error(name, f"must be <= {high:g}{why} (got {_numeral(value)})")

    def no_longer(self, name: str, value: float | None, high: float, shown: str) -> None:
        if value is not None and value > high:
            self.error(name, f"must be at most {shown} (got {value:g}s)")


# --------------------------------------------------------------------------- parsing


def load_config(path: str, env: Mapping[str, str]) -> ScalerConfig:
    limit = yaml_document.MAX_BYTES
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise ConfigError([f"the config is {size} bytes, more than the {limit} allowed"])
            # At most one byte more than allowed, whatever the file is (/dev/zero...).
            data = handle.read(limit + 1)
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    if len(data) > limit:
        raise ConfigError([f"the config is more than the {limit} bytes allowed"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"not UTF-8 text (byte {error.start + 1} of the file)"]) from None
    return parse_config(text, env)


def parse_config(text: str, env: Mapping[str, str]) -> ScalerConfig:
    try:
        document = yaml_document.load(text)
    except yaml_document.YamlError as error:
        raise ConfigError(error.errors) from None
    if not isinstance(document, Mapping):
        raise ConfigError(["the config must be a YAML mapping with prometheus and services"])
    report = _Report()
    # The template sandbox's CPU time is taken from what checking the queries may have:
    # a config whose templates and queries both compute is refused as fast as either.
    children_before = child_limits.children_cpu()
    root = _Node(document, "", report)
    prometheus = _prometheus(root.child("prometheus", required=True), env)
    interval = root.get("interval", _duration, 15.0)
    root.at_least("interval", interval, 0, strict=True)
    if interval > 0:
        root.at_least("interval", interval, 0.1)
    root.no_longer("interval", interval, 3600, "1h")
    concurrency = root.get("concurrency", _integer, 16)
    root.at_least("concurrency", concurrency, 1)
    root.at_most("concurrency", concurrency, 256)
    listen_address = root.get("listen_address", _string, "0.0.0.0")
    port = root.get("port", _integer, DEFAULT_PORT)
    if not 0 <= port <= 65535:
        root.error("port", f"must be between 0 and 65535 (got {port})")
    health = root.query("health_query", DEFAULT_HEALTH_QUERY, false_is_none=True)
    restore = _restore(root.child("restore"))
    lease = _lease(root.child("lease"), interval)
    nodes = root.items("services")
    if not nodes and "services" not in root.data:
        root.error("services", "required")
    found = _services(nodes, report, health)
    services = [service for service, _ in found]
    seen: set[str] = set()
    for service in services:
        if service.name in seen:
            report.add("services", f"duplicate service name {_show(service.name)}")
        seen.add(service.name)
    _one_service_each(found, report)
    root.check_unknown()
    templates_cpu = child_limits.children_cpu() - children_before
    errors = report.finish(query_checks.CPU_SECONDS - templates_cpu)
    if errors:
        raise ConfigError(errors)
    assert prometheus is not None
    return ScalerConfig(prometheus=prometheus, services=tuple(services), interval=interval,
                        concurrency=concurrency, listen_address=listen_address, port=port,
                        restore=restore or RestoreConfig(), lease=lease)


def _matchers(value: Any) -> str:
    """PromQL label matchers (checked as PromQL on a selector, by _restore)."""
    text = _string(value).strip().rstrip(",")
    if "{" in text or "}" in text:
        raise _Invalid(_MATCHERS_EXPECTED.format(_show(value)))
    return text


_MATCHERS_EXPECTED = 'must be PromQL label matchers like job="taskqueue-scaler" (got {})'


def _restore(node: _Node | None) -> RestoreConfig | None:
    if node is None:
        return None
    enabled = node.get("enabled", _boolean, True)
    matchers = node.get("matchers", _matchers, "")
    if matchers:
        node.report.defer(node.key("matchers"), query_checks.Query(f"x{{{matchers}}}", False),
                          _MATCHERS_EXPECTED.format(_show(node.data["matchers"])))
    node.check_unknown()
    return RestoreConfig(enabled=enabled, matchers=matchers)


def _prometheus(node: _Node | None, env: Mapping[str, str]) -> PrometheusSettings | None:
    if node is None:
        return None
    url = node.require("url", _string)
    if url is not None and not _HTTP_URL.fullmatch(url):
        node.error("url", f"must be an http:// or https:// URL (got {_show_url(url)})")
    timeout = node.get("timeout", _duration, 10.0)
    node.at_least("timeout", timeout, 0, strict=True)
    node.no_longer("timeout", timeout, 600, "10m")
    headers = node.get("headers", _headers, {})
    token_env = node.get("bearer_token_env", _env_name, None)
    token = None
    if token_env is not None:
        token = env.get(token_env)
        if not token:
            # The variable's name is safe to show; its value never is.
            node.error("bearer_token_env", f"environment variable {token_env} is not set")
    verify = node.get("verify_tls", _boolean, True)
    node.check_unknown()
    try:
        return PrometheusSettings(url=(url or "").rstrip("/"), timeout=timeout, headers=headers,
                                  bearer_token=token, verify_tls=verify)
    except ValueError as error:
        # What the checks above do not cover (a query string in the URL, a header
        # value over two lines...); the message never carries a secret.
        if not node.error_count:
            node.report.add(node.path, str(error))
        return None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: Any) -> str:
    text = _string(value)
    if not _ENV_NAME.fullmatch(text):
        raise _Invalid(f"must be the name of an environment variable (got {_show(text)})")
    return text


def _lease_url(value: Any) -> str:
    """A Redis URL without a password; the value is never shown when it holds one."""
    text = _string(value)
    try:
        parts = urlsplit(text)
        password = parts.password
        hostname = parts.hostname
    except ValueError:
        raise _Invalid("must be a redis:// or rediss:// URL") from None
    if password or any(k == "password" for k, _ in parse_qsl(parts.query)):
        raise _Invalid("holds a password: put the URL in an environment variable and name "
                       "the variable in url_env instead")
    if parts.scheme not in REDIS_SCHEMES or not hostname:
        raise _Invalid(f"must be a redis:// or rediss:// URL (got {_show_url(text)})")
    return text


_TABLE = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def _table(value: Any) -> str:
    text = _string(value)
    if not _TABLE.fullmatch(text):
        raise _Invalid("must be a DynamoDB table name (3 to 255 letters, digits, _, - and .) "
                       f"(got {_show(text)})")
    return text


def _attribute(value: Any) -> str:
    text = _string(value)
    if len(text.encode("utf-8", "surrogatepass")) > 255 or not text.isprintable():
        raise _Invalid(f"must be a DynamoDB attribute name (up to 255 bytes, printable) "
                       f"(got {_show(text)})")
    return text


def _lease(node: _Node | None, interval: float) -> LeaseConfig | None:
    if node is None:
        return None
    kind = node.require("type", _choice("redis", "dynamodb"))
    name = node.get("name", _string, DEFAULT_LEASE_NAME)
    ttl = node.get("ttl", _duration, None)
    # The holder renews once per interval; with ttl > 2 intervals one failed renewal
    # does not cost it the lease (nor make two instances take turns).
    if ttl is not None and interval > 0 and ttl <= 2 * interval:
        node.error("ttl", f"must be more than 2 x interval ({2 * interval:g}s), so that the "
                          f"holder keeps it through one failed renewal (got {ttl:g}s)")
    fields: dict[str, Any] = {}
    if kind == "redis":
        fields["url"] = node.get("url", _lease_url, None)
        fields["url_env"] = node.get("url_env", _env_name, None)
        if (fields["url"] is None) == (fields["url_env"] is None) and not (
                node.has_error("url") or node.has_error("url_env")):
            node.error("url_env", "set exactly one of url_env (a URL with a password) and url")
    elif kind == "dynamodb":
        # Checked as boto3 checks them when the client is made, which `run` does only
        # after check-config has passed.
        fields["table"] = node.require("table", _table)
        fields["region"] = node.require("region", _region)
        fields["endpoint_url"] = node.get("endpoint_url", _endpoint, None)
        fields["key_attribute"] = node.get("key_attribute", _attribute, DYNAMODB_KEY_ATTRIBUTE)
    if kind is not None:  # without a type, which keys belong is unknown
        node.check_unknown()
    if kind is None or node.error_count:
        return None
    return LeaseConfig(kind=kind, name=name,  # type: ignore[arg-type]
                       ttl=default_ttl(interval) if ttl is None else ttl, **fields)


def _headers(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _Invalid("must map header names to string values")
    return dict(value)


def _variables(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _Invalid(f"must be a mapping of names to values (got {_show(value)})")
    return dict(value)


def _for_each(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _Invalid(f"must be a non-empty list (got {_show(value)})")
    items = []
    for item in value:
        if isinstance(item, Mapping):
            items.append(_variables(item))
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            items.append({"item": item})
        else:
            raise _Invalid(f"items must be mappings or plain values (got {_show(item)})")
    return items


@dataclass(frozen=True)
class _Stamp:
    """One service a definition stamps: where it comes from and its variables."""

    node: _Node
    label: str  # the for_each item, for errors: "queue=emails"
    variables: Mapping[str, Any]

    def where(self) -> str:
        return f" (for_each {self.label})" if self.label else ""


@dataclass(frozen=True)
class _Definition:
    """A service definition: its variables, and one item per service it stamps."""

    node: _Node
    base: dict[str, Any]
    items: list[dict[str, Any]]

    def stamps(self) -> list[_Stamp]:
        return [_Stamp(self.node, stamp_label(item), {**self.base, **item})
                for item in self.items]


def _definition(node: _Node) -> _Definition:
    base = node.get("vars", _variables, {})
    items = node.get("for_each", _for_each, [{}]) if "for_each" in node.data else [{}]
    return _Definition(node, base, items)


def _values(value: Any, limit: int) -> int:
    """How many values `value` holds, aliases expanded, counting stops past `limit`."""
    count = 0
    stack = [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return count


def _within_budget(definitions: list[_Definition], report: _Report) -> bool:
    """Whether the services for_each stamps stay within MAX_STAMPED_VALUES: a for_each over
    a large definition is a bomb of its own. Each service counts its definition's values
    and its variables (a mapping of its own)."""
    limit = MAX_STAMPED_VALUES
    total = 0
    for definition in definitions:
        node = definition.node
        body = {k: v for k, v in node.data.items() if k not in ("vars", "for_each")}
        size = _values(body, limit) + len(definition.base)
        size += max(len(item) for item in definition.items)
        count = len(definition.items)
        total += size * count
        if total > limit:
            report.add(node.key("for_each") if count > 1 else node.path,
                       f"stamps {count} services of {size} values each, more than the "
                       f"{limit} values a config may expand to")
            return False
    return True


def _services(nodes: list[_Node], report: _Report,
              health: str | None) -> list[tuple[ServiceConfig, _Stamp]]:
    """Every service, for_each stamped, with the stamp it came from."""
    # Counted before anything is built for them; a bad for_each stamps one service.
    count = sum(len(n.data["for_each"]) if isinstance(n.data.get("for_each"), list)
                and n.data["for_each"] else 1 for n in nodes)
    if count > MAX_SERVICES:
        report.add("services", f"{count} services, more than the {MAX_SERVICES} one scaler "
                               "may run")
        return []
    definitions = [_definition(node) for node in nodes]
    if not _within_budget(definitions, report):
        return []
    every = [stamp for definition in definitions for stamp in definition.stamps()]
    # All templates at once: those that compute share one sandboxed child process.
    jobs: list[templates.Job] = []
    for number, stamp in enumerate(every):
        def collect(path: str, text: str, promql: bool, number: int = number) -> str:
            jobs.append(templates.Job(text, promql, number))
            return text

        _render_tree(stamp.node, collect)
    results: Iterator[templates.Result] = iter(
        templates.render_all(jobs, [stamp.variables for stamp in every]))
    found = []
    for stamp in every:
        failed: set[str] = set()

        def rendered(path: str, text: str, promql: bool, stamp: _Stamp = stamp,
                     failed: set[str] = failed) -> str:
            result = next(results)
            if isinstance(result, str):
                return result
            if result is not None:
                report.add(path, f"{result.problem}{stamp.where()}")
            failed.add(path)
            return text

        data = _render_tree(stamp.node, rendered)
        service = _service(_Node(data, stamp.node.path, report, frozenset(failed)), health)
        if service is not None:
            found.append((service, stamp))
    return found


def stamp_label(stamp: Mapping[str, Any]) -> str:
    """`queue=emails, max=10`: a for_each item in one short line."""
    shown = []
    for number, (key, value) in enumerate(stamp.items()):
        if number == 4:
            shown.append("...")
            break
        text = value[:40] if isinstance(value, str) else _show(value)
        shown.append(f"{_key_name(key)}={text}")
    return ", ".join(shown)


_QUERY_KEYS = frozenset({"query", "throughput_query", "arrival_query", "activation_query",
                         "scale_down_guard", "health_query"})


def _render_tree(node: _Node, render_string: Callable[[str, str, bool], str]) -> dict[str, Any]:
    """The service's data with every template string rendered by `render_string(path, text,
    promql)`: queries escaped for PromQL, the rest plain."""

    def render(value: Any, key: str, path: str, plain: bool = False) -> Any:
        if isinstance(value, str):
            if "{" not in value:
                return value
            return render_string(path, value, key in _QUERY_KEYS and not plain)
        if isinstance(value, Mapping):
            # A label selector's values are compared with label values, not put in PromQL.
            inner = plain or key == "match_labels"
            return {k: render(v, str(k), f"{path}.{_key_name(k)}", inner)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [render(v, key, f"{path}[{i}]", plain) for i, v in enumerate(value)]
        return value

    return {k: v if k in ("vars", "for_each") else render(v, str(k), node.key(k))
            for k, v in node.data.items()}


def _one_service_each(found: list[tuple[ServiceConfig, _Stamp]], report: _Report) -> None:
    """Two services setting the desired count of one ECS service would undo each other."""
    first: dict[tuple[str, str, str, str], _Stamp] = {}
    for service, stamp in found:
        backend = service.backend
        if not isinstance(backend, EcsBackend):
            continue  # local workers: each service runs processes of its own
        target = ecs_names.target(backend.cluster, backend.service, backend.region,
                                  backend.endpoint_url)
        other = first.setdefault(target, stamp)
        if other is not stamp:
            _, region, cluster, name = target
            report.add(stamp.node.key("backend"),
                       f"the same ECS service ({region} {cluster}/{name}) as "
                       f"{other.node.key('backend')}{other.where()}: the two would fight over "
                       f"its desired count{stamp.where()}")


# A service's name is a label value of the scaler's metrics and a field of its log lines:
# ASCII letters, digits and a little punctuation, no space, no control character.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+-]{0,254}")


def _service_name(value: Any) -> str:
    text = _string(value)
    if not _SERVICE_NAME.fullmatch(text):
        raise _Invalid("must be a name of up to 255 letters, digits and _ . : @ / + -, "
                       f"starting with a letter or digit (got {_show(text)})")
    return text


def _service(node: _Node, health: str | None) -> ServiceConfig | None:
    node.get("vars", lambda v: v, None)
    node.get("for_each", lambda v: v, None)
    name = node.require("name", _service_name)
    backend = _backend(node.child("backend", required=True))
    local = isinstance(backend, LocalBackend) or (
        backend is None and isinstance(node.data.get("backend"), Mapping)
        and node.data["backend"].get("type") == "local")
    cap, why = ((LOCAL_MAX_PROCESSES, ", the most worker processes the local backend runs")
                if local else (ECS_MAX_TASKS, ", the most tasks ECS runs in one service"))
    low = node.require("min", _integer)
    node.at_least("min", low, 0)
    node.at_most("min", low, cap, why)
    high = node.require("max", _integer)
    node.at_least("max", high, 1)
    node.at_most("max", high, cap, why)
    if low is not None and high is not None and 0 <= low <= cap and 1 <= high <= cap \
            and low > high:
        node.error("max", f"must be >= min ({low}) (got {high})")
    fallback = node.get("fallback", _integer, None)
    node.at_least("fallback", fallback, 0)
    node.at_most("fallback", fallback, cap, why)
    if fallback is not None and high is not None and high <= cap and fallback <= cap \
            and fallback > high:
        node.error("fallback", f"must be <= max ({high}) (got {fallback})")
    failure_threshold = node.get("failure_threshold", _integer, 3)
    node.at_least("failure_threshold", failure_threshold, 1)
    node.at_most("failure_threshold", failure_threshold, 1000)
    selector = node.get("match_labels", _selector, ())
    rule_nodes = node.items("rules")
    rules = tuple(r for r in (_rule(n, i, selector) for i, n in enumerate(rule_nodes)) if r)
    if node.data.get("rules") is None or node.data.get("rules") == []:
        node.error("rules", "at least one rule is required")
    activation = node.query("activation_query")
    if activation is not None and low not in (0, None):
        node.error("activation_query", f"only applies when min is 0 (min is {low})")
    guard = node.query("scale_down_guard")
    health = node.query("health_query", health, false_is_none=True)
    behavior = _behavior(node.child("behavior"))
    node.check_unknown()
    # A service with errors is dropped here; parse_config reports them all.
    if None in (name, backend, low, high, behavior) or len(rules) != len(rule_nodes) \
            or node.error_count:
        return None
    assert name is not None and backend is not None and behavior is not None
    assert low is not None and high is not None
    return ServiceConfig(
        name=name, backend=backend,
        limits=Limits(min=low, max=high, fallback=fallback, failure_threshold=failure_threshold),
        behavior=behavior, rules=rules, activation_query=activation, scale_down_guard=guard,
        match_labels=selector, health_query=health,
    )


def _backend(node: _Node | None) -> EcsBackend | LocalBackend | None:
    if node is None:
        return None
    kind = node.get("type", _choice("ecs", "local"), "ecs")
    if kind == "local":
        return _local_backend(node)
    cluster = node.require("cluster", _ecs_cluster)
    service = node.require("service", _ecs_service)
    region = node.require("region", _region)
    endpoint = node.get("endpoint_url", _endpoint, None)
    node.check_unknown()
    if kind != "ecs" or None in (cluster, service, region):
        return None
    assert cluster is not None and service is not None and region is not None
    in_cluster = ecs_names.cluster(cluster)
    named = ecs_names.service(service)
    assert in_cluster is not None and named is not None
    for key, arn in (("cluster", in_cluster), ("service", named)):
        if arn.region is not None and arn.region != region.lower():
            node.error(key, f"its ARN is in region {arn.region}, not {_show(region)}")
    if named.cluster is not None and named.cluster != in_cluster.name:
        node.error("service", f"its ARN is in cluster {named.cluster}, "
                              f"not {_show(in_cluster.name)}")
    if node.error_count:
        return None
    return EcsBackend(cluster=cluster, service=service, region=region, endpoint_url=endpoint)


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            parts = tuple(shlex.split(value))
        except ValueError as error:
            raise _Invalid(f"cannot split into arguments: {error} (got {_show(value)})") from None
    elif isinstance(value, list) and all(isinstance(p, str | int | float) for p in value):
        parts = tuple(str(p) for p in value)
    else:
        raise _Invalid(f"must be a command line or a list of arguments (got {_show(value)})")
    if not parts or not parts[0]:
        raise _Invalid("must name a program to run")
    if any("\0" in part for part in parts):
        raise _Invalid("must not hold a NUL character")
    return parts


def _path(value: Any) -> str:
    text = _string(value)
    if "\0" in text:
        raise _Invalid("must not hold a NUL character")
    return text


def _environment_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise _Invalid("must map variable names to string values")
    for name, text in value.items():
        # What exec refuses: a name with "=" or NUL, a value with NUL.
        if not _VARIABLE.fullmatch(name) or "\0" in str(text):
            raise _Invalid(f"variable {_show(name)}: names are letters, digits and _, "
                           "values have no NUL character")
    return {k: str(v) for k, v in value.items()}


# Python's re parses a group by recursion: thousands nested exhaust the stack.
MAX_PATTERN_NESTING = 100
# Escapes, classes and parentheses: enough to count how deep groups nest.
_PATTERN_TOKENS = re.compile(r"\\.|\[\^?\]?(?:\\.|[^\]\\])*+\]|[()]", re.DOTALL)


def _pattern(value: Any) -> str:
    text = _string(value)
    depth = deepest = 0
    for token in _PATTERN_TOKENS.finditer(text):
        if token.group() == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif token.group() == ")":
            depth -= 1
    if deepest > MAX_PATTERN_NESTING:
        raise _Invalid(f"not a valid regular expression: groups nested more than "
                       f"{MAX_PATTERN_NESTING} deep (got {_show(text)})")
    try:
        re.compile(text)
    except (re.error, OverflowError, RecursionError, ValueError) as error:
        raise _Invalid(f"not a valid regular expression: {error} (got {_show(text)})") from None
    return text


def _local_backend(node: _Node) -> LocalBackend | None:
    command = node.require("command", node.report.local_text(_command))
    env = node.get("env", _environment_map, {})
    cwd = node.get("cwd", _path, None)
    ready = node.get("ready_pattern", node.report.local_text(_pattern), None)
    stop_timeout = node.get("stop_timeout", _duration, 30.0)
    node.at_least("stop_timeout", stop_timeout, 0, strict=True)
    node.no_longer("stop_timeout", stop_timeout, 3600, "1h")
    pass_env = node.get("pass_env", _names, ())
    node.check_unknown()
    if command is None or node.error_count:
        return None
    return LocalBackend(command=command, env=env, cwd=cwd, ready_pattern=ready,
                        stop_timeout=stop_timeout, pass_env=pass_env)


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, str) and _VARIABLE.fullmatch(v) for v in value):
        raise _Invalid(f"must be a list of environment variable names (got {_show(value)})")
    return tuple(value)


def _rule(node: _Node, index: int, service_selector: Selector) -> RuleConfig | None:
    kind = node.require("type", _choice(*RULE_KINDS))
    name = node.get("name", _string, f"{kind or 'rule'}-{index}")
    query = node.query("query", required=True)
    # The rule's own match_labels replace the service's; {} reads every series.
    selector = node.get("match_labels", _selector, service_selector)
    aggregate = node.get("aggregate", _choice("sum", "max"), None)
    on_empty = node.get("on_empty", _choice("hold", "zero"), "hold")
    rule: PerWorker | Drain | Threshold | Expression | None = None
    extra: dict[str, Any] = {}
    if kind == "per_worker":
        target = node.require("target", _number)
        node.at_least("target", target, 0, strict=True)
        if target is not None and target > 0:
            node.at_least("target", target, 1e-6)
        rule = PerWorker(target) if target is not None and not node.error_count else None
    elif kind == "drain":
        rule, extra = _drain(node)
    elif kind == "threshold":
        rule = _threshold(node)
    elif kind == "expression":
        rule = Expression()
    if kind is not None:  # without a type, which keys belong is unknown
        node.check_unknown()
    if rule is None or query is None or kind is None:
        return None
    return RuleConfig(name=name, kind=kind, query=query, rule=rule,  # type: ignore[arg-type]
                      aggregate=aggregate, on_empty=on_empty,  # type: ignore[arg-type]
                      match_labels=selector, **extra)


def _drain(node: _Node) -> tuple[Drain | None, dict[str, Any]]:
    within = node.require("drain_within", _duration)
    node.at_least("drain_within", within, 0, strict=True)
    startup = node.get("startup_delay", _duration, 0.0)
    node.at_least("startup_delay", startup, 0)
    if within is not None and startup is not None and startup >= within:
        node.error("startup_delay", f"must be shorter than drain_within ({within:g}s) "
                                    f"(got {startup:g}s)")
    throughput = node.get("throughput", _rate, None)
    node.at_least("throughput", throughput, 0, strict=True)
    if throughput is not None and throughput > 0:
        node.at_least("throughput", throughput, 1e-6)  # tasks/s: 0.0036/h
        node.at_most("throughput", throughput, 1e6)
    throughput_query = node.query("throughput_query")
    if (throughput is None) == (throughput_query is None) and not node.has_error("throughput") \
            and not node.has_error("throughput_query"):
        node.error("throughput", "set exactly one of throughput and throughput_query")
    arrival_query = node.query("arrival_query")
    if within is None or node.error_count:
        return None, {}
    return Drain(within, startup), {"throughput": throughput, "throughput_query":
                                    throughput_query, "arrival_query": arrival_query}


def _threshold(node: _Node) -> Threshold | None:
    above = node.get("above", _number, None)
    below = node.get("below", _number, None)
    if above is None and below is None:
        node.error("above", "set above, below or both")
    if above is not None and below is not None and below >= above:
        node.error("below", f"must be lower than above ({above:g}) (got {below:g})")
    step = node.get("step", _integer, None)
    factor = node.get("factor", _number, None)
    if step is not None and factor is not None:
        node.error("factor", "set step or factor, not both")
    node.at_least("step", step, 1)
    node.at_most("step", step, ECS_MAX_TASKS)
    node.at_least("factor", factor, 1, strict=True)
    node.at_most("factor", factor, 100)
    if node.error_count:
        return None
    return Threshold(above, below, step if step is not None else 1, factor)


def _behavior(node: _Node | None) -> Behavior | None:
    if node is None:
        return Behavior(default_scale_up(), default_scale_down())
    tolerance = node.get("tolerance", _number, 0.1)
    node.at_least("tolerance", tolerance, 0)
    node.at_most("tolerance", tolerance, 1)
    up = _direction(node.child("scale_up"), default_scale_up())
    down = _direction(node.child("scale_down"), default_scale_down())
    node.check_unknown()
    if up is None or down is None or node.error_count:
        return None
    return Behavior(up, down, tolerance)


def _direction(node: _Node | None, default: Direction) -> Direction | None:
    if node is None:
        return default
    window = node.get("stabilization_window", _duration, default.stabilization_window)
    node.at_least("stabilization_window", window, 0)
    node.no_longer("stabilization_window", window, DAY, "24h")
    select = node.get("select", _choice("max", "min", "disabled"), default.select)
    policies: list[Policy] = []
    ok = True
    if "policies" in node.data:
        for p in node.items("policies"):
            kind = p.require("type", _choice("workers", "percent"))
            value = p.require("value", _number)
            p.at_least("value", value, 0, strict=True)
            # More than a service can have, or a thousandfold in one period: no limit.
            p.at_most("value", value, ECS_MAX_TASKS if kind == "workers" else 100_000)
            period = p.require("period", _duration)
            p.at_least("period", period, 0, strict=True)
            p.no_longer("period", period, DAY, "24h")
            p.check_unknown()
            if kind is None or value is None or period is None or p.error_count:
                ok = False
                continue
            policies.append(Policy(kind, value, period))  # type: ignore[arg-type]
    else:
        policies = list(default.policies)
    node.check_unknown()
    if not ok or node.error_count:
        return None
    return Direction(window, tuple(policies), select)  # type: ignore[arg-type]
