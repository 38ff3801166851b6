"""The scaler's lease: at most one instance holds it, renewal keeps it, and it changes hands
within the ttl when the holder stops. Against a real redis-server and DynamoDB as served by
moto's server; ttls of a second keep the waits short."""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from demo.stack import free_port
from scaler import cli as scaler_cli
from scaler.config import parse_config
from scaler.lease import (
    DynamoDbLease,
    Lease,
    LeaseConfig,
    LeaseError,
    LeaseStatus,
    RedisLease,
    build_lease,
    default_identity,
    dynamodb_client,
    safe_until,
)
from tests.aws import REGION
from tests.services import RedisServer, wait_for

TTL = 1.0
# A stand-in for the scaler's interval: the standby calls hold() this often.
INTERVAL = 0.2
# An AWS secret of a recognisable shape: it must never show in an error.
SECRET_ACCESS_KEY = "lease/test/SECRET+key+that+must+not+leak+0123456789"
ACCESS_KEY_ID = "AKIAIOSFODNN7LEASE00"

MakeLease = Callable[..., Lease]


@pytest.fixture
def lease_aws_env(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)


@dataclass
class MotoServer:
    port: int
    server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer(free_port()).start()
    yield server
    server.stop()


def create_table(client: Any, name: str, key: str = "id") -> None:
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}])


@pytest.fixture
def dynamodb(moto_server: MotoServer, lease_aws_env: None) -> tuple[Any, str]:
    """A client of moto's server and a fresh table of its own."""
    client = dynamodb_client(REGION, moto_server.url)
    table = f"lease-{uuid.uuid4().hex[:8]}"
    create_table(client, table)
    return client, table


@pytest.fixture(params=["redis", "dynamodb"])
def make_lease(request: pytest.FixtureRequest) -> MakeLease:
    """make_lease(identity, ttl=TTL): a lease of one store; all of a test share one key."""
    name = f"scaler-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        client = request.getfixturevalue("redis_client")
        return lambda identity, ttl=TTL: RedisLease(client, name, ttl, identity)
    client, table = request.getfixturevalue("dynamodb")
    return lambda identity, ttl=TTL: DynamoDbLease(client, table, name, ttl, identity)


def sleep_until(moment: float) -> None:
    """Let time pass on purpose: the passing of the ttl is what these tests are about."""
    time.sleep(max(0.0, moment - time.time()))


# --- both stores ------------------------------------------------------------------------


@pytest.mark.integration
def test_one_holds_the_other_does_not_and_sees_the_holder(make_lease: MakeLease):
    a, b = make_lease("a"), make_lease("b")
    now = time.time()
    assert a.hold(now) == LeaseStatus(held=True, holder="a", until=safe_until(now, TTL))
    assert safe_until(now, TTL) == pytest.approx(now + TTL * 2 / 3, abs=1e-6)
    assert b.hold(time.time()) == LeaseStatus(held=False, holder="a", until=None)
    # Asking again changes nothing.
    assert b.hold(time.time()) == LeaseStatus(held=False, holder="a", until=None)
    assert a.hold(time.time()).held


@pytest.mark.integration
def test_renewal_keeps_it_past_the_ttl(make_lease: MakeLease):
    a, b = make_lease("a"), make_lease("b")
    start = time.time()
    assert a.hold(start).held
    sleep_until(start + TTL * 0.6)
    renewed = time.time()
    status = a.hold(renewed)
    assert status.held and status.until == safe_until(renewed, TTL)
    # Past the first hold's ttl, the renewal still keeps it from the other instance.
    sleep_until(start + TTL * 1.3)
    assert b.hold(time.time()) == LeaseStatus(held=False, holder="a", until=None)
    assert a.hold(time.time()).held


@pytest.mark.integration
def test_release_hands_it_over_at_once_and_only_the_holder_can_release(make_lease: MakeLease):
    a, b = make_lease("a"), make_lease("b")
    assert a.hold(time.time()).held
    b.release()  # not b's: nothing happens
    assert b.hold(time.time()) == LeaseStatus(held=False, holder="a", until=None)
    a.release()
    now = time.time()
    assert b.hold(now) == LeaseStatus(held=True, holder="b", until=safe_until(now, TTL))
    assert a.hold(time.time()) == LeaseStatus(held=False, holder="b", until=None)
    a.release()  # released twice: still nothing of b's is touched
    assert b.hold(time.time()).held


