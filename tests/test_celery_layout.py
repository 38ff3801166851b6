import pytest
from kombu.transport.virtual.exchange import TopicExchange

from exporter.celery_layout import (
    Binding,
    CeleryRedisLayout,
    OptionError,
    Routing,
    layout_from_options,
    parse_binding_member,
)

SEP = "\x06\x16"


@pytest.mark.parametrize(
    ("layout", "keys"),
    [
        (CeleryRedisLayout(), ("q", f"q{SEP}3", f"q{SEP}6", f"q{SEP}9")),
        (CeleryRedisLayout(priority_steps=(0,)), ("q",)),
        (CeleryRedisLayout(priority_steps=tuple(range(10))),
         ("q", *(f"q{SEP}{n}" for n in range(1, 10)))),
        (CeleryRedisLayout(sep=":", global_keyprefix="app1:"), (
            "app1:q", "app1:q:3", "app1:q:6", "app1:q:9")),
    ],
)
def test_sublist_keys_follow_kombu(layout, keys):
    assert layout.sublist_keys("q") == keys


def test_binding_keys_and_scan_pattern_escape_glob_characters():
    layout = CeleryRedisLayout(global_keyprefix="a*[b]:")
    assert layout.binding_key("celery") == "a*[b]:_kombu.binding.celery"
    assert layout.binding_scan_pattern == r"a\*\[b\]:_kombu.binding.*"
    assert layout.exchange_of_binding_key("a*[b]:_kombu.binding.ex.1") == "ex.1"
    assert layout.unacked_hash == "a*[b]:unacked"


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (f"celery{SEP}{SEP}celery", Binding("celery", "celery", "celery")),
        (f"{SEP}{SEP}q", Binding("celery", "", "q")),
        (f"rk{SEP}^rk${SEP}q", Binding("celery", "rk", "q", "^rk$")),
        (f"rk{SEP}{SEP}", None),
        ("no-separators", None),
    ],
)
def test_parse_binding_member(member, expected):
    assert parse_binding_member("celery", member, SEP) == expected


@pytest.mark.parametrize(
    ("binding", "internal"),
    [
        (Binding("celery", "celery", "celery"), False),
        (Binding("celeryev", "#", "celeryev.1234"), True),
        (Binding("celery.pidbox", "", "w1@host.celery.pidbox"), True),
        (Binding("reply.celery.pidbox", "x", "x"), True),
    ],
)
def test_internal_bindings(binding, internal):
    assert binding.is_internal is internal


def test_routing_maps_exchange_and_key_to_queue():
    routing = Routing([
        Binding("tasks", "email.send", "emails"),
        Binding("fan", "k", "a"),
        Binding("fan", "k", "b"),
    ])
    assert routing.queue_for("tasks", "email.send") == "emails"
    assert routing.queue_for("", "emails") == "emails"  # default exchange: key is the queue
    assert routing.queue_for("fan", "k") == "k"  # ambiguous: fall back to the key
    assert routing.queue_for("unknown", "celery") == "celery"


def topic(exchange: str, binding_key: str, queue: str) -> Binding:
    """A topic binding as kombu stores it: the pattern is kombu's own regex of the key."""
    pattern = TopicExchange(channel=None).key_to_pattern(binding_key)
    return Binding(exchange, binding_key, queue, pattern)


@pytest.mark.parametrize(
    ("routing_key", "expected"),
    [
        ("video.compress", "video"),
        ("video.compress.4k", "video"),  # "#" matches any number of words
        ("audio.mp3", "audio"),
        ("audio.mp3.hq", None),  # "*" matches exactly one word: no queue
        ("image.png", None),
        ("log.video.error", None),  # matches both "*.*.error" and "log.#": ambiguous
        ("log.disk", "logs"),
    ],
)
def test_topic_bindings_match_as_kombu_does(routing_key, expected):
    routing = Routing([
        topic("media", "video.#", "video"),
        topic("media", "audio.*", "audio"),
        topic("media", "log.#", "logs"),
        topic("media", "*.*.error", "errors"),
    ])
    assert routing.queue_for("media", routing_key) == expected


def test_a_broken_topic_pattern_is_skipped():
    broken = Binding("media", "x", "broken", "^(unclosed$")
    routing = Routing([broken, topic("media", "x", "ok")])
    assert routing.queue_for("media", "x") == "ok"
    assert routing.broken == [broken]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, CeleryRedisLayout()),
        ({"priority_steps": "0,1,2,3,4,5,6,7,8,9"},
         CeleryRedisLayout(priority_steps=tuple(range(10)))),
        ({"priority_steps": "[0, 5]"}, CeleryRedisLayout(priority_steps=(0, 5))),
        ({"sep": r"\x06\x16"}, CeleryRedisLayout(sep=SEP)),
        ({"sep": ":"}, CeleryRedisLayout(sep=":")),
        ({"global_keyprefix": "p:"}, CeleryRedisLayout(global_keyprefix="p:")),
        ({"unacked_key": "acks"}, CeleryRedisLayout(unacked_key="acks")),
        ({"fanout_prefix": "/myapp.", "fanout_patterns": "False"},
         CeleryRedisLayout(fanout_prefix="/myapp.", fanout_patterns=False)),
        ({"fanout_prefix": "false"}, CeleryRedisLayout(fanout_prefix=False)),
        ({"fanout_prefix": ""}, CeleryRedisLayout(fanout_prefix=False)),
        ({"fanout_prefix": "True", "fanout_patterns": "1"}, CeleryRedisLayout()),
    ],
)
def test_layout_from_options(options, expected):
    assert layout_from_options(options) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority_steps": "a,b"},
         "priority_steps: must be ascending integers >= 0 like 0,3,6,9 (got 'a,b')"),
        ({"priority_steps": "3,1"}, "priority_steps: must be ascending"),
        ({"priority_steps": "0,0"}, "priority_steps: must be ascending"),
        ({"priority_steps": "-1,2"}, "priority_steps: must be ascending"),
        ({"priority_steps": ""}, "priority_steps: must be ascending"),
        ({"priority_steps": "[true]"}, "priority_steps: must be ascending"),
        ({"sep": ""}, "sep: must not be empty"),
        ({"unacked_key": ""}, "unacked_key: must not be empty"),
        ({"fanout_patterns": "sometimes"},
         "fanout_patterns: must be true or false (got 'sometimes')"),
        ({"visibility_timeout": "10"}, "visibility_timeout: unknown transport option (supported: "),
    ],
)
def test_layout_option_errors_name_the_key(options, message):
    with pytest.raises(OptionError) as info:
        layout_from_options(options)
    assert str(info.value).startswith(message)
