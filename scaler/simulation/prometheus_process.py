"""A private Prometheus for one simulation: started on a free loopback port with its own
empty TSDB, fed through remote write, queried, then stopped and its files removed.

It scrapes nothing (its config has no scrape jobs), keeps everything for 100 years
(simulated time may lie years ahead of the clock) and never outlives this process: it
runs in a session of its own, so a Ctrl-C in the terminal does not reach it mid-run,
and on Linux the kernel sends it SIGTERM if we die without stopping it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


class PrometheusStartError(RuntimeError):
    """Prometheus could not be started (one line, with the last line of its log)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child before exec: if we die without stopping it, the kernel sends
    # it SIGTERM.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class LocalPrometheus:
    """A Prometheus process of our own (a context manager: started on entry, stopped on
    exit). Its files go to `directory`, or to a temporary directory removed at stop().

    Start it from a thread that lives as long as the simulation (the main one): the
    kernel's parent-death signal follows the thread that started it.
    """

    def __init__(
        self,
        binary: str = "prometheus",
        directory: Path | None = None,
        *,
        lookback: str | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.binary = binary
        self.directory = None if directory is None else Path(directory)
        self.lookback = lookback
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._temporary: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path | None:
        """The file Prometheus logs to (None before start())."""
        return None if self.directory is None else self.directory / "prometheus.log"

    def start(self) -> LocalPrometheus:
        """Start Prometheus and wait until it is ready; PrometheusStartError if it is
        not installed, exits, or is not ready within ready_timeout seconds."""
        if self.process is not None:
            return self
        path = shutil.which(self.binary)
        if path is None:
            where = "on PATH" if os.sep not in self.binary else "or not executable"
            raise PrometheusStartError(
                f"{self.binary} not found {where}; install it (apt-get install prometheus) "
                f"or pass --prometheus-binary"
            )
        if self.directory is None:
            self._temporary = Path(tempfile.mkdtemp(prefix="taskqueue-simulate-"))
            self.directory = self._temporary
        try:
            attempts = 1
            # Another process may take the free port before Prometheus binds it.
            while not self._start(path, retry_port=attempts < _PORT_ATTEMPTS):
                attempts += 1
                self.port = free_port()
            return self
        except BaseException:
            self.stop()
            raise

    def _start(self, path: str, *, retry_port: bool) -> bool:
        """One attempt; False if the port was taken meanwhile (and retry_port)."""
        assert self.directory is not None and self.log is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        directory = self.directory.resolve()
        config = directory / "prometheus.yml"
        # No scrape jobs: every sample arrives through remote write. JSON is YAML.
        config.write_text(json.dumps({"scrape_configs": []}) + "\n")
        argv = [
            path,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
            "--storage.tsdb.retention.time=100y",
        ]
        if self.lookback is not None:
            argv.append(f"--query.lookback-delta={self.lookback}")
        try:
            with self.log.open("wb") as log:
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=directory,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
        except OSError as error:
            raise PrometheusStartError(
                f"cannot run {path}: {error.strerror or error}"
            ) from None
        process = self.process
        deadline = time.monotonic() + self.ready_timeout
        with requests.Session() as session:
            while True:
                if process.poll() is not None:
                    self.process = None
                    last = self._last_log_line()
                    if retry_port and "address already in use" in last:
                        return False
                    raise PrometheusStartError(
                        f"prometheus exited with code {process.returncode}: {last}"
                    )
                with contextlib.suppress(requests.RequestException):
                    if session.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200:
                        return True
                if time.monotonic() > deadline:
                    raise PrometheusStartError(
                        f"prometheus was not ready within {self.ready_timeout:g} s: "
                        f"{self._last_log_line()}"
                    )
                # Polls the starting process; returns at once if it exits.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=_POLL_INTERVAL)

    def _last_log_line(self) -> str:
        try:
            text = self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "(nothing in its log)"

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s; removes the temporary directory start() made.
        Safe to call more than once."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            if self.directory == self._temporary:
                self.directory = None
            self._temporary = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
