"""The RabbitMQ reader: URL parsing and the management API's answers as pure functions,
error messages against a mocked API, and everything else against the machine's RabbitMQ."""

from __future__ import annotations

import base64
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import amqp
import pytest
import requests
import responses
from prometheus_client.core import Metric
from responses import matchers

from exporter.collector import QueueCollector
from exporter.rabbitmq import (
    AmqpTarget,
    ManagementEndpoint,
    RabbitMQReader,
    build_rabbitmq_reader,
    is_internal_queue,
    parse_broker_url,
    parse_management_url,
    snapshots_from_management,
    vhost_of_path,
)
from exporter.snapshot import BrokerReadError, QueueSnapshot
from tests.rabbitmq import (
    AMQP_PORT,
    HOST,
    MANAGEMENT_URL,
    PASSWORD,
    TcpProxy,
    Vhost,
    require_rabbitmq,
)
from tests.services import free_port, wait_for

# Deliberately unlike anything else in a message, so that a leak cannot hide.
SECRET = "s3cret-Pa55w0rd"
# The management API samples queues every collect_statistics_interval (5 s by default).
STATS_LAG = 20.0


def q(
    name: str,
    depth: int = 0,
    *,
    unacked: int | None = 0,
    consumers: int | None = 0,
    oldest: float | None = None,
    age_known: bool = True,
) -> QueueSnapshot:
    return QueueSnapshot(
        system="celery",
        queue=name,
        depth=depth,
        oldest_enqueued_at=oldest,
        unacked=unacked,
        consumers=consumers,
        age_known=age_known,
    )


def passive(name: str, depth: int = 0, *, consumers: int = 0) -> QueueSnapshot:
    return q(name, depth, unacked=None, consumers=consumers, age_known=depth == 0)


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "vhost"),
    [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/%2f", "/"),
        ("/%2F", "/"),
        ("/foo", "foo"),
        ("/foo%2Fbar", "foo/bar"),
        ("/with%20space", "with space"),
        ("//foo", "/foo"),
    ],
)
def test_vhost_of_path_follows_kombu(path: str, vhost: str) -> None:
    assert vhost_of_path(path) == vhost


@pytest.mark.parametrize(
    ("url", "host", "port", "user", "password", "vhost", "tls", "address"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "127.0.0.1", 5672, "guest", "guest", "/",
         False, "127.0.0.1:5672"),
        ("amqp://", "localhost", 5672, "guest", "guest", "/", False, "localhost:5672"),
        ("amqp://rabbit", "rabbit", 5672, "guest", "guest", "/", False, "rabbit:5672"),
        ("pyamqp://celery@rabbit:5673/%2f", "rabbit", 5673, "celery", "guest", "/", False,
         "rabbit:5673"),
        ("amqps://app:p%40ss%3Aword@rabbit.example/prod", "rabbit.example", 5671, "app",
         "p@ss:word", "prod", True, "rabbit.example:5671"),
        ("AMQP://app:pw@[::1]:5674/a%2Fb", "::1", 5674, "app", "pw", "a/b", False,
         "[::1]:5674"),
    ],
)
def test_parse_broker_url(
    url: str, host: str, port: int, user: str, password: str, vhost: str, tls: bool,
    address: str,
) -> None:
    target = parse_broker_url(url)
    assert target == AmqpTarget(url, host, port, user, password, vhost, tls)
    assert target.address == address
    assert "password=" not in repr(target)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0",
         "invalid broker URL redis://127.0.0.1:6379/0: RabbitMQ needs amqp://, amqps:// "
         "or pyamqp://"),
        (f"amqp://app:{SECRET}@rabbit:99999/",
         "invalid broker URL amqp://app:***@rabbit:99999/: Port out of range 0-65535"),
        (f"amqp://app:{SECRET}@rabbit:port/",
         "invalid broker URL amqp://app:***@rabbit:port/: Port could not be cast to integer "
         "value as 'port'"),
    ],
)
def test_parse_broker_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_broker_url(url)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://127.0.0.1:15672", ManagementEndpoint("http://127.0.0.1:15672")),
        ("http://127.0.0.1:15672/", ManagementEndpoint("http://127.0.0.1:15672")),
        ("http://rabbit", ManagementEndpoint("http://rabbit")),
        ("HTTP://monitor@rabbit:15672", ManagementEndpoint("http://rabbit:15672", "monitor")),
        ("https://monitor:s%3Acret@rabbit:443/rabbitmq/",
         ManagementEndpoint("https://rabbit:443/rabbitmq", "monitor", "s:cret")),
        ("http://[::1]:15672", ManagementEndpoint("http://[::1]:15672")),
    ],
)
def test_parse_management_url(url: str, endpoint: ManagementEndpoint) -> None:
    assert parse_management_url(url) == endpoint


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:15672", "invalid management URL 127.0.0.1:15672: expected "
         "http://host:15672 or https://host:port"),
        (f"amqp://u:{SECRET}@rabbit:15672", "invalid management URL amqp://u:***@rabbit:15672: "
         "expected http://host:15672 or https://host:port"),
        ("http://", "invalid management URL http://: expected http://host:15672 or "
         "https://host:port"),
        (f"monitor:{SECRET}@rabbit:15672", "invalid management URL ***@rabbit:15672: "
         "expected http://host:15672 or https://host:port"),
    ],
)
def test_parse_management_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_management_url(url)
    assert str(raised.value) == message


