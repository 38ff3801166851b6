"""scaler.ecs against moto (in process and as a server) and botocore's Stubber.

What moto 5.2.5 does with the counts (read from moto/ecs/models.py and asserted below):
CreateService sets runningCount 0 and pendingCount = desiredCount (unless the
MOTO_ECS_SERVICE_RUNNING variable says otherwise); UpdateService(desiredCount=n) sets
runningCount n and pendingCount 0 at once. DeleteService leaves the service described as
INACTIVE, and moto, unlike ECS, still accepts UpdateService on it.
"""

from __future__ import annotations

import pickle
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer

from scaler.ecs import (
    BackendError,
    EcsService,
    ServiceCounts,
    describe_many,
    ecs_client,
)
from tests.aws import CLUSTER, REGION, create_service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def count_calls(client: Any, operation: str) -> list[list[str]]:
    """The `services` argument of every `operation` call the client makes from now on."""
    calls: list[list[str]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(list(params.get("services", [])))

    client.meta.events.register(f"provide-client-params.ecs.{operation}", record)
    return calls


# --- moto in process ------------------------------------------------------------------


def test_counts_after_create_and_after_set_desired(ecs: Any) -> None:
    create_service(ecs, "default-queue", desired=2)
    service = EcsService(ecs, CLUSTER, "default-queue")

    assert service.name == "workers/default-queue"
    assert service.counts() == ServiceCounts(desired=2, running=0, pending=2)

    service.set_desired(5)
    assert service.counts() == ServiceCounts(desired=5, running=5, pending=0)

    service.set_desired(0)
    assert service.counts() == ServiceCounts(desired=0, running=0, pending=0)


def test_set_desired_calls_update_service_even_when_unchanged(ecs: Any) -> None:
    create_service(ecs, "default-queue", desired=3)
    service = EcsService(ecs, CLUSTER, "default-queue")
    updates = count_calls(ecs, "UpdateService")

    service.set_desired(3)
    service.set_desired(3)

    assert len(updates) == 2
    assert service.counts().desired == 3


def test_service_given_as_arn(ecs: Any) -> None:
    create_service(ecs, "default-queue", desired=1)
    arn = ecs.describe_services(cluster=CLUSTER, services=["default-queue"])["services"][0][
        "serviceArn"
    ]
    service = EcsService(ecs, CLUSTER, arn)

    service.set_desired(4)

    assert service.counts() == ServiceCounts(desired=4, running=4, pending=0)
    assert describe_many(ecs, CLUSTER, [arn]) == {arn: ServiceCounts(4, 4, 0)}


def test_negative_desired_count_is_refused_before_any_call(ecs: Any) -> None:
    create_service(ecs, "default-queue", desired=1)
    updates = count_calls(ecs, "UpdateService")

    with pytest.raises(ValueError, match="workers/default-queue"):
        EcsService(ecs, CLUSTER, "default-queue").set_desired(-1)

    assert updates == []


def test_missing_service_is_not_found(ecs: Any) -> None:
    service = EcsService(ecs, CLUSTER, "nope")

    with pytest.raises(BackendError) as read:
        service.counts()
    with pytest.raises(BackendError) as write:
        service.set_desired(1)

    assert read.value.kind == "not_found"
    assert read.value.code == "MISSING"
    assert str(read.value).startswith("workers/nope: ")
    assert "MISSING" in str(read.value)
    assert write.value.kind == "not_found"
    assert write.value.code == "ServiceNotFoundException"
    assert str(write.value) == (
        "workers/nope: UpdateService failed: ServiceNotFoundException: Service not found."
    )


def test_missing_cluster_is_not_found(ecs: Any) -> None:
    service = EcsService(ecs, "no-such-cluster", "default-queue")

    with pytest.raises(BackendError) as read:
        service.counts()
    with pytest.raises(BackendError) as write:
        service.set_desired(1)

    for error in (read.value, write.value):
        assert error.kind == "not_found"
        assert error.code == "ClusterNotFoundException"
        assert error.service == "no-such-cluster/default-queue"
        assert str(error).startswith("no-such-cluster/default-queue: ")
        assert "ClusterNotFoundException" in str(error)


def test_deleted_service_is_not_found(ecs: Any) -> None:
    create_service(ecs, "old-queue", desired=0)
    ecs.delete_service(cluster=CLUSTER, service="old-queue")
    service = EcsService(ecs, CLUSTER, "old-queue")

    with pytest.raises(BackendError) as read:
        service.counts()
    # moto accepts UpdateService on an INACTIVE service (ECS answers
    # ServiceNotActiveException); set_desired checks the returned status instead.
    with pytest.raises(BackendError) as write:
        service.set_desired(2)

    assert read.value.kind == "not_found"
    assert str(read.value) == "workers/old-queue: service status is INACTIVE"
    assert write.value.kind == "not_found"
    assert str(write.value) == "workers/old-queue: service status is INACTIVE"


def test_describe_many_batches_by_ten(ecs: Any) -> None:
    names = [f"queue-{i:02d}" for i in range(24)]
    for i, name in enumerate(names):
        create_service(ecs, name, desired=i % 7)
    for name in names[:5]:
        ecs.update_service(cluster=CLUSTER, service=name, desiredCount=9)
    wanted = [*names[:12], "ghost", *names[12:]]
    calls = count_calls(ecs, "DescribeServices")

    result = describe_many(ecs, CLUSTER, wanted)

    assert [len(services) for services in calls] == [10, 10, 5]
    assert [s for services in calls for s in services] == wanted
    assert list(result) == wanted
    ghost = result["ghost"]
    assert isinstance(ghost, BackendError)
    assert ghost.kind == "not_found"
    assert str(ghost) == "workers/ghost: DescribeServices: MISSING"
    for i, name in enumerate(names):
        if i < 5:
            assert result[name] == ServiceCounts(desired=9, running=9, pending=0), name
        else:
            assert result[name] == ServiceCounts(desired=i % 7, running=0, pending=i % 7), name


class MeetingClient:
    """DescribeServices that answers only once `parties` calls are in flight together."""

    def __init__(self, parties: int, fail_with: str | None = None) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.fail_with = fail_with
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def describe_services(self, cluster: str, services: list[str],
                          include: list[str] | None = None) -> dict[str, Any]:
        with self.lock:
            self.calls.append(services)
        if self.fail_with is not None:
            raise ClientError({"Error": {"Code": self.fail_with, "Message": "Rate exceeded"}},
                              "DescribeServices")
        self.barrier.wait()  # raises BrokenBarrierError when the calls are not concurrent
        return {"services": [{"serviceName": s, "status": "ACTIVE", "desiredCount": 2,
                              "runningCount": 1, "pendingCount": 1} for s in services]}


def test_describe_many_concurrently_keeps_every_answer_in_order() -> None:
    names = [f"queue-{i:02d}" for i in range(25)]
    client = MeetingClient(parties=3)

    result = describe_many(client, CLUSTER, names, concurrency=4)

    assert sorted(len(c) for c in client.calls) == [5, 10, 10]
    assert list(result) == names
    assert set(result.values()) == {ServiceCounts(2, 1, 1)}


def test_describe_many_concurrently_stops_calling_once_throttled() -> None:
    names = [f"queue-{i:02d}" for i in range(50)]
    client = MeetingClient(parties=1, fail_with="ThrottlingException")

    result = describe_many(client, CLUSTER, names, concurrency=2)

    # Only the calls already in flight when the first one was throttled were made.
    assert 1 <= len(client.calls) <= 2
    assert list(result) == names
    assert all(isinstance(e, BackendError) for e in result.values())
    assert {(e.kind, e.code) for e in result.values()} == {("throttled", "ThrottlingException")}


def test_describe_many_concurrently_goes_on_after_a_failure_of_one_call_alone() -> None:
    names = [f"queue-{i:02d}" for i in range(50)]
    client = MeetingClient(parties=1, fail_with="InvalidParameterException")

    result = describe_many(client, CLUSTER, names, concurrency=2)

    assert len(client.calls) == 5  # "other": nothing says the next call fails too
    assert {e.kind for e in result.values() if isinstance(e, BackendError)} == {"other"}
    assert len(result) == 50


def test_describe_many_dedupes_and_skips_empty(ecs: Any) -> None:
    create_service(ecs, "a", desired=1)
    calls = count_calls(ecs, "DescribeServices")

    assert describe_many(ecs, CLUSTER, []) == {}
    assert describe_many(ecs, CLUSTER, ["a", "a"]) == {"a": ServiceCounts(1, 0, 1)}
    assert calls == [["a"]]


def test_describe_many_missing_cluster_stops_after_first_call(ecs: Any) -> None:
    names = [f"queue-{i:02d}" for i in range(25)]
    calls = count_calls(ecs, "DescribeServices")

    result = describe_many(ecs, "no-such-cluster", names)

    assert len(calls) == 1
    assert list(result) == names
    for name in names:
        error = result[name]
        assert isinstance(error, BackendError)
        assert error.kind == "not_found"
        assert str(error).startswith(f"no-such-cluster/{name}: DescribeServices failed: ")


def test_describe_many_reports_inactive_among_active(ecs: Any) -> None:
    create_service(ecs, "live", desired=2)
    create_service(ecs, "gone", desired=0)
    ecs.delete_service(cluster=CLUSTER, service="gone")

    result = describe_many(ecs, CLUSTER, ["live", "gone"])

    assert result["live"] == ServiceCounts(2, 0, 2)
    gone = result["gone"]
    assert isinstance(gone, BackendError)
    assert (gone.kind, gone.code) == ("not_found", "INACTIVE")


# --- Stubber: errors moto does not produce --------------------------------------------


@pytest.fixture
def stubbed(aws_env: None) -> Iterator[tuple[Any, Stubber]]:
    client = ecs_client(REGION)
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ThrottlingException", 400, "throttled"),
        ("TooManyRequestsException", 400, "throttled"),
        ("RequestLimitExceeded", 400, "throttled"),
        ("SomethingNew", 429, "throttled"),
        ("AccessDeniedException", 400, "denied"),
        ("UnauthorizedOperation", 403, "denied"),
        ("ExpiredTokenException", 400, "denied"),
        ("ServiceNotActiveException", 400, "not_found"),
        ("ServerException", 500, "other"),
        ("InvalidParameterException", 400, "other"),
    ],
)
def test_client_errors_get_their_kind(
    stubbed: tuple[Any, Stubber], code: str, status: int, kind: str
) -> None:
    client, stubber = stubbed
    stubber.add_client_error(
        "update_service",
        service_error_code=code,
        service_message="Rate exceeded",
        http_status_code=status,
    )
    stubber.add_client_error(
        "describe_services",
        service_error_code=code,
        service_message="Rate exceeded",
        http_status_code=status,
    )
    service = EcsService(client, CLUSTER, "default-queue")

    with pytest.raises(BackendError) as write:
        service.set_desired(3)
    with pytest.raises(BackendError) as read:
        service.counts()

    assert write.value.kind == kind
    assert write.value.code == code
    assert str(write.value) == f"workers/default-queue: UpdateService failed: {code}: Rate exceeded"
    assert read.value.kind == kind
    assert str(read.value) == (
        f"workers/default-queue: DescribeServices failed: {code}: Rate exceeded"
    )


