"""Command-line flags and TASKQUEUE_EXPORTER_* variables, parsed once into a frozen config."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from urllib.parse import urlsplit

from exporter.celery_layout import CeleryRedisLayout, OptionError, layout_from_options
from exporter.event_tracker import DEFAULT_BUCKETS, DEFAULT_MAX_TRACKED_TASKS
from exporter.messages import DEFAULT_MAX_MESSAGE_BYTES
from exporter.redaction import userinfo_spills

ENV_PREFIX = "TASKQUEUE_EXPORTER_"
REDIS_SCHEMES = ("redis", "rediss", "unix")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
DEFAULT_PORT = 9808


class ConfigError(ValueError):
    """A bad flag or variable; str(error) is a one-line message naming it."""


@dataclass(frozen=True)
class ExporterConfig:
    broker_url: str
    celery_queues: tuple[str, ...]
    rq_queues: tuple[str, ...]
    layout: CeleryRedisLayout
    listen_address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    discover: bool = True
    discovery_interval: float = 30.0
    exclude_queues: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    broker_timeout: float = 5.0
    log_level: str = "info"
    management_url: str | None = None
    events: bool = True
    task_label: bool = True
    per_worker_metrics: bool = False
    inspect_interval: float | None = None
    inspect_timeout: float = 1.0
    wait_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    runtime_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    max_tracked_tasks: int = DEFAULT_MAX_TRACKED_TASKS

    @property
    def rabbitmq(self) -> bool:
        return urlsplit(self.broker_url).scheme in AMQP_SCHEMES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="taskqueue-exporter",
        description="Prometheus exporter for Celery and RQ queues on Redis, Celery queues on "
        "RabbitMQ, and Celery task events. "
        f"Every flag can also be set as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}BROKER_URL); "
        "repeatable flags take a whitespace-separated list there.",
    )
    p.add_argument(
        "--broker-url",
        help="redis://[:password@]host:port/db (or ...?password=...) or "
        "amqp://user:password@host:port/vhost (required)",
    )
    p.add_argument(
        "--rabbitmq-management-url", metavar="URL",
        help="RabbitMQ management API, e.g. http://host:15672 (user and password default to "
        "the broker URL's): adds unacked counts, queue discovery and oldest-task age. "
        "Without it, the --queue list is read with passive declares (depth, consumers).",
    )
    p.add_argument(
        "--queue", action="append", metavar="NAME",
        help="a queue to export even before it exists; NAME is a Celery queue, rq:NAME an RQ "
        "queue (repeatable). Discovered queues are exported too.",
    )
    p.add_argument("--listen-address", help="address to serve /metrics on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help=f"port to serve /metrics on (default {DEFAULT_PORT})")
    p.add_argument(
        "--broker-transport-option", action="append", metavar="KEY=VALUE",
        help="the Celery app's broker_transport_options that place keys and channels: "
        "priority_steps (e.g. 0,3,6,9), sep (escapes allowed, e.g. \\x06\\x16), "
        "global_keyprefix, unacked_key, fanout_prefix (true, false or the prefix), "
        "fanout_patterns (true or false)",
    )
    p.add_argument(
        "--exclude-queue", action="append", metavar="GLOB",
        help="leave discovered queues matching this shell pattern out (repeatable)",
    )
    p.add_argument(
        "--no-discovery", action="store_true", default=None,
        help="export only the --queue list; do not look for queues in the broker",
    )
    p.add_argument(
        "--discovery-interval", type=float, metavar="SECONDS",
        help="how often to SCAN for new Celery queues (default 30; 0 = every scrape)",
    )
    p.add_argument(
        "--max-message-bytes", type=int,
        help=f"larger messages are not parsed for age (default {DEFAULT_MAX_MESSAGE_BYTES})",
    )
    p.add_argument("--broker-timeout", type=float, metavar="SECONDS",
                   help="socket timeout for broker reads (default 5)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="default info")
    events = p.add_argument_group("Celery events")
    events.add_argument(
        "--events", action="store_true", default=None,
        help="consume Celery events (on by default unless every --queue is an RQ queue)",
    )
    events.add_argument("--no-events", action="store_true", default=None,
                        help="do not consume Celery events")
    events.add_argument("--no-task-label", action="store_true", default=None,
                        help="leave the task label out of the event metrics")
    events.add_argument(
        "--per-worker-metrics", action="store_true", default=None,
        help="also export one series per worker (on ECS every task is a new hostname)",
    )
    events.add_argument(
        "--inspect-interval", type=float, metavar="SECONDS",
        help="poll workers' active/reserved/scheduled tasks this often (default: off)",
    )
    events.add_argument("--inspect-timeout", type=float, metavar="SECONDS",
                        help="how long an inspect broadcast waits for answers (default 1)")
    events.add_argument("--wait-buckets", metavar="S1,S2,...",
                        help="bucket bounds of taskqueue_task_wait_seconds")
    events.add_argument("--runtime-buckets", metavar="S1,S2,...",
                        help="bucket bounds of taskqueue_task_runtime_seconds")
    events.add_argument(
        "--max-tracked-tasks", type=int,
        help=f"task ids held between events (default {DEFAULT_MAX_TRACKED_TASKS}); the "
        "oldest are forgotten first",
    )
    return p


def _truthy(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: must be true or false (got {value!r})")


def _from_environment(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> None:
    """Fill every flag not given on the command line from its environment variable."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if getattr(args, action.dest) is not None:
            continue
        name = ENV_PREFIX + action.dest.upper()
        if name not in environ:
            continue
        raw = environ[name]
        if isinstance(action, argparse._StoreTrueAction):
            setattr(args, action.dest, _truthy(name, raw))
            continue
        try:
            # Whitespace only: shell-style quoting would eat the backslashes of sep=\x06\x16.
            values = raw.split() if isinstance(action, argparse._AppendAction) else [raw]
            converted = [action.type(v) if action.type else v for v in values]  # type: ignore[operator]
        except ValueError:
            raise ConfigError(f"{name}: invalid value {raw!r}") from None
        if action.choices and any(v not in action.choices for v in converted):
            raise ConfigError(f"{name}: must be one of {', '.join(action.choices)} (got {raw!r})")
        setattr(args, action.dest, converted if isinstance(action, argparse._AppendAction)
                else converted[0])