def test_passive_declares_need_a_queue_list() -> None:
    with pytest.raises(ValueError) as raised:
        build_rabbitmq_reader(
            "amqp://", management_url=None, queues=(), discover=True, exclude=(), timeout=5
        )
    assert str(raised.value) == (
        "--queue is required for RabbitMQ without --rabbitmq-management-url"
    )


def test_passive_declares_refuse_names_amqp_cannot_carry() -> None:
    with pytest.raises(ValueError) as raised:
        build_rabbitmq_reader(
            "amqp://", management_url=None, queues=["x" * 256], discover=False, exclude=(),
            timeout=5,
        )
    assert str(raised.value) == (
        f"queue name {'x' * 40!r}... is longer than RabbitMQ's 255 bytes"
    )


# --- Mapping the management API's answer ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "internal"),
    [
        ("celeryev.6a2f0b1c", True),
        ("celery@worker-1.celery.pidbox", True),
        ("0b9c4e2a.reply.celery.pidbox", True),
        ("taskqueue-exporter.5d1c9a7e", True),
        ("amq.gen-JzTY20BRgKO-HjmUJj0wLg", True),
        ("celery", False),
        ("celeryev", False),
        ("my.pidbox", False),
        ("reports.celeryev.x", False),
    ],
)
def test_is_internal_queue(name: str, internal: bool) -> None:
    assert is_internal_queue(name) is internal


def row(name: str, ready: object, unacked: object = 0, consumers: object = 0,
        head: object = None) -> dict[str, object]:
    return {
        "name": name,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
        "head_message_timestamp": head,
    }