def test_throttled_describe_many_stops_and_marks_the_rest(
    stubbed: tuple[Any, Stubber],
) -> None:
    client, stubber = stubbed
    names = [f"queue-{i:02d}" for i in range(25)]
    stubber.add_response(
        "describe_services",
        {
            "services": [
                {
                    "serviceName": n,
                    "status": "ACTIVE",
                    "desiredCount": 1,
                    "runningCount": 1,
                    "pendingCount": 0,
                }
                for n in names[:10]
            ],
            "failures": [],
        },
        {"cluster": CLUSTER, "services": names[:10], "include": ["TAGS"]},
    )
    stubber.add_client_error("describe_services", service_error_code="ThrottlingException")

    result = describe_many(client, CLUSTER, names)

    assert all(result[n] == ServiceCounts(1, 1, 0) for n in names[:10])
    for name in names[10:]:
        error = result[name]
        assert isinstance(error, BackendError)
        assert error.kind == "throttled"
        assert error.service == f"{CLUSTER}/{name}"


def test_other_failures_and_statuses(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_response(
        "describe_services",
        {
            "services": [
                {
                    "serviceName": "draining",
                    "status": "DRAINING",
                    "desiredCount": 1,
                    "runningCount": 1,
                    "pendingCount": 0,
                },
            ],
            "failures": [
                # New-format ARN: service/<cluster>/<name>.
                {
                    "arn": "arn:aws:ecs:us-east-1:123456789012:service/workers/odd",
                    "reason": "SOMETHING",
                    "detail": "try later",
                },
            ],
        },
    )

    result = describe_many(client, CLUSTER, ["draining", "odd", "unmentioned"])

    kinds = {n: (e.kind, str(e)) for n, e in result.items() if isinstance(e, BackendError)}
    assert kinds == {
        "draining": ("not_found", "workers/draining: service status is DRAINING"),
        "odd": ("other", "workers/odd: DescribeServices: SOMETHING (try later)"),
        "unmentioned": (
            "other",
            "workers/unmentioned: DescribeServices answered neither counts nor a failure",
        ),
    }


def test_error_text_is_one_line_without_credentials(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    token = "IQoJb3JpZ2luX2VjEJr" + "A" * 300
    stubber.add_client_error(
        "update_service",
        service_error_code="SignatureDoesNotMatch",
        service_message=(
            "The request signature we calculated does not match the signature you provided."
            " Key AKIAABCDEFGHIJKLMNOP\n\nThe Canonical String for this request should have"
            f" been\n'POST\n/\n\nx-amz-security-token:{token}\n'"
        ),
        http_status_code=403,
    )

    with pytest.raises(BackendError) as caught:
        EcsService(client, CLUSTER, "default-queue").set_desired(1)

    text = str(caught.value)
    assert caught.value.kind == "denied"
    assert "\n" not in text
    assert "AKIAABCDEFGHIJKLMNOP" not in text
    assert token[:40] not in text
    assert text.startswith("workers/default-queue: UpdateService failed: SignatureDoesNotMatch:")
    # No chained botocore exception whose traceback would print the full message.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_backend_error_survives_pickling() -> None:
    error = BackendError("throttled", "workers/q", "Rate exceeded", "ThrottlingException")

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.kind, copy.service, copy.code, str(copy)) == (
        "throttled",
        "workers/q",
        "ThrottlingException",
        "workers/q: Rate exceeded",
    )


# --- unreachable endpoint -------------------------------------------------------------


def test_unreachable_endpoint(aws_env: None) -> None:
    port = free_port()  # closed again: connecting to it is refused at once
    client = ecs_client(
        REGION, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=1
    )
    sends: list[str] = []
    client.meta.events.register("before-send.ecs.*", lambda **_: sends.append("sent"))
    service = EcsService(client, CLUSTER, "default-queue")

    with pytest.raises(BackendError) as read:
        service.counts()
    # max_attempts counts the first attempt: no retry here.
    assert len(sends) == 1
    with pytest.raises(BackendError) as write:
        service.set_desired(2)
    result = describe_many(client, CLUSTER, [f"q{i}" for i in range(25)])

    for error in (read.value, write.value):
        assert error.kind == "unreachable"
        assert error.code == "EndpointConnectionError"
        assert str(error).startswith("workers/default-queue: ")
        assert f"127.0.0.1:{port}" in str(error)
    assert {e.kind for e in result.values() if isinstance(e, BackendError)} == {"unreachable"}
    assert len(result) == 25
    # describe_many gave up after its first batch instead of trying all three.
    assert len(sends) == 3


def test_client_configuration(aws_env: None) -> None:
    client = ecs_client("eu-west-1")
    config = client.meta.config

    assert client.meta.region_name == "eu-west-1"
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (config.connect_timeout, config.read_timeout) == (5.0, 10.0)
    assert ecs_client("eu-west-1") is not client


# --- moto as a real server ------------------------------------------------------------


@pytest.fixture
def moto_server(aws_env: None) -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_against_moto_server(moto_server: str) -> None:
    client = ecs_client(REGION, endpoint_url=moto_server, max_attempts=1)
    client.create_cluster(clusterName="server-cluster")
    client.register_task_definition(
        family="worker",
        containerDefinitions=[{"name": "worker", "image": "busybox", "memory": 128}],
    )
    create_service(client, "server-queue", desired=1, cluster="server-cluster")
    service = EcsService(client, "server-cluster", "server-queue")

    assert service.counts() == ServiceCounts(desired=1, running=0, pending=1)
    service.set_desired(6)
    assert service.counts() == ServiceCounts(desired=6, running=6, pending=0)
    with pytest.raises(BackendError) as caught:
        EcsService(client, "server-cluster", "ghost").set_desired(1)
    assert caught.value.kind == "not_found"
    assert str(caught.value).startswith("server-cluster/ghost: UpdateService failed: ")
