import pytest

from exporter.celery_layout import CeleryRedisLayout
from exporter.config import ConfigError, ExporterConfig, parse_config

URL = "redis://127.0.0.1:6379/0"


def test_defaults():
    assert parse_config(["--broker-url", URL], {}) == ExporterConfig(
        broker_url=URL, celery_queues=(), rq_queues=(), layout=CeleryRedisLayout()
    )


def test_every_flag():
    config = parse_config(
        [
            "--broker-url", URL, "--queue", "default", "--queue", "rq:high,emails",
            "--queue", "celery:rq-like", "--listen-address", "127.0.0.1", "--port", "9999",
            "--broker-transport-option", "priority_steps=0,5",
            "--broker-transport-option", "global_keyprefix=x:",
            "--exclude-queue", "tmp.*", "--no-discovery", "--discovery-interval", "0",
            "--max-message-bytes", "1000", "--broker-timeout", "2.5", "--log-level", "debug",
        ],
        {},
    )
    assert config == ExporterConfig(
        broker_url=URL,
        celery_queues=("default", "emails", "rq-like"),
        rq_queues=("high",),
        layout=CeleryRedisLayout(priority_steps=(0, 5), global_keyprefix="x:"),
        listen_address="127.0.0.1",
        port=9999,
        discover=False,
        discovery_interval=0.0,
        exclude_queues=("tmp.*",),
        max_message_bytes=1000,
        broker_timeout=2.5,
        log_level="debug",
    )