@pytest.mark.parametrize(
    ("rows", "explicit", "discover", "exclude", "expected"),
    [
        pytest.param(
            [row("celery", 3, 2, 4, 1_700_000_000)], (), True, (),
            [q("celery", 3, unacked=2, consumers=4, oldest=1_700_000_000.0)],
            id="timestamped-head",
        ),
        pytest.param(
            [row("celery", 3, head=None)], (), True, (),
            [q("celery", 3, age_known=False)],
            id="waiting-without-timestamp-age-unknown",
        ),
        pytest.param(
            [row("celery", 3, head="")], (), True, (),
            [q("celery", 3, age_known=False)],
            id="empty-string-timestamp-is-none",
        ),
        pytest.param(
            # RabbitMQ's head includes delivered, unacked messages; nothing waits though.
            [row("celery", 0, 5, 1, 1_700_000_000)], (), True, (),
            [q("celery", 0, unacked=5, consumers=1)],
            id="nothing-ready-age-zero",
        ),
        pytest.param(
            [{"name": "fresh"}, row("nulls", None, None, None, None)], (), True, (),
            [q("fresh"), q("nulls")],
            id="stats-missing-after-declare-count-as-zero",
        ),
        pytest.param(
            [row("celery", 1, head=1_700_000_000), row("celeryev.1f2e", 9),
             row("celery@w1.celery.pidbox", 9), row("9c1d.reply.celery.pidbox", 9)],
            (), True, (),
            [q("celery", 1, oldest=1_700_000_000.0)],
            id="celery-internal-queues-left-out",
        ),
        pytest.param(
            [row("a", 1, head=5), row("scratch.tmp", 1), row("test-1", 1), row("test-10", 1)],
            (), True, ("*.tmp", "test-?"),
            [q("a", 1, oldest=5.0), q("test-10", 1, age_known=False)],
            id="exclude-globs",
        ),
        pytest.param(
            [row("b", 2, head=7), row("celeryev.1f2e", 1), row("scratch.tmp", 1)],
            ("missing", "celeryev.1f2e", "scratch.tmp", "missing"), True, ("*.tmp",),
            [q("b", 2, oldest=7.0), q("celeryev.1f2e", 1, age_known=False), q("missing"),
             q("scratch.tmp", 1, age_known=False)],
            id="explicit-queues-always-exported",
        ),
        pytest.param(
            [row("b", 2, head=7), row("c", 1, head=8)], ("c", "missing"), False, (),
            [q("c", 1, oldest=8.0), q("missing")],
            id="no-discovery-only-explicit",
        ),
        pytest.param([], ("x",), True, (), [q("x")], id="empty-vhost"),
    ],
)
def test_snapshots_from_management(
    rows: list[dict[str, object]],
    explicit: tuple[str, ...],
    discover: bool,
    exclude: tuple[str, ...],
    expected: list[QueueSnapshot],
) -> None:
    got = snapshots_from_management(rows, explicit=explicit, discover=discover, exclude=exclude)
    assert list(got) == expected


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"error": "x"}, "expected a list of queues, got dict"),
        ([1], "expected queue objects with a name, got '1'"),
        ([{"name": 3}], "expected queue objects with a name, got \"{'name': 3}\""),
        ([row("a", "7")], "queue 'a': messages_ready is '7', not a count"),
        ([row("a", 1, consumers=-1)], "queue 'a': consumers is -1, not a count"),
    ],
)
def test_snapshots_from_management_refuses_garbage(rows: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        snapshots_from_management(rows, explicit=(), discover=True, exclude=())
    assert str(raised.value) == message


# --- The management API's errors, mocked -------------------------------------------------

MOCK_BASE = "http://rabbit:15672"
MOCK_QUEUES = f"{MOCK_BASE}/api/queues/prod"


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def mocked_reader(management_url: str = MOCK_BASE, vhost: str = "prod") -> RabbitMQReader:
    return build_rabbitmq_reader(
        f"amqp://guest:{SECRET}@rabbit:5672/{vhost}",
        management_url=management_url,
        queues=["missing"],
        discover=True,
        exclude=(),
        timeout=2,
        session=requests.Session(),
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_management_request_uses_columns_timeout_and_broker_credentials(
    mocked: responses.RequestsMock,
) -> None:
    mocked.get(
        f"{MOCK_BASE}/api/queues/%2F",
        match=[
            matchers.query_param_matcher({"columns": (
                "name,messages_ready,messages_unacknowledged,consumers,head_message_timestamp"
            )}),
            matchers.header_matcher({"Authorization": basic("guest", SECRET)}),
            matchers.request_kwargs_matcher({"timeout": 2}),
        ],
        json=[row("celery", 4, 1, 2, 1_700_000_000)],
    )
    reader = mocked_reader(vhost="")
    assert reader.read(1_700_000_060.0).queues == (
        q("celery", 4, unacked=1, consumers=2, oldest=1_700_000_000.0),
        q("missing"),
    )


def test_management_url_credentials_win(mocked: responses.RequestsMock) -> None:
    mocked.get(
        f"{MOCK_BASE}/api/queues/prod",
        match=[matchers.header_matcher({"Authorization": basic("monitor", "m:n")})],
        json=[],
    )
    reader = mocked_reader(management_url="http://monitor:m%3An@rabbit:15672")
    assert reader.read(0.0).queues == (q("missing"),)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"error": "not_authorized", "reason": "Login failed"},
         f"RabbitMQ management API at {MOCK_BASE}: 401 Unauthorized (check the user and "
         "password)"),
        (401, {"error": "not_authorised", "reason": "Not management user"},
         f"RabbitMQ management API at {MOCK_BASE}: 401 Unauthorized: user 'guest' may not use "
         "the management API (give it the monitoring tag)"),
        (404, {"error": "Object Not Found", "reason": "Not Found"},
         "vhost 'prod' does not exist (RabbitMQ management API answered 404)"),
        (500, {"error": "internal_server_error", "reason": "badarg"},
         f"RabbitMQ management API at {MOCK_BASE}: 500 Internal Server Error: badarg"),
        (502, "<html>Bad Gateway</html>",
         f"RabbitMQ management API at {MOCK_BASE}: 502 Bad Gateway"),
        (503, {"error": "x", "reason": f"echoing {SECRET} back"},
         f"RabbitMQ management API at {MOCK_BASE}: 503 Service Unavailable: echoing *** back"),
        (200, "<html>RabbitMQ Management</html>",
         f"RabbitMQ management API at {MOCK_BASE}: the answer to /api/queues/prod is not JSON "
         "(is this the management port?)"),
        (200, {"error": "x"},
         f"RabbitMQ management API at {MOCK_BASE}: unexpected answer to /api/queues/prod: "
         "expected a list of queues, got dict"),
    ],
)
def test_management_errors(
    mocked: responses.RequestsMock, status: int, body: object, message: str
) -> None:
    if isinstance(body, str):
        mocked.get(MOCK_QUEUES, status=status, body=body, content_type="text/html")
    else:
        mocked.get(MOCK_QUEUES, status=status, json=body)
    with pytest.raises(BrokerReadError) as raised:
        mocked_reader().read(0.0)
    assert str(raised.value) == message
    assert SECRET not in str(raised.value)