@pytest.mark.integration
def test_after_the_holder_stops_renewing_the_other_takes_over_within_the_ttl(
        make_lease: MakeLease):
    a, b = make_lease("a"), make_lease("b")
    taken = time.time()
    held = a.hold(taken)
    assert held.held and held.until is not None
    # `a` dies: it never calls hold() again. `b` tries once per interval, as the loop does.
    attempts: list[tuple[float, float, LeaseStatus]] = []

    def b_acquires() -> bool:
        start = time.time()
        status = b.hold(start)
        attempts.append((start, time.time(), status))
        return status.held

    wait_for(b_acquires, timeout=TTL + INTERVAL + 2.0, interval=INTERVAL,
             what="the standby to take the lease over")
    won_start, won_end, won = attempts[-1]
    assert won == LeaseStatus(held=True, holder="b", until=safe_until(won_start, TTL))
    # Not before the store's ttl ran out, and within ttl + one interval (+ call time).
    assert won_end >= taken + TTL
    assert won_start <= taken + TTL + INTERVAL + 0.5
    # The old holder's `until` had passed before anyone else could hold it.
    assert held.until < taken + TTL <= won_end
    assert all(not s.held and s.holder == "a" for *_, s in attempts[:-1])
    assert a.hold(time.time()) == LeaseStatus(held=False, holder="b", until=None)


@pytest.mark.integration
def test_identities_default_to_host_pid_and_a_random_suffix(make_lease: MakeLease):
    a, b = make_lease(None), make_lease(None)
    host, pid, suffix = a.identity.split("/")
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and suffix
    assert a.identity != b.identity != default_identity()
    assert a.hold(time.time()).holder == a.identity
    assert b.hold(time.time()).holder == a.identity


# --- Redis ------------------------------------------------------------------------------


@pytest.mark.integration
def test_redis_the_expiry_is_the_stores_and_renewal_resets_it(redis_client: Any):
    lease = RedisLease(redis_client, "scaler", 30.0, "a")
    assert lease.hold(time.time()).held
    assert redis_client.get("scaler") == b"a"
    assert 29_000 < redis_client.pttl("scaler") <= 30_000
    redis_client.pexpire("scaler", 5_000)
    assert lease.hold(time.time()).held
    assert 29_000 < redis_client.pttl("scaler") <= 30_000


@pytest.mark.integration
def test_redis_a_key_of_another_program_is_never_taken(redis_client: Any):
    redis_client.set("taken", "some other program's value")
    status = RedisLease(redis_client, "taken", TTL, "a").hold(time.time())
    assert status == LeaseStatus(held=False, holder="some other program's value", until=None)
    redis_client.hset("a-hash", "field", "value")
    status = RedisLease(redis_client, "a-hash", TTL, "a").hold(time.time())
    assert (status.held, status.holder, status.until) == (False, None, None)
    assert status.error == ("redis: key 'a-hash' holds a value that is not a string: another "
                            "program uses it; choose another lease.name")
    assert redis_client.hgetall("a-hash") == {b"field": b"value"}
    RedisLease(redis_client, "a-hash", TTL, "a").release()  # never raises
    assert redis_client.type("a-hash") == b"hash"


@pytest.mark.integration
def test_redis_down_means_not_held_with_a_one_line_error_and_no_password(
        own_redis: RedisServer):
    own_redis.password = "lease-s3cret-pw"
    own_redis.start()
    config = LeaseConfig(kind="redis", ttl=TTL, name="scaler", url_env="LEASE_REDIS_URL")
    lease = build_lease(config, {"LEASE_REDIS_URL": own_redis.url}, identity="a")
    assert lease.hold(time.time()).held
    own_redis.stop()
    status = lease.hold(time.time())
    assert (status.held, status.holder, status.until) == (False, None, None)
    assert status.error is not None and status.error.startswith("redis: ConnectionError: ")
    assert f"{own_redis.port}" in status.error
    assert "\n" not in status.error and "lease-s3cret-pw" not in status.error
    lease.release()  # never raises
    # Back up (empty, as after a failover): the next hold reconnects and takes it again.
    own_redis.start()
    assert wait_for(lambda: lease.hold(time.time()).held, timeout=5)


