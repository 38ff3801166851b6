"""ECS through moto for the scaler's tests: fake credentials, a cluster, a task definition."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from scaler.ecs import ecs_client
from tests.services import free_port

REGION = "us-east-1"
CLUSTER = "workers"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECS"):
        monkeypatch.delenv(name, raising=False)
    # It would change the runningCount moto gives a new service.
    monkeypatch.delenv("MOTO_ECS_SERVICE_RUNNING", raising=False)


def prepare(client: Any, cluster: str = CLUSTER) -> None:
    client.create_cluster(clusterName=cluster)
    client.register_task_definition(
        family="worker",
        containerDefinitions=[{"name": "worker", "image": "busybox", "memory": 128}],
    )


@pytest.fixture
def ecs(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = ecs_client(REGION)
        prepare(client)
        yield client


def create_service(client: Any, name: str, desired: int, cluster: str = CLUSTER) -> None:
    client.create_service(
        cluster=cluster, serviceName=name, taskDefinition="worker", desiredCount=desired
    )


def desired_count(client: Any, name: str, cluster: str = CLUSTER) -> int:
    return int(client.describe_services(cluster=cluster, services=[name])["services"][0][
        "desiredCount"])


# Distinctive, so that finding it in a log means it leaked.
SECRET_KEY = "e2e-fake-secret-Xq7pLm3vR9"
MOTO_SERVICE = "celery-default"


@contextlib.contextmanager
def moto_ecs_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """moto as a server (the scaler under test is another process), with the cluster and
    the service MOTO_SERVICE at 1 worker; (endpoint URL, client). The fake credentials are
    set in this process's environment, which the scalers it starts inherit."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECS",
                 "MOTO_ECS_SERVICE_RUNNING"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        client = ecs_client(REGION, endpoint_url=url, max_attempts=1)
        prepare(client)
        create_service(client, MOTO_SERVICE, desired=1)
        yield url, client
    finally:
        server.stop()


@pytest.fixture
def moto_ecs(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    with moto_ecs_server(monkeypatch) as found:
        yield found