def test_management_timeout(mocked: responses.RequestsMock) -> None:
    mocked.get(MOCK_QUEUES, body=requests.ConnectTimeout("timed out"))
    with pytest.raises(BrokerReadError) as raised:
        mocked_reader().read(0.0)
    assert str(raised.value) == f"RabbitMQ management API at {MOCK_BASE}: no answer within 2 s"


def test_management_recovers_after_a_failed_read(mocked: responses.RequestsMock) -> None:
    mocked.get(MOCK_QUEUES, status=500, json={"reason": "restarting"})
    mocked.get(MOCK_QUEUES, json=[row("celery", 1, head=100)])
    reader = mocked_reader()
    with pytest.raises(BrokerReadError):
        reader.read(0.0)
    assert reader.read(0.0).queues == (q("celery", 1, oldest=100.0), q("missing"))


# --- The real RabbitMQ ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbit() -> Iterator[requests.Session]:
    session = require_rabbitmq()
    yield session
    session.close()


@pytest.fixture
def make_vhost(rabbit: requests.Session) -> Iterator[Callable[..., Vhost]]:
    made: list[Vhost] = []

    def make(*, permitted: bool = True) -> Vhost:
        vhost = Vhost(rabbit)
        made.append(vhost)
        return vhost.create(permitted=permitted)

    yield make
    for vhost in made:
        vhost.delete()


@dataclass
class Loaded:
    vhost: Vhost
    t0: int
    worked_at: int


