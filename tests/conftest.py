from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis
from kombu import pools

from tests.aws import aws_env, ecs, moto_ecs  # noqa: F401  (fixtures for the scaler's ECS tests)
from tests.services import PrometheusServer, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    # kombu's producer pools are global and remember which queues they have
    # declared; after a FLUSHALL they must declare them again.
    pools.reset()
    yield client
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or reconfigure it."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def make_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusServer]]:
    """Start real prometheus servers: make_prometheus(targets=["127.0.0.1:PORT"], "1s").

    `jobs` adds scrape jobs by name ({"job": ["127.0.0.1:PORT"]}); `rule_files` are loaded.
    """
    servers: list[PrometheusServer] = []

    def make(
        targets: Sequence[str] = (),
        scrape_interval: str = "1s",
        jobs: Mapping[str, Sequence[str]] | None = None,
        rule_files: Sequence[Path] = (),
    ) -> PrometheusServer:
        server = PrometheusServer(
            tmp_path_factory.mktemp("prometheus"),
            targets=list(targets),
            scrape_interval=scrape_interval,
            jobs={name: list(addresses) for name, addresses in (jobs or {}).items()},
            rule_files=list(rule_files),
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
