"""HTTP endpoint: /metrics in the Prometheus text format, /healthz, and a landing page."""

from __future__ import annotations

import socket
import socketserver
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

LANDING = """<html><head><title>{title}</title></head><body>
<h1>{title}</h1><p><a href="/metrics">Metrics</a> <a href="/healthz">Health</a></p>
</body></html>
"""


# Returns None when healthy, else why not (one line, served with a 503).
HealthCheck = Callable[[], str | None]


def make_app(
    registry: CollectorRegistry, title: str = "taskqueue-exporter",
    health: HealthCheck | None = None,
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app(registry)
    landing = LANDING.format(title=title).encode()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            problem = health() if health is not None else None
            if problem is not None:
                start_response("503 Service Unavailable",
                               [("Content-Type", "text/plain; charset=utf-8")])
                return [f"unhealthy: {problem}\n".encode()]
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [landing]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found\n"]

    return app


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def metrics_url(address: str, port: int) -> str:
    """A URL that reaches /metrics on a server listening on `address`:`port`.

    A wildcard address is reached over loopback (of its own family); an IPv6
    address goes in brackets.
    """
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def bind(
    address: str, port: int, registry: CollectorRegistry, title: str = "taskqueue-exporter",
    health: HealthCheck | None = None,
) -> WSGIServer:
    """Bind the listening socket; raises OSError (address in use, bad address)."""
    server_class = _ThreadingServer
    if ":" in address:
        server_class = _ThreadingServer6
    return make_server(address, port, make_app(registry, title, health), server_class,
                       _QuietHandler)