@pytest.fixture(scope="module")
def loaded(rabbit: requests.Session) -> Iterator[Loaded]:
    """One vhost with queues in every state; read-only for the tests that use it."""
    vhost = Vhost(rabbit).create()
    # AMQP timestamps are whole seconds; py-amqp sends the property as an int.
    t0 = int(time.time()) - 3600
    worked_at = t0 + 100
    try:
        with vhost.connection() as connection:
            channel = connection.channel()

            def publish(queue: str, *timestamps: int | None) -> None:
                channel.queue_declare(queue, auto_delete=False)
                for stamp in timestamps:
                    properties = {} if stamp is None else {"timestamp": stamp}
                    channel.basic_publish(amqp.Message(b"{}", **properties), "", queue)

            publish("timed", t0, t0 + 10, t0 + 20)
            publish("untimed", None, None)
            publish("mixed", None, t0)
            publish("empty")
            # The same stamp on all: RabbitMQ's head timestamp counts unacked
            # messages too, and this test is about the counts.
            publish("worked", worked_at, worked_at, worked_at, worked_at)
            for internal in ("celeryev.6a2f", "celery@w1.celery.pidbox",
                             "0b9c.reply.celery.pidbox", "scratch.tmp"):
                publish(internal, t0)
            consumer = connection.channel()
            consumer.basic_qos(0, 2, False)
            held: list[amqp.Message] = []
            consumer.basic_consume("worked", callback=held.append, no_ack=False)

            def holds_two() -> bool:
                if len(held) < 2:
                    connection.drain_events(timeout=0.2)
                return len(held) == 2

            wait_for(holds_two, what="the consumer to hold 2 messages")
            yield Loaded(vhost, t0, worked_at)
    finally:
        vhost.delete()


def poll(read: Callable[[], tuple[QueueSnapshot, ...]], expected: list[QueueSnapshot],
         timeout: float = STATS_LAG) -> None:
    """Read until the snapshot is `expected`: the management API's figures lag."""
    last: list[tuple[QueueSnapshot, ...]] = []

    def matches() -> bool:
        last[:] = [read()]
        return list(last[0]) == expected

    try:
        wait_for(matches, timeout=timeout, interval=0.2, what="the expected queues")
    except AssertionError:
        assert (list(last[0]) if last else None) == expected


def management_reader(
    vhost: Vhost, *, queues: tuple[str, ...] = (), discover: bool = True,
    exclude: tuple[str, ...] = (), management_url: str = MANAGEMENT_URL,
    password: str = PASSWORD,
) -> RabbitMQReader:
    return build_rabbitmq_reader(
        vhost.broker_url(password=password),
        management_url=management_url,
        queues=queues,
        discover=discover,
        exclude=exclude,
        timeout=5,
    )


def passive_reader(
    vhost: Vhost, queues: tuple[str, ...], *, port: int = AMQP_PORT, password: str = PASSWORD
) -> RabbitMQReader:
    return build_rabbitmq_reader(
        vhost.broker_url(port=port, password=password),
        management_url=None,
        queues=queues,
        discover=True,
        exclude=(),
        timeout=5,
    )


def reading(reader: RabbitMQReader) -> Callable[[], tuple[QueueSnapshot, ...]]:
    return lambda: reader.read(time.time()).queues


def test_management_discovers_queues_with_counts_and_head_timestamps(loaded: Loaded) -> None:
    reader = management_reader(loaded.vhost, queues=("missing",), exclude=("*.tmp",))
    poll(reading(reader), [
        q("empty"),
        q("missing"),
        # The head has no timestamp, so the age is unknown although a later message has one.
        q("mixed", 2, age_known=False),
        q("timed", 3, oldest=float(loaded.t0)),
        q("untimed", 2, age_known=False),
        q("worked", 2, unacked=2, consumers=1, oldest=float(loaded.worked_at)),
    ])
    reader.close()