def test_environment_fills_flags_not_given():
    env = {
        "TASKQUEUE_EXPORTER_BROKER_URL": URL,
        "TASKQUEUE_EXPORTER_QUEUE": "a rq:b",
        "TASKQUEUE_EXPORTER_PORT": "9100",
        # Backslash escapes reach the option as written: no shell-style unquoting.
        "TASKQUEUE_EXPORTER_BROKER_TRANSPORT_OPTION": "priority_steps=0,3 sep=\\x06\\x16",
        "TASKQUEUE_EXPORTER_NO_DISCOVERY": "true",
        "TASKQUEUE_EXPORTER_LOG_LEVEL": "warning",
    }
    config = parse_config(["--port", "9200"], env)
    assert config.broker_url == URL
    assert (config.celery_queues, config.rq_queues) == (("a",), ("b",))
    assert config.port == 9200  # the flag wins over the variable
    assert config.layout == CeleryRedisLayout(priority_steps=(0, 3), sep="\x06\x16")
    assert config.discover is False
    assert config.log_level == "warning"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--broker-url is required (or TASKQUEUE_EXPORTER_BROKER_URL)"),
        (["--broker-url", "amqp://guest@localhost//"], {},
         "--queue is required for RabbitMQ without --rabbitmq-management-url"),
        (["--broker-url", "amqp://h//", "--queue", "rq:jobs"], {},
         "--queue rq:jobs: RQ queues need a Redis broker"),
        (["--broker-url", URL, "--rabbitmq-management-url", "http://h:15672"], {},
         "--rabbitmq-management-url: needs an amqp:// --broker-url"),
        (["--broker-url", "amqp://h//", "--rabbitmq-management-url", "h:15672"], {},
         "--rabbitmq-management-url: scheme must be one of http, https"),
        (["--broker-url", URL, "--events", "--no-events"], {},
         "--events and --no-events: choose one"),
        (["--broker-url", URL, "--inspect-interval", "0"], {}, "--inspect-interval: must be > 0"),
        (["--broker-url", URL, "--max-tracked-tasks", "-5"], {},
         "--max-tracked-tasks: must be > 0"),
        (["--broker-url", URL, "--wait-buckets", "1,x"], {},
         "--wait-buckets: expected numbers separated by commas (got '1,x')"),
        (["--broker-url", URL, "--runtime-buckets", "5,1"], {},
         "--runtime-buckets: bounds must increase (got '5,1')"),
        (["--broker-url", URL, "--wait-buckets", "0,1"], {},
         "--wait-buckets: bounds must be finite and > 0"),
        (["--broker-url", "localhost:6379"], {}, "--broker-url: scheme must be one of"),
        (["--broker-url", "redis://h:notaport/0"], {}, "--broker-url: not a valid URL"),
        (["--broker-url", URL, "--port", "70000"], {}, "--port: must be between 1 and 65535"),
        (["--broker-url", URL, "--port", "x"], {}, "argument --port: invalid int value: 'x'"),
        (["--broker-url", URL, "--discovery-interval", "-1"], {},
         "--discovery-interval: must be >= 0"),
        (["--broker-url", URL, "--max-message-bytes", "0"], {}, "--max-message-bytes: must be > 0"),
        (["--broker-url", URL, "--broker-timeout", "0"], {}, "--broker-timeout: must be > 0"),
        (["--broker-url", URL, "--no-discovery"], {}, "--no-discovery needs at least one --queue"),
        (["--broker-url", URL, "--queue", "rq:"], {}, "--queue: empty queue name in 'rq:'"),
        (["--broker-url", URL, "--broker-transport-option", "sep"], {},
         "--broker-transport-option: expected KEY=VALUE (got 'sep')"),
        (["--broker-url", URL, "--broker-transport-option", "priority_steps=x"], {},
         "--broker-transport-option priority_steps: must be ascending"),
        (["--broker-url", URL], {"TASKQUEUE_EXPORTER_PORT": "abc"},
         "TASKQUEUE_EXPORTER_PORT: invalid value 'abc'"),
        (["--broker-url", URL], {"TASKQUEUE_EXPORTER_NO_DISCOVERY": "maybe"},
         "TASKQUEUE_EXPORTER_NO_DISCOVERY: must be true or false (got 'maybe')"),
        (["--broker-url", URL], {"TASKQUEUE_EXPORTER_LOG_LEVEL": "loud"},
         "TASKQUEUE_EXPORTER_LOG_LEVEL: must be one of"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_errors_name_the_flag_and_value(argv, env, message):
    with pytest.raises(ConfigError) as info:
        parse_config(argv, env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_event_options():
    config = parse_config(
        ["--broker-url", URL, "--no-task-label", "--per-worker-metrics", "--inspect-interval",
         "15", "--wait-buckets", "0.1,1,10", "--max-tracked-tasks", "500"],
        {"TASKQUEUE_EXPORTER_RUNTIME_BUCKETS": "1,60"},
    )
    assert config.events is True
    assert config.task_label is False and config.per_worker_metrics is True
    assert config.inspect_interval == 15.0 and config.inspect_timeout == 1.0
    assert config.wait_buckets == (0.1, 1.0, 10.0)
    assert config.runtime_buckets == (1.0, 60.0)
    assert config.max_tracked_tasks == 500


@pytest.mark.parametrize(
    ("argv", "events"),
    [
        ([], True),
        (["--queue", "emails"], True),
        (["--queue", "rq:jobs"], False),  # RQ alone sends no Celery events
        (["--queue", "rq:jobs", "--events"], True),
        (["--no-events"], False),
    ],
)
def test_events_default_on_unless_only_rq(argv, events):
    assert parse_config(["--broker-url", URL, *argv], {}).events is events


@pytest.mark.parametrize(
    ("argv", "environ", "events"),
    [
        ([], {"EVENTS": "false"}, False),  # false means off, not "unset"
        ([], {"EVENTS": "true"}, True),
        ([], {"NO_EVENTS": "true"}, False),
        ([], {"NO_EVENTS": "false"}, True),
        ([], {"EVENTS": "true", "NO_EVENTS": "false"}, True),
        (["--queue", "rq:jobs"], {"EVENTS": "true"}, True),
        # The command line wins over the environment.
        (["--no-events"], {"EVENTS": "true"}, False),
        (["--events"], {"NO_EVENTS": "true"}, True),
    ],
)
def test_events_from_the_environment(argv, environ, events):
    environ = {f"TASKQUEUE_EXPORTER_{k}": v for k, v in environ.items()}
    assert parse_config(["--broker-url", URL, *argv], environ).events is events


def test_contradicting_event_variables_are_refused():
    environ = {"TASKQUEUE_EXPORTER_EVENTS": "true", "TASKQUEUE_EXPORTER_NO_EVENTS": "true"}
    with pytest.raises(ConfigError) as raised:
        parse_config(["--broker-url", URL], environ)
    assert str(raised.value) == (
        "TASKQUEUE_EXPORTER_EVENTS and TASKQUEUE_EXPORTER_NO_EVENTS: choose one")


def test_events_over_a_unix_socket_are_refused_or_off():
    url = "unix:///run/redis.sock?db=0"
    assert parse_config(["--broker-url", url], {}).events is False
    with pytest.raises(ConfigError, match=r"^--events: Celery events need a redis://"):
        parse_config(["--broker-url", url, "--events"], {})


def test_rabbitmq_urls():
    config = parse_config(
        ["--broker-url", "amqp://guest:guest@127.0.0.1:5672//",
         "--rabbitmq-management-url", "http://127.0.0.1:15672"], {})
    assert config.rabbitmq and config.management_url == "http://127.0.0.1:15672"
    assert config.events is True
    passive = parse_config(["--broker-url", "amqp://h/v", "--queue", "a"], {})
    assert passive.rabbitmq and passive.management_url is None
    assert not parse_config(["--broker-url", URL], {}).rabbitmq


HINT = "a password with / ? # or @ must be percent-encoded: %2F %3F %23 %40"


@pytest.mark.parametrize(
    ("flag", "url"),
    [
        ("--broker-url", "redis://:Pw9/cd-Secret@127.0.0.1:6379/0"),
        ("--broker-url", "redis://:Pw9?cd-Secret@127.0.0.1:6379/0"),
        ("--broker-url", "redis://:Pw9#cd-Secret@127.0.0.1:6379/0"),
        # The host part reads as ":1234", a port: the URL parses, with no password.
        ("--broker-url", "redis://:1234/cd-Secret@127.0.0.1:6379/0"),
        ("--broker-url", "redis://:1234#cd-Secret@127.0.0.1:6379/0"),
        ("--broker-url", "amqp://app:Pw9/cd-Secret@rabbit:5672/vhost"),
        ("--broker-url", "redis://:Pw9:cd/-Secret@127.0.0.1:6379/0"),
        ("--rabbitmq-management-url", "http://app:Pw9/cd-Secret@rabbit:15672"),
    ],
)
def test_a_password_that_breaks_the_url_is_refused_without_echoing_it(flag, url):
    argv = ["--broker-url", "amqp://rabbit//", flag, url] if flag != "--broker-url" else [
        flag, url, "--queue", "q"]
    with pytest.raises(ConfigError) as info:
        parse_config(argv, {})
    message = str(info.value)
    assert message.startswith(f"{flag}: ") and message.endswith(f"({HINT})"), message
    password = url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    for piece in (password, *password.replace("#", "/").replace("?", "/").split("/")):
        assert piece not in message.replace(HINT, ""), (piece, message)
