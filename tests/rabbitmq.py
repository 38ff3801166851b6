"""The machine's RabbitMQ for the tests: temporary vhosts, and a proxy to cut connections."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import quote

import amqp
import pytest
import requests

from tests.services import free_port, in_ci

HOST = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("RABBITMQ_PORT", "5672"))
MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", f"http://{HOST}:15672")
USER = "guest"
PASSWORD = "guest"


def require_rabbitmq() -> requests.Session:
    """A management API session as guest: skip without RabbitMQ, but fail in CI."""
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    problem = ""
    try:
        socket.create_connection((HOST, AMQP_PORT), timeout=2).close()
        response = session.get(f"{MANAGEMENT_URL}/api/overview", timeout=5)
        if response.status_code != 200:
            problem = f"management API answered {response.status_code}"
    except OSError as error:  # requests' errors are OSErrors too
        problem = str(error)
    if problem:
        session.close()
        message = (
            f"RabbitMQ with the management plugin is not reachable at {HOST}:{AMQP_PORT} and "
            f"{MANAGEMENT_URL} ({problem}); install rabbitmq-server, and make test enables "
            "its management plugin"
        )
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return session


@dataclass
class Vhost:
    """A vhost of the test's own, so that tests never see each other's queues."""

    session: requests.Session
    name: str = field(default_factory=lambda: f"taskqueue-test-{uuid.uuid4().hex[:12]}")

    @property
    def api(self) -> str:
        return f"{MANAGEMENT_URL}/api/vhosts/{quote(self.name, safe='')}"

    def create(self, *, permitted: bool = True) -> Vhost:
        self.session.put(self.api, timeout=10).raise_for_status()
        permissions = f"{MANAGEMENT_URL}/api/permissions/{quote(self.name, safe='')}/{USER}"
        if permitted:
            everything = {"configure": ".*", "write": ".*", "read": ".*"}
            self.session.put(permissions, json=everything, timeout=10).raise_for_status()
        else:
            # RabbitMQ gives the user who creates a vhost full permissions on it.
            self.session.delete(permissions, timeout=10).raise_for_status()
        return self

    def delete(self) -> None:
        # Deleting the vhost deletes its queues and closes its connections.
        self.session.delete(self.api, timeout=10)

    def broker_url(self, *, port: int = AMQP_PORT, password: str = PASSWORD) -> str:
        return f"amqp://{USER}:{password}@{HOST}:{port}/{quote(self.name, safe='')}"

    @contextmanager
    def connection(self) -> Iterator[amqp.Connection]:
        connection = amqp.Connection(
            f"{HOST}:{AMQP_PORT}",
            userid=USER,
            password=PASSWORD,
            virtual_host=self.name,
            connect_timeout=5,
        )
        connection.connect()
        try:
            yield connection
        finally:
            connection.collect()


class TcpProxy:
    """Forwards a local port to RabbitMQ; stopping it or dropping its connections
    breaks a client's connection the way a broker restart or a network cut would."""

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        # Accept wakes up now and then to notice stop(): closing a socket does
        # not interrupt a blocked accept() on Linux.
        listener.settimeout(0.05)
        self._listener = listener
        self._stopped.clear()
        self._spawn(self._accept_loop, listener)
        return self

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._sockets += [client, server]
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _shut(sock)

    def drop_connections(self) -> None:
        """Cut every proxied connection; new ones are still accepted."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)
            sock.close()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop_connections()
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)


def _shut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
