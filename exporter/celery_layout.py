"""Where kombu's Redis transport keeps a Celery queue's data.

Mirrors kombu.transport.redis: a queue is a list named after it, priority N
(after rounding down to a step) goes to `<queue><sep><N>`, bindings live in
sets `_kombu.binding.<exchange>` whose members are
`<routing_key><sep><pattern><sep><queue>`, and delivered-unacked messages in the
hash `unacked`. `global_keyprefix` prefixes every key but not the names
inside binding members. Fanout exchanges (Celery's events and remote-control
broadcasts) are pub/sub channels named by `fanout_prefix` and
`fanout_patterns`: the exporter's receiver and remote control must use the
app's, or they hear nothing and are not heard.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
DEFAULT_SEP = "\x06\x16"
BINDING_PREFIX = "_kombu.binding."

# Celery's own plumbing: event and remote-control exchanges, not task queues.
_INTERNAL_EXCHANGES = frozenset({"celeryev", "celery.pidbox", "reply.celery.pidbox"})


@dataclass(frozen=True)
class CeleryRedisLayout:
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    sep: str = DEFAULT_SEP
    global_keyprefix: str = ""
    unacked_key: str = "unacked"
    # kombu's: True is its default prefix ("/{db}."), a string another, False none.
    fanout_prefix: bool | str = True
    fanout_patterns: bool = True

    def sublist_keys(self, queue: str) -> tuple[str, ...]:
        """Every list that holds the queue's messages, as kombu's `_size` counts them."""
        keys: list[str] = []
        for step in self.priority_steps:
            key = f"{self.global_keyprefix}{queue}{self.sep}{step}" if step else (
                f"{self.global_keyprefix}{queue}"
            )
            if key not in keys:
                keys.append(key)
        return tuple(keys)

    @property
    def binding_scan_pattern(self) -> str:
        return _glob_escape(self.global_keyprefix + BINDING_PREFIX) + "*"

    def binding_key(self, exchange: str) -> str:
        return f"{self.global_keyprefix}{BINDING_PREFIX}{exchange}"

    def exchange_of_binding_key(self, key: str) -> str:
        return key[len(self.global_keyprefix) + len(BINDING_PREFIX):]

    @property
    def unacked_hash(self) -> str:
        return self.global_keyprefix + self.unacked_key

    def transport_options(self) -> dict[str, object]:
        """The layout as kombu's transport options, for the exporter's own connections.

        Its event receiver and remote control write bindings into the app's
        keys (`_kombu.binding.*`): with another `sep` than the app's, workers
        cannot read them (`ValueError: not enough values to unpack`).
        """
        return {
            "priority_steps": list(self.priority_steps),
            "sep": self.sep,
            "global_keyprefix": self.global_keyprefix,
            "unacked_key": self.unacked_key,
            "fanout_prefix": self.fanout_prefix,
            "fanout_patterns": self.fanout_patterns,
        }


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True)
class Binding:
    exchange: str
    routing_key: str
    queue: str
    # kombu stores a regular expression here for a topic exchange's binding
    # (key_to_pattern: "video.#" becomes "^video\\..*?$"); empty otherwise.
    pattern: str = ""

    @property
    def is_internal(self) -> bool:
        return (
            self.exchange in _INTERNAL_EXCHANGES
            or self.queue.endswith(".pidbox")
            or self.queue.startswith("celeryev.")
        )


def parse_binding_member(exchange: str, member: str, sep: str) -> Binding | None:
    parts = member.split(sep)
    if len(parts) != 3 or not parts[2]:
        return None
    return Binding(exchange=exchange, routing_key=parts[0], queue=parts[2], pattern=parts[1])


class Routing:
    """Which queue a delivered message came from, given its exchange and routing key.

    Mirrors kombu's lookup: a binding with a pattern (topic exchange) matches
    by that regular expression, any other by equal routing key. None when the
    message cannot be placed: no binding matches, or several queues do (kombu
    delivered a copy to each, and an unacked entry does not say which it is).
    """

    def __init__(self, bindings: Iterable[Binding]) -> None:
        candidates: dict[tuple[str, str], set[str]] = {}
        self._topics: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        # Bindings whose pattern is not a regular expression: they match nothing.
        self.broken: list[Binding] = []
        for b in bindings:
            if b.pattern:
                try:
                    compiled = re.compile(b.pattern)
                except re.error:
                    self.broken.append(b)
                    continue
                self._topics.setdefault(b.exchange, []).append((compiled, b.queue))
            else:
                candidates.setdefault((b.exchange, b.routing_key), set()).add(b.queue)
        self._direct: Mapping[tuple[str, str], str] = {
            key: next(iter(queues)) for key, queues in candidates.items() if len(queues) == 1
        }
        # Thousands of unacked entries share a handful of routing keys.
        self._matched: dict[tuple[str, str], str | None] = {}

    def queue_for(self, exchange: str, routing_key: str) -> str | None:
        key = (exchange, routing_key)
        queue = self._direct.get(key)
        if queue is not None:
            return queue
        topics = self._topics.get(exchange)
        if not topics:
            # The default exchange ("") routes by queue name, as does a direct
            # exchange whose binding is unknown or ambiguous.
            return routing_key
        if key not in self._matched:
            matched = {q for pattern, q in topics if pattern.match(routing_key)}
            self._matched[key] = matched.pop() if len(matched) == 1 else None
        return self._matched[key]


TRANSPORT_OPTIONS = ("priority_steps", "sep", "global_keyprefix", "unacked_key", "fanout_prefix",
                     "fanout_patterns")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class OptionError(ValueError):
    pass


def _parse_steps(value: str) -> tuple[int, ...]:
    text = value.strip()
    try:
        raw = json.loads(text) if text.startswith("[") else [
            int(part) for part in text.split(",") if part.strip()
        ]
    except ValueError:
        raw = None
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw)
        or list(raw) != sorted(set(raw))
    ):
        raise OptionError(
            f"priority_steps: must be ascending integers >= 0 like 0,3,6,9 (got {value!r})"
        )
    return tuple(raw)


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise OptionError(f"{key}: must be true or false (got {value!r})")


def layout_from_options(options: Mapping[str, str]) -> CeleryRedisLayout:
    """Build the layout from `key=value` transport options, as Celery users write them."""
    unknown = sorted(set(options) - set(TRANSPORT_OPTIONS))
    if unknown:
        raise OptionError(
            f"{unknown[0]}: unknown transport option (supported: {', '.join(TRANSPORT_OPTIONS)})"
        )
    kwargs: dict[str, object] = {}
    if "priority_steps" in options:
        kwargs["priority_steps"] = _parse_steps(options["priority_steps"])
    if "sep" in options:
        try:
            sep = codecs.decode(options["sep"], "unicode_escape")
        except UnicodeDecodeError:
            raise OptionError(f"sep: not a valid escaped string (got {options['sep']!r})") from None
        if not sep:
            raise OptionError("sep: must not be empty")
        kwargs["sep"] = sep
    if "global_keyprefix" in options:
        kwargs["global_keyprefix"] = options["global_keyprefix"]
    if "unacked_key" in options:
        if not options["unacked_key"]:
            raise OptionError("unacked_key: must not be empty")
        kwargs["unacked_key"] = options["unacked_key"]
    if "fanout_prefix" in options:
        # As in the app's config: true, false, or the prefix itself ("/myapp.").
        prefix = options["fanout_prefix"]
        lowered = prefix.strip().lower()
        kwargs["fanout_prefix"] = (lowered in _TRUE if lowered in _TRUE + _FALSE or not prefix
                                   else prefix)
    if "fanout_patterns" in options:
        kwargs["fanout_patterns"] = _parse_bool("fanout_patterns", options["fanout_patterns"])
    return CeleryRedisLayout(**kwargs)  # type: ignore[arg-type]
