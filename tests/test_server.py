"""The HTTP endpoint both commands serve: /metrics, /healthz, the landing page."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from exporter import server
from tests.services import get


@pytest.fixture
def serve() -> Iterator:
    started = []

    def start(health: server.HealthCheck | None = None) -> str:
        httpd = server.bind("127.0.0.1", 0, CollectorRegistry(), title="t", health=health)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_healthz_follows_the_health_check(serve):
    problem: list[str] = []
    url = serve(lambda: problem[0] if problem else None)
    assert get(url + "/healthz") == (200, "ok\n")
    problem.append("the last evaluation cycle finished 200s ago (interval 15s)")
    assert get(url + "/healthz") == (
        503, "unhealthy: the last evaluation cycle finished 200s ago (interval 15s)\n")
    assert get(url + "/metrics")[0] == 200  # still scrapeable while unhealthy


def test_without_a_health_check_healthz_is_ok_and_unknown_paths_are_404(serve):
    url = serve()
    assert get(url + "/healthz") == (200, "ok\n")
    assert get(url + "/nope") == (404, "not found\n")


@pytest.mark.parametrize(
    ("address", "url"),
    [("0.0.0.0", "http://127.0.0.1:9808/metrics"), ("", "http://127.0.0.1:9808/metrics"),
     ("::", "http://[::1]:9808/metrics"), ("::1", "http://[::1]:9808/metrics"),
     ("10.0.0.5", "http://10.0.0.5:9808/metrics"), ("localhost", "http://localhost:9808/metrics")],
)
def test_metrics_url_reaches_the_listening_address(address: str, url: str) -> None:
    assert server.metrics_url(address, 9808) == url
