"""The scaler's YAML config, parsed and validated once into frozen objects.

Every error is collected, not just the first, each with its key path and the
bad value: `services[2].rules[0].target: must be > 0 (got -5)`. Nothing here
touches Prometheus or ECS.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

import jinja2
import jinja2.sandbox
import yaml

from exporter import metric_names
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
from scaler.prometheus import PrometheusSettings
from scaler.rules import Drain, Expression, PerWorker, Threshold

T = TypeVar("T")
RuleKind = Literal["per_worker", "drain", "threshold", "expression"]
RULE_KINDS: tuple[RuleKind, ...] = ("per_worker", "drain", "threshold", "expression")
DEFAULT_PORT = 9809
# Every exporter scraped and read its broker: an exporter that is down has no series
# (stale), one that cannot read its broker reports 0.
DEFAULT_HEALTH_QUERY = f"min({metric_names.SCRAPE_SUCCESS.name})"
# (label, value) pairs a series must carry to be read; () reads every series.
Selector = tuple[tuple[str, str], ...]


class ConfigError(ValueError):
    """Every problem found in a config, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


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


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid(f"must be a number (got {_show(value)})")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _Invalid(f"must be a number (got {_show(value)})") from None
    else:
        raise _Invalid(f"must be a number (got {_show(value)})")
    if not math.isfinite(number):
        raise _Invalid(f"must be a finite number (got {_show(value)})")
    return number


def _integer(value: Any) -> int:
    number = _number(value)
    if number != int(number):
        raise _Invalid(f"must be a whole number (got {_show(value)})")
    return int(number)