@pytest.mark.integration
def test_redis_wrong_password_is_an_error_without_the_password(own_redis: RedisServer):
    own_redis.password = "right-pw"
    own_redis.start()
    url = f"redis://:wrong-pw-123@127.0.0.1:{own_redis.port}/0"
    config = LeaseConfig(kind="redis", ttl=TTL, url_env="U")
    status = build_lease(config, {"U": url}, identity="a").hold(time.time())
    assert not status.held and status.error is not None
    assert status.error.startswith("redis: AuthenticationError: ")
    assert "wrong-pw-123" not in status.error


@pytest.mark.integration
def test_build_lease_redis_from_a_url_in_capitals(redis_server: RedisServer, redis_client: Any):
    url = "REDIS" + redis_server.url.removeprefix("redis")
    lease = build_lease(LeaseConfig(kind="redis", ttl=TTL, name="scaler-caps", url=url), {},
                        identity="a")
    assert lease.hold(time.time()).held
    assert redis_client.get("scaler-caps") == b"a"


@pytest.mark.integration
def test_build_lease_redis_from_a_plain_url(redis_server: RedisServer, redis_client: Any):
    config = LeaseConfig(kind="redis", ttl=TTL, name="scaler-url", url=redis_server.url)
    lease = build_lease(config, {}, identity="a")
    assert isinstance(lease, RedisLease)
    assert lease.hold(time.time()).held
    assert redis_client.get("scaler-url") == b"a"


@pytest.mark.parametrize(("config", "env", "expected"), [
    (LeaseConfig(kind="redis", ttl=TTL, url_env="LEASE_URL"), {},
     "lease.url_env: environment variable LEASE_URL is not set"),
    (LeaseConfig(kind="redis", ttl=TTL, url_env="LEASE_URL"),
     {"LEASE_URL": "http://user:pw-in-http@host/0"},
     "lease.url_env: environment variable LEASE_URL must be a redis:// or rediss:// URL "
     "(got scheme 'http')"),
    (LeaseConfig(kind="redis", ttl=TTL, url_env="LEASE_URL"),
     {"LEASE_URL": "redis://:pw-in-bad-url@host:port/0"},
     "lease.url_env: environment variable LEASE_URL: not a valid Redis URL: "),
    # What the config refuses, should a LeaseConfig be made some other way: botocore's
    # InvalidRegionError, ValueError.
    (LeaseConfig(kind="dynamodb", ttl=TTL, table="leases", region="not a region!"), {},
     "dynamodb: cannot make a client: InvalidRegionError: Provided region_name 'not a "
     "region!' doesn't match a supported format."),
    (LeaseConfig(kind="dynamodb", ttl=TTL, table="leases", region="eu-west-1",
                 endpoint_url="nonsense"), {},
     "dynamodb: cannot make a client: ValueError: Invalid endpoint: nonsense"),
])
def test_build_lease_errors_are_one_line_without_the_url(config, env, expected):
    with pytest.raises(LeaseError) as caught:
        build_lease(config, env)
    assert str(caught.value).startswith(expected)
    assert "pw-in" not in str(caught.value) and "\n" not in str(caught.value)


# --- DynamoDB ---------------------------------------------------------------------------


@pytest.mark.integration
def test_dynamodb_the_item_says_who_holds_it_until_when(dynamodb: tuple[Any, str]):
    client, table = dynamodb
    now = time.time()
    assert DynamoDbLease(client, table, "scaler", 30.0, "a").hold(now).held
    item = client.get_item(TableName=table, Key={"id": {"S": "scaler"}},
                           ConsistentRead=True)["Item"]
    assert item["holder"] == {"S": "a"}
    assert float(item["expires_at"]["N"]) == pytest.approx(now + 30.0, abs=0.001)