def _events_choice(args: argparse.Namespace, from_cli: set[str]) -> bool | None:
    """--events / --no-events as one choice, None if neither is set.

    The command line wins over the environment, and the variables can say
    false: EVENTS=false is off, not "unset".
    """
    def one(on: bool | None, off: bool | None, names: str) -> bool | None:
        if on is not None and off is not None and on == off:
            raise ConfigError(f"{names}: choose one")
        if on is not None:
            return on
        return None if off is None else not off

    chosen = one(args.events if "events" in from_cli else None,
                 args.no_events if "no_events" in from_cli else None,
                 "--events and --no-events")
    if chosen is not None:
        return chosen
    return one(args.events, args.no_events, f"{ENV_PREFIX}EVENTS and {ENV_PREFIX}NO_EVENTS")


def _split_queues(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    celery: list[str] = []
    rq: list[str] = []
    for name in names:
        for part in name.split(","):
            part = part.strip()
            if not part:
                continue
            if part.startswith("rq:"):
                target, part = rq, part[3:]
            else:
                target, part = celery, part.removeprefix("celery:")
            if not part:
                raise ConfigError(f"--queue: empty queue name in {name!r}")
            target.append(part)
    return tuple(dict.fromkeys(celery)), tuple(dict.fromkeys(rq))


def _transport_options(pairs: Sequence[str]) -> CeleryRedisLayout:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--broker-transport-option: expected KEY=VALUE (got {pair!r})")
        options[key.strip()] = value
    try:
        return layout_from_options(options)
    except OptionError as error:
        raise ConfigError(f"--broker-transport-option {error}") from None


# Said of every URL that does not parse: the usual cause, and never the URL's
# own text (urlsplit's errors quote the "port", which may be half a password).
_ENCODE_HINT = "a password with / ? # or @ must be percent-encoded: %2F %3F %23 %40"


def _check_url(url: str | None, flag: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(url or "")
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{flag}: not a valid URL ({_ENCODE_HINT})") from None
    if userinfo_spills(url or ""):
        raise ConfigError(f"{flag}: an '@' after the host: not a valid URL ({_ENCODE_HINT})")
    if parts.scheme not in schemes:
        raise ConfigError(
            f"{flag}: scheme must be one of {', '.join(schemes)} "
            f"(got {parts.scheme or 'none'!r})"
        )
    return url or ""


def _buckets(flag: str, raw: str | None) -> tuple[float, ...]:
    if raw is None:
        return DEFAULT_BUCKETS
    try:
        bounds = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag}: expected numbers separated by commas (got {raw!r})") from None
    if not bounds:
        raise ConfigError(f"{flag}: needs at least one bound")
    if any(b <= 0 or b != b or b == float("inf") for b in bounds):
        raise ConfigError(f"{flag}: bounds must be finite and > 0 (got {raw!r})")
    if any(a >= b for a, b in pairwise(bounds)):
        raise ConfigError(f"{flag}: bounds must increase (got {raw!r})")
    return bounds


def _positive(flag: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{flag}: must be > 0 (got {value})")


def parse_config(argv: Sequence[str], environ: Mapping[str, str]) -> ExporterConfig:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    from_cli = {dest for dest, given in vars(args).items() if given is not None}
    _from_environment(parser, args, environ)
    celery_queues, rq_queues = _split_queues(args.queue or [])
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port: must be between 1 and 65535 (got {args.port})")
    if args.discovery_interval is not None and args.discovery_interval < 0:
        raise ConfigError(f"--discovery-interval: must be >= 0 (got {args.discovery_interval})")
    if args.max_message_bytes is not None and args.max_message_bytes <= 0:
        raise ConfigError(f"--max-message-bytes: must be > 0 (got {args.max_message_bytes})")
    _positive("--broker-timeout", args.broker_timeout)
    _positive("--inspect-interval", args.inspect_interval)
    _positive("--inspect-timeout", args.inspect_timeout)
    _positive("--max-tracked-tasks", args.max_tracked_tasks)
    if not args.broker_url:
        raise ConfigError(f"--broker-url is required (or {ENV_PREFIX}BROKER_URL)")
    broker_url = _check_url(args.broker_url, "--broker-url", REDIS_SCHEMES + AMQP_SCHEMES)
    amqp = urlsplit(broker_url).scheme in AMQP_SCHEMES
    management_url = None
    if args.rabbitmq_management_url:
        if not amqp:
            raise ConfigError("--rabbitmq-management-url: needs an amqp:// --broker-url")
        management_url = _check_url(args.rabbitmq_management_url, "--rabbitmq-management-url",
                                    ("http", "https"))
    if amqp and rq_queues:
        raise ConfigError(f"--queue rq:{rq_queues[0]}: RQ queues need a Redis broker")
    if amqp and not management_url and not celery_queues:
        raise ConfigError("--queue is required for RabbitMQ without --rabbitmq-management-url "
                          "(passive declares cannot list queues)")
    chosen = _events_choice(args, from_cli)
    unix = urlsplit(broker_url).scheme == "unix"
    if chosen and unix:
        raise ConfigError("--events: Celery events need a redis:// or amqp:// --broker-url "
                          "(kombu cannot read a unix:// socket URL)")
    # By default, on: RQ sends no Celery events, so a Redis that only RQ uses needs no receiver.
    events = chosen if chosen is not None else not unix and not (rq_queues and not celery_queues)
    discover = not args.no_discovery
    if not discover and not (celery_queues or rq_queues):
        raise ConfigError("--no-discovery needs at least one --queue")
    given = {
        "listen_address": args.listen_address,
        "port": args.port,
        "discovery_interval": args.discovery_interval,
        "max_message_bytes": args.max_message_bytes,
        "broker_timeout": args.broker_timeout,
        "log_level": args.log_level,
        "inspect_timeout": args.inspect_timeout,
        "max_tracked_tasks": args.max_tracked_tasks,
    }
    return ExporterConfig(
        broker_url=broker_url,
        management_url=management_url,
        events=events,
        task_label=not args.no_task_label,
        per_worker_metrics=bool(args.per_worker_metrics),
        inspect_interval=args.inspect_interval,
        wait_buckets=_buckets("--wait-buckets", args.wait_buckets),
        runtime_buckets=_buckets("--runtime-buckets", args.runtime_buckets),
        celery_queues=celery_queues,
        rq_queues=rq_queues,
        layout=_transport_options(args.broker_transport_option or []),
        discover=discover,
        exclude_queues=tuple(args.exclude_queue or ()),
        **{k: v for k, v in given.items() if v is not None},
    )