def test_management_without_discovery_reads_the_explicit_queues(loaded: Loaded) -> None:
    reader = management_reader(
        loaded.vhost, queues=("timed", "celeryev.6a2f", "scratch.tmp", "missing"),
        discover=False, exclude=("*.tmp",),
    )
    poll(reading(reader), [
        q("celeryev.6a2f", 1, oldest=float(loaded.t0)),
        q("missing"),
        q("scratch.tmp", 1, oldest=float(loaded.t0)),
        q("timed", 3, oldest=float(loaded.t0)),
    ])
    reader.close()


def test_passive_declares_read_depth_and_consumers(loaded: Loaded) -> None:
    # "missing" sits between existing queues: its 404 closes the channel, and
    # the queues after it must still be read.
    reader = passive_reader(
        loaded.vhost, ("timed", "missing", "untimed", "worked", "empty", "mixed")
    )
    expected = (
        passive("empty"),
        passive("missing"),
        passive("mixed", 2),
        passive("timed", 3),
        passive("untimed", 2),
        passive("worked", 2, consumers=1),
    )
    # Passive declares are exact at once, and the connection serves the next scrape too.
    assert reader.read(time.time()).queues == expected
    assert reader.read(time.time()).queues == expected
    reader.close()


def test_management_wrong_password(make_vhost: Callable[..., Vhost]) -> None:
    reader = management_reader(make_vhost(), password=SECRET)
    with pytest.raises(BrokerReadError) as raised:
        reader.read(time.time())
    assert str(raised.value) == (
        f"RabbitMQ management API at {MANAGEMENT_URL}: 401 Unauthorized "
        "(check the user and password)"
    )


def test_amqp_wrong_password(make_vhost: Callable[..., Vhost]) -> None:
    vhost = make_vhost()
    reader = passive_reader(vhost, ("celery",), password=SECRET)
    with pytest.raises(BrokerReadError) as raised:
        reader.read(time.time())
    assert str(raised.value) == (
        f"RabbitMQ at amqp://guest:***@{HOST}:{AMQP_PORT}/{vhost.name}: login refused for "
        "user 'guest' (check the user and password)"
    )