@pytest.mark.integration
def test_dynamodb_an_expired_item_is_taken_whoever_wrote_it(dynamodb: tuple[Any, str]):
    # DynamoDB's expiry is the writers' clocks: an instance whose `now` is past expires_at
    # takes it, which is why the clocks must agree within a fraction of the ttl.
    client, table = dynamodb
    a = DynamoDbLease(client, table, "scaler", 30.0, "a")
    b = DynamoDbLease(client, table, "scaler", 30.0, "b")
    now = time.time()
    assert a.hold(now).held
    assert not b.hold(now + 29.9).held
    assert b.hold(now + 30.001).held
    assert a.hold(now + 30.002) == LeaseStatus(held=False, holder="b", until=None)


@pytest.mark.integration
def test_dynamodb_with_a_key_attribute_of_the_users_table(dynamodb: tuple[Any, str]):
    client, _ = dynamodb
    create_table(client, "locks", key="LockID")
    lease = DynamoDbLease(client, "locks", "scaler", TTL, "a", key_attribute="LockID")
    assert lease.hold(time.time()).held
    assert client.get_item(TableName="locks", Key={"LockID": {"S": "scaler"}})["Item"][
        "holder"] == {"S": "a"}
    lease.release()
    assert "Item" not in client.get_item(TableName="locks", Key={"LockID": {"S": "scaler"}})


@pytest.mark.integration
def test_dynamodb_a_missing_table_is_an_error(dynamodb: tuple[Any, str]):
    client, _ = dynamodb
    status = DynamoDbLease(client, "no-such-table", "scaler", TTL, "a").hold(time.time())
    assert (status.held, status.holder, status.until) == (False, None, None)
    assert status.error is not None
    assert status.error.startswith("dynamodb: ResourceNotFoundException: ")
    assert "\n" not in status.error


@pytest.mark.integration
def test_dynamodb_down_means_not_held_with_a_one_line_error_and_no_keys(lease_aws_env: None):
    server = MotoServer(free_port()).start()
    try:
        config = LeaseConfig(kind="dynamodb", ttl=TTL, table="leases", region=REGION,
                             endpoint_url=server.url)
        lease = build_lease(config, {}, identity="a")
        assert isinstance(lease, DynamoDbLease)
        create_table(lease.client, "leases")
        assert lease.hold(time.time()).held
    finally:
        server.stop()
    started = time.monotonic()
    status = lease.hold(time.time())
    assert time.monotonic() - started < 10  # short timeouts, two attempts at most
    assert (status.held, status.holder, status.until) == (False, None, None)
    assert status.error is not None and status.error.startswith("dynamodb: ")
    assert f"127.0.0.1:{server.port}" in status.error
    assert "\n" not in status.error
    assert SECRET_ACCESS_KEY not in status.error and ACCESS_KEY_ID not in status.error
    lease.release()  # never raises


# --- the README -------------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
PROMETHEUS_AND_NO_SERVICES = "prometheus: {url: 'http://p:9090'}\ninterval: 15s\nservices: []\n"


def readme_section() -> str:
    text = README.read_text()
    start = text.index("### At most one scaler acts\n")
    return text[start:text.index("\n### ", start + 1)]


def test_the_readmes_lease_configs_are_valid_as_shown():
    blocks = re.findall(r"```yaml\n(.*?)```", readme_section(), re.S)
    leases = [parse_config(PROMETHEUS_AND_NO_SERVICES + block, {}).lease for block in blocks]
    assert leases == [
        LeaseConfig(kind="redis", ttl=45.0, url_env="LEASE_REDIS_URL"),
        LeaseConfig(kind="dynamodb", ttl=45.0, table="taskqueue-scaler-lease",
                    region="eu-west-1"),
    ]


def test_the_readmes_config_errors_are_what_check_config_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    (shown,) = re.findall(r"```\n(taskqueue-scaler: .*?)```", readme_section(), re.S)
    monkeypatch.chdir(tmp_path)
    printed = []
    for lease in ("{type: redis, url: 'redis://:pw@cache:6379/0'}",
                  "{type: redis, url_env: LEASE_REDIS_URL, ttl: 20s}"):
        Path("scaler.yml").write_text(f"{PROMETHEUS_AND_NO_SERVICES}lease: {lease}\n")
        assert scaler_cli.main(["check-config", "scaler.yml"], {}) == 2
        printed.append(capsys.readouterr().err)
    assert "".join(printed) == shown