def _duration(value: Any) -> float:
    """Seconds, from a number of seconds or `500ms`, `15s`, `5m`, `1h`."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise _Invalid(f"must be a duration like 30s, 5m or 1h (got {_show(value)})")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return _number(value)
    except _Invalid:
        raise _Invalid(f"must be a duration like 30s, 5m or 1h (got {_show(value)})") from None


def _rate(value: Any) -> float:
    """Tasks per second, from a number (per second) or `2/min`, `120/h`, `0.5/s`."""
    if isinstance(value, str):
        match = _RATE.match(value)
        if match is None:
            raise _Invalid(f"must be a rate like 2/min, 0.5/s or 100/h (got {_show(value)})")
        return float(match.group(1)) / _RATE_SECONDS[match.group(2)]
    return _number(value)


def parse_duration(value: Any) -> float:
    """Seconds from `30s`, `5m`, `1h`, `500ms` or a number; ValueError names the bad value."""
    return _duration(value)


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


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _selector(value: Any) -> Selector:
    if not isinstance(value, Mapping):
        raise _Invalid(f"must map label names to values (got {_show(value)})")
    pairs = []
    for name, label_value in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise _Invalid(f"label name {_show(name)} is not a valid Prometheus label name")
        if not isinstance(label_value, str):
            # YAML has already turned 010 into 8 and 1.10 into 1.1: only a quoted value
            # is the label value as written.
            raise _Invalid(f"label {name}: value must be a quoted string "
                           f"(got {_show(label_value)})")
        pairs.append((name, label_value))
    return tuple(sorted(pairs))


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)} (got {_show(value)})")
        return value

    return check


# --------------------------------------------------------------------------- templates


def promql_string(value: Any) -> str:
    """A value made safe inside a double-quoted PromQL string literal."""
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _environment(finalize: Callable[[Any], Any] | None) -> jinja2.Environment:
    return jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, finalize=finalize,
        keep_trailing_newline=False,
    )


class _Templates:
    def __init__(self) -> None:
        self.promql = _environment(promql_string)
        self.plain = _environment(None)

    def render(self, text: str, variables: Mapping[str, Any], *, promql: bool) -> str:
        env = self.promql if promql else self.plain
        try:
            return env.from_string(text).render(**variables)
        except jinja2.UndefinedError as error:
            raise _Invalid(f"template: {error.message}") from None
        except jinja2.TemplateSyntaxError as error:
            raise _Invalid(f"template syntax error: {error.message}") from None
        except jinja2.TemplateError as error:
            raise _Invalid(f"template: {error}") from None


# --------------------------------------------------------------------------- reader


class _Node:
    """A mapping in the YAML with its key path; records errors instead of raising."""

    def __init__(self, data: Mapping[str, Any], path: str, errors: list[str]) -> None:
        self.data = data
        self.path = path
        self.errors = errors
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> None:
        entry = f"{self.key(name)}: {message}"
        if entry not in self.errors:
            self.errors.append(entry)

    def get(self, name: str, convert: Callable[[Any], T], default: T) -> T:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            return default
        try:
            return convert(self.data[name])
        except _Invalid as problem:
            self.error(name, str(problem))
            return default

    def require(self, name: str, convert: Callable[[Any], T]) -> T | None:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            self.error(name, "required")
            return None
        try:
            return convert(self.data[name])
        except _Invalid as problem:
            self.error(name, str(problem))
            return None

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
        return _Node(value, self.key(name), self.errors)

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
                self.errors.append(f"{self.key(name)}[{i}]: must be a mapping (got {_show(item)})")
                continue
            nodes.append(_Node(item, f"{self.key(name)}[{i}]", self.errors))
        return nodes

    def check_unknown(self) -> None:
        for name in self.data:
            if name not in self.used:
                self.error(str(name), "unknown key")

    def at_least(self, name: str, value: float | None, low: float, strict: bool = False) -> None:
        if value is None:
            return
        if (value <= low) if strict else (value < low):
            self.error(name, f"must be {'>' if strict else '>='} {low:g} (got {value:g})")


# --------------------------------------------------------------------------- parsing


def load_config(path: str, env: Mapping[str, str]) -> ScalerConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    return parse_config(text, env)


def parse_config(text: str, env: Mapping[str, str]) -> ScalerConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError([f"{where}{problem}"]) from None
    if not isinstance(document, Mapping):
        raise ConfigError(["the config must be a YAML mapping with prometheus and services"])
    errors: list[str] = []
    root = _Node(document, "", errors)
    prometheus = _prometheus(root.child("prometheus", required=True), env)
    interval = root.get("interval", _duration, 15.0)
    root.at_least("interval", interval, 0, strict=True)
    concurrency = root.get("concurrency", _integer, 16)
    root.at_least("concurrency", concurrency, 1)
    listen_address = root.get("listen_address", _string, "0.0.0.0")
    port = root.get("port", _integer, DEFAULT_PORT)
    if not 0 <= port <= 65535:
        root.error("port", f"must be between 0 and 65535 (got {port})")
    health = root.get("health_query", _health_query, DEFAULT_HEALTH_QUERY)
    restore = _restore(root.child("restore"))
    lease = _lease(root.child("lease"), interval)
    templates = _Templates()
    services: list[ServiceConfig] = []
    nodes = root.items("services")
    if not nodes and "services" not in root.data:
        root.error("services", "required")
    for node in nodes:
        services.extend(_services(node, templates, health))
    seen: set[str] = set()
    for service in services:
        if service.name in seen:
            errors.append(f"services: duplicate service name {service.name!r}")
        seen.add(service.name)
    root.check_unknown()
    if errors:
        raise ConfigError(errors)
    assert prometheus is not None
    return ScalerConfig(prometheus=prometheus, services=tuple(services), interval=interval,
                        concurrency=concurrency, listen_address=listen_address, port=port,
                        restore=restore or RestoreConfig(), lease=lease)


def _health_query(value: Any) -> str | None:
    """A query, or false for none."""
    if value is False:
        return None
    try:
        return _string(value)
    except _Invalid:
        raise _Invalid(f"must be a PromQL query, or false for none (got {_show(value)})") from None


_MATCHERS = re.compile(
    r'^\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
    r'(,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*)*,?\s*$')


def _matchers(value: Any) -> str:
    text = _string(value)
    if not _MATCHERS.match(text):
        raise _Invalid('must be PromQL label matchers like job="taskqueue-scaler" '
                       f"(got {_show(text)})")
    return text.strip().rstrip(",")


def _restore(node: _Node | None) -> RestoreConfig | None:
    if node is None:
        return None
    enabled = node.get("enabled", _boolean, True)
    matchers = node.get("matchers", _matchers, "")
    node.check_unknown()
    return RestoreConfig(enabled=enabled, matchers=matchers)


def _prometheus(node: _Node | None, env: Mapping[str, str]) -> PrometheusSettings | None:
    if node is None:
        return None
    url = node.require("url", _string)
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        node.error("url", f"must be an http:// or https:// URL (got {_show(url)})")
    timeout = node.get("timeout", _duration, 10.0)
    node.at_least("timeout", timeout, 0, strict=True)
    headers = node.get("headers", _headers, {})
    token_env = node.get("bearer_token_env", _string, None)
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
        if not any(e.startswith(node.path + ".") for e in node.errors):
            node.errors.append(f"{node.path}: {error}")
        return None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _env_name(value: Any) -> str:
    text = _string(value)
    if not _ENV_NAME.match(text):
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
        raise _Invalid(f"must be a redis:// or rediss:// URL (got {_show(text)})")
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
        if (fields["url"] is None) == (fields["url_env"] is None) and not any(
                e.startswith((node.key("url") + ":", node.key("url_env") + ":"))
                for e in node.errors):
            node.error("url_env", "set exactly one of url_env (a URL with a password) and url")
    elif kind == "dynamodb":
        fields["table"] = node.require("table", _string)
        fields["region"] = node.require("region", _string)
        fields["endpoint_url"] = node.get("endpoint_url", _string, None)
        fields["key_attribute"] = node.get("key_attribute", _string, DYNAMODB_KEY_ATTRIBUTE)
    if kind is not None:  # without a type, which keys belong is unknown
        node.check_unknown()
    if kind is None or any(e.startswith(node.path + ".") for e in node.errors):
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


def _services(node: _Node, templates: _Templates, health: str | None) -> list[ServiceConfig]:
    base = node.get("vars", _variables, {})
    stamps = node.get("for_each", _for_each, [{}]) if "for_each" in node.data else [{}]
    found: list[ServiceConfig] = []
    for stamp in stamps:
        variables = {**base, **stamp}
        rendered = _render_tree(node, variables, templates, stamp_label(stamp))
        service = _service(rendered, health)
        if service is not None:
            found.append(service)
    return found


def stamp_label(stamp: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in stamp.items())


_QUERY_KEYS = frozenset({"query", "throughput_query", "arrival_query", "activation_query",
                         "scale_down_guard", "health_query"})


def _render_tree(node: _Node, variables: Mapping[str, Any], templates: _Templates,
                 label: str) -> _Node:
    """The service with every string rendered: queries escaped for PromQL, the rest plain."""

    def render(value: Any, key: str, path: str, plain: bool = False) -> Any:
        if isinstance(value, str):
            if "{" not in value:
                return value
            try:
                promql = key in _QUERY_KEYS and not plain
                return templates.render(value, variables, promql=promql)
            except _Invalid as problem:
                where = f" (for_each {label})" if label else ""
                entry = f"{path}: {problem}{where}"
                if entry not in node.errors:
                    node.errors.append(entry)
                return value
        if isinstance(value, Mapping):
            # A label selector's values are compared with label values, not put in PromQL.
            inner = plain or key == "match_labels"
            return {k: render(v, str(k), f"{path}.{k}", inner) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v, key, f"{path}[{i}]", plain) for i, v in enumerate(value)]
        return value

    data = {k: v if k in ("vars", "for_each") else render(v, str(k), f"{node.path}.{k}")
            for k, v in node.data.items()}
    return _Node(data, node.path, node.errors)


def _service(node: _Node, health: str | None) -> ServiceConfig | None:
    node.get("vars", lambda v: v, None)
    node.get("for_each", lambda v: v, None)
    name = node.require("name", _string)
    backend = _backend(node.child("backend", required=True))
    low = node.require("min", _integer)
    node.at_least("min", low, 0)
    high = node.require("max", _integer)
    node.at_least("max", high, 1)
    if low is not None and high is not None and low >= 0 and high >= 1 and low > high:
        node.error("max", f"must be >= min ({low}) (got {high})")
    fallback = node.get("fallback", _integer, None)
    node.at_least("fallback", fallback, 0)
    if fallback is not None and high is not None and fallback > high:
        node.error("fallback", f"must be <= max ({high}) (got {fallback})")
    failure_threshold = node.get("failure_threshold", _integer, 3)
    node.at_least("failure_threshold", failure_threshold, 1)
    selector = node.get("match_labels", _selector, ())
    rule_nodes = node.items("rules")
    rules = tuple(r for r in (_rule(n, i, selector) for i, n in enumerate(rule_nodes)) if r)
    if node.data.get("rules") is None or node.data.get("rules") == []:
        node.error("rules", "at least one rule is required")
    activation = node.get("activation_query", _string, None)
    if activation is not None and low not in (0, None):
        node.error("activation_query", f"only applies when min is 0 (min is {low})")
    guard = node.get("scale_down_guard", _string, None)
    health = node.get("health_query", _health_query, health)
    behavior = _behavior(node.child("behavior"))
    node.check_unknown()
    # A service with errors is dropped here; parse_config reports them all.
    if None in (name, backend, low, high, behavior) or len(rules) != len(rule_nodes):
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
    cluster = node.require("cluster", _string)
    service = node.require("service", _string)
    region = node.require("region", _string)
    endpoint = node.get("endpoint_url", _string, None)
    node.check_unknown()
    if kind != "ecs" or None in (cluster, service, region):
        return None
    assert cluster is not None and service is not None and region is not None
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
    return parts


def _environment_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise _Invalid("must map variable names to string values")
    return {k: str(v) for k, v in value.items()}


def _pattern(value: Any) -> str:
    text = _string(value)
    try:
        re.compile(text)
    except re.error as error:
        raise _Invalid(f"not a valid regular expression: {error} (got {_show(text)})") from None
    return text


def _local_backend(node: _Node) -> LocalBackend | None:
    command = node.require("command", _command)
    env = node.get("env", _environment_map, {})
    cwd = node.get("cwd", _string, None)
    ready = node.get("ready_pattern", _pattern, None)
    stop_timeout = node.get("stop_timeout", _duration, 30.0)
    node.at_least("stop_timeout", stop_timeout, 0, strict=True)
    pass_env = node.get("pass_env", _names, ())
    node.check_unknown()
    if command is None or stop_timeout <= 0:
        return None
    return LocalBackend(command=command, env=env, cwd=cwd, ready_pattern=ready,
                        stop_timeout=stop_timeout, pass_env=pass_env)


_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, str) and _VARIABLE.match(v) for v in value):
        raise _Invalid(f"must be a list of environment variable names (got {_show(value)})")
    return tuple(value)


def _rule(node: _Node, index: int, service_selector: Selector) -> RuleConfig | None:
    kind = node.require("type", _choice(*RULE_KINDS))
    name = node.get("name", _string, f"{kind or 'rule'}-{index}")
    query = node.require("query", _string)
    # The rule's own match_labels replace the service's; {} reads every series.
    selector = node.get("match_labels", _selector, service_selector)
    aggregate = node.get("aggregate", _choice("sum", "max"), None)
    on_empty = node.get("on_empty", _choice("hold", "zero"), "hold")
    rule: PerWorker | Drain | Threshold | Expression | None = None
    extra: dict[str, Any] = {}
    if kind == "per_worker":
        target = node.require("target", _number)
        node.at_least("target", target, 0, strict=True)
        rule = PerWorker(target) if target is not None and target > 0 else None
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
    throughput_query = node.get("throughput_query", _string, None)
    if (throughput is None) == (throughput_query is None) and not any(
        e.startswith(node.key("throughput") + ":") for e in node.errors
    ):
        node.error("throughput", "set exactly one of throughput and throughput_query")
    arrival_query = node.get("arrival_query", _string, None)
    if within is None or startup is None or startup >= within or within <= 0:
        return None, {}
    if (throughput is None) == (throughput_query is None) or (throughput is not None and
                                                              throughput <= 0):
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
    node.at_least("factor", factor, 1, strict=True)
    if (above is None and below is None) or (above is not None and below is not None
                                             and below >= above):
        return None
    if (step is not None and (step < 1 or factor is not None)) or (
            factor is not None and factor <= 1):
        return None
    return Threshold(above, below, step if step is not None else 1, factor)


def _behavior(node: _Node | None) -> Behavior | None:
    if node is None:
        return Behavior(default_scale_up(), default_scale_down())
    tolerance = node.get("tolerance", _number, 0.1)
    node.at_least("tolerance", tolerance, 0)
    up = _direction(node.child("scale_up"), default_scale_up())
    down = _direction(node.child("scale_down"), default_scale_down())
    node.check_unknown()
    if up is None or down is None or tolerance < 0:
        return None
    return Behavior(up, down, tolerance)


def _direction(node: _Node | None, default: Direction) -> Direction | None:
    if node is None:
        return default
    window = node.get("stabilization_window", _duration, default.stabilization_window)
    node.at_least("stabilization_window", window, 0)
    select = node.get("select", _choice("max", "min", "disabled"), default.select)
    policies: list[Policy] = []
    ok = window >= 0
    if "policies" in node.data:
        for p in node.items("policies"):
            kind = p.require("type", _choice("workers", "percent"))
            value = p.require("value", _number)
            p.at_least("value", value, 0, strict=True)
            period = p.require("period", _duration)
            p.at_least("period", period, 0, strict=True)
            p.check_unknown()
            if kind is None or value is None or period is None or value <= 0 or period <= 0:
                ok = False
                continue
            policies.append(Policy(kind, value, period))  # type: ignore[arg-type]
    else:
        policies = list(default.policies)
    node.check_unknown()
    if not ok:
        return None
    return Direction(window, tuple(policies), select)  # type: ignore[arg-type]