def test_missing_vhost(rabbit: requests.Session) -> None:
    vhost = Vhost(rabbit, name=f"taskqueue-test-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(BrokerReadError) as raised:
        management_reader(vhost).read(time.time())
    assert str(raised.value) == (
        f"vhost '{vhost.name}' does not exist (RabbitMQ management API answered 404)"
    )
    with pytest.raises(BrokerReadError) as raised:
        passive_reader(vhost, ("celery",)).read(time.time())
    assert str(raised.value) == (
        f"vhost '{vhost.name}' does not exist "
        f"(RabbitMQ at amqp://guest:***@{HOST}:{AMQP_PORT}/{vhost.name} answered NOT_ALLOWED)"
    )


def test_vhost_without_permissions(make_vhost: Callable[..., Vhost]) -> None:
    vhost = make_vhost(permitted=False)
    with pytest.raises(BrokerReadError) as raised:
        passive_reader(vhost, ("celery",)).read(time.time())
    assert str(raised.value) == (
        f"access to vhost '{vhost.name}' refused for user 'guest' "
        f"(RabbitMQ at amqp://guest:***@{HOST}:{AMQP_PORT}/{vhost.name} answered NOT_ALLOWED)"
    )


def test_closed_port() -> None:
    port = free_port()
    broker = f"amqp://guest:{SECRET}@127.0.0.1:{port}/v"
    with pytest.raises(BrokerReadError) as raised:
        build_rabbitmq_reader(
            broker, management_url=None, queues=["celery"], discover=True, exclude=(),
            timeout=5,
        ).read(time.time())
    assert str(raised.value) == (
        f"cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:{port}/v: "
        "[Errno 111] Connection refused"
    )
    management = f"http://127.0.0.1:{port}"
    with pytest.raises(BrokerReadError) as raised:
        build_rabbitmq_reader(
            broker, management_url=management, queues=(), discover=True, exclude=(), timeout=5
        ).read(time.time())
    assert str(raised.value) == (
        f"cannot connect to the RabbitMQ management API at {management}: "
        "[Errno 111] Connection refused"
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes connections and never answers, like a hung broker."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("api", [False, True], ids=["amqp", "management"])
def test_silent_broker_times_out(silent_port: int, api: bool) -> None:
    management = f"http://127.0.0.1:{silent_port}" if api else None
    reader = build_rabbitmq_reader(
        f"amqp://guest:{SECRET}@127.0.0.1:{silent_port}/", management_url=management,
        queues=["celery"], discover=True, exclude=(), timeout=0.3,
    )
    started = time.monotonic()
    with pytest.raises(BrokerReadError) as raised:
        reader.read(time.time())
    assert time.monotonic() - started < 5  # the 0.3 s timeout, not a default of minutes
    assert str(raised.value) == (
        f"RabbitMQ management API at {management}: no answer within 0.3 s" if api
        else f"cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:{silent_port}/: timed out"
    )


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy((HOST, AMQP_PORT))
    yield proxy
    proxy.stop()


def test_passive_reader_replaces_a_dropped_connection(
    loaded: Loaded, proxy: TcpProxy
) -> None:
    reader = passive_reader(loaded.vhost, ("timed", "worked"), port=proxy.port)
    expected = (passive("timed", 3), passive("worked", 2, consumers=1))
    # The broker is unreachable at first, then comes up: no restart needed.
    with pytest.raises(BrokerReadError) as raised:
        reader.read(time.time())
    assert str(raised.value) == (
        f"cannot connect to RabbitMQ at amqp://guest:***@{HOST}:{proxy.port}/"
        f"{loaded.vhost.name}: [Errno 111] Connection refused"
    )
    proxy.start()
    assert reader.read(time.time()).queues == expected
    assert proxy.accepted == 1

    # A connection that died between scrapes is replaced within the read.
    proxy.drop_connections()
    assert reader.read(time.time()).queues == expected
    assert proxy.accepted == 2

    # The broker goes away: the read fails, and the next one after it is back succeeds.
    proxy.stop()
    with pytest.raises(BrokerReadError) as raised:
        reader.read(time.time())
    assert str(raised.value).endswith(": [Errno 111] Connection refused")
    proxy.start()
    assert reader.read(time.time()).queues == expected
    assert proxy.accepted == 3

    reader.close()
    assert reader.read(time.time()).queues == expected
    assert proxy.accepted == 4
    reader.close()


def test_management_reader_recovers_when_the_api_comes_back(loaded: Loaded) -> None:
    api = TcpProxy(("127.0.0.1", int(MANAGEMENT_URL.rsplit(":", 1)[1])))
    management = f"http://127.0.0.1:{api.port}"
    reader = management_reader(loaded.vhost, queues=("timed",), discover=False,
                               management_url=management)
    try:
        with pytest.raises(BrokerReadError) as raised:
            reader.read(time.time())
        assert str(raised.value) == (
            f"cannot connect to the RabbitMQ management API at {management}: "
            "[Errno 111] Connection refused"
        )
        api.start()
        poll(reading(reader), [q("timed", 3, oldest=float(loaded.t0))])
    finally:
        reader.close()
        api.stop()


def samples(metrics: Iterator[Metric]) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.values()))): s.value for m in metrics for s in m.samples
    }


def test_collector_reports_a_failed_read_and_recovers(loaded: Loaded, proxy: TcpProxy) -> None:
    reader = passive_reader(loaded.vhost, ("timed",), port=proxy.port)
    collector = QueueCollector([reader])
    failed = samples(collector.collect())
    assert failed[("taskqueue_exporter_scrape_success", ())] == 0
    assert not any(name == "taskqueue_queue_depth" for name, _ in failed)
    proxy.start()
    ok = samples(collector.collect())
    assert ok[("taskqueue_exporter_scrape_success", ())] == 1
    assert ok[("taskqueue_queue_depth", ("celery", "timed"))] == 3
    reader.close()
