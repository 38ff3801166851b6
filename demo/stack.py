"""The demo's processes: start each on a free port, wait until it answers, stop in order.

Every child runs in a session of its own, so the terminal's Ctrl-C reaches only the
runner, which then stops them in an order that loses nothing: the load first, then the
scaler (whose workers finish their tasks while Redis is still up), then the rest.
Every child, and every worker the scaler starts, carries MARKER in its environment, so
a last sweep can find anything that outlived its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

MARKER = "TASKQUEUE_DEMO_ID"


class StartError(Exception):
    """A service did not start; the message says which and why, with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (each bind may hand back one given a moment ago)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the runner dies without stopping it (its terminal
    # closed, SIGKILL), the kernel sends SIGTERM, so the scaler still stops its workers.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def find(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise StartError(f"{binary} not found: install it with `sudo apt-get install {package}` "
                         f"(or run `make demo` as root, which installs it)")
    return path


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float = 10.0

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    directory: Path
    marker: str
    clock: Callable[[], float] = time.monotonic
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, ready: Callable[[], bool],
              stop_timeout: float = 10.0, timeout: float = 60.0,
              env: dict[str, str] | None = None, cwd: Path | None = None,
              interrupted: Callable[[], bool] = lambda: False) -> Child:
        if interrupted():
            raise StartError(f"interrupted before {name} started")
        log = self.directory / f"{name}.log"
        environment = {**os.environ, **(env or {}), MARKER: self.marker}
        try:
            with log.open("wb") as out:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=environment, cwd=cwd,
                                           start_new_session=True,
                                           preexec_fn=_die_with_parent)
        except OSError as error:
            raise StartError(f"{name}: cannot run {argv[0]}: {error.strerror}") from None
        child = Child(name, process, log, stop_timeout)
        self.children.append(child)
        deadline = self.clock() + timeout
        while True:
            if interrupted():
                raise StartError(f"interrupted while {name} was starting")
            if process.poll() is not None:
                raise StartError(f"{name} exited with code {process.returncode} at start-up; "
                                 f"its log ({log}) ends:\n{child.tail()}")
            try:
                if ready():
                    return child
            except (OSError, requests.RequestException, redis.RedisError):
                pass  # not listening yet
            if self.clock() > deadline:
                raise StartError(f"{name} did not become ready within {timeout:g} s; "
                                 f"its log ({log}) ends:\n{child.tail()}")
            time.sleep(0.1)  # polling a child that is starting; the deadline bounds it

    def failed(self) -> Child | None:
        """The first child that exited on its own, if any (for `load`: with an error)."""
        for child in self.children:
            code = child.process.poll()
            if code is not None and not (child.name == "load" and code == 0):
                return child
        return None

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop every child, last started first: SIGTERM, then SIGKILL after its timeout
        (at once once `hurry()` says so: a second Ctrl-C)."""
        for child in reversed(self.children):
            _stop(child, self.clock, hurry)
        self.children.clear()

    def leftovers(self) -> list[int]:
        """Processes still carrying this run's marker (workers of a scaler that died).

        Ourselves and our ancestors are left out: a marker given to `make demo` is in
        make's environment too.
        """
        return marked(self.marker, skip=_ancestors())

    def sweep(self, timeout: float = 5.0) -> tuple[list[int], list[int]]:
        """SIGKILL whatever outlived its parent; returns (killed, still there after
        `timeout`): a killed process shows its environment until it has exited."""
        killed = self.leftovers()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = self.clock() + timeout
        left = self.leftovers()
        while left and self.clock() < deadline:
            time.sleep(0.1)  # waiting for the kernel to finish the kills; bounded
            left = self.leftovers()
        return killed, left


def marked(marker: str, skip: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Pids of live processes whose environment holds MARKER=marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone, a zombie, or not ours to read
    return found


def _ancestors() -> set[int]:
    pids = {os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            # The parent pid is the field after the parenthesised command name.
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _stop(child: Child, clock: Callable[[], float], hurry: Callable[[], bool]) -> None:
    process = child.process
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        deadline = clock() + child.stop_timeout
        while process.poll() is None and clock() < deadline and not hurry():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
    # The whole group: a child's own children (redis has none, celery's pool may).
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
