"""Real services for the tests: started on free ports in temp dirs, stopped after."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import requests

from demo.stack import free_port
from tests.scrape import parse_text

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(binary: str) -> str:
    """Path of a binary the test needs: skip without it, but fail in CI."""
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed (make test installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll until condition() returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as error:  # the condition may raise until the service is up
            last_error = error
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition}"
        + (f" (last error: {last_error})" if last_error else "")
    )


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, made with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [require("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    # With both, TLS only (rediss://); the certificate is its own CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls_cert:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls_cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        if self.tls_cert:
            return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                               ssl=True, ssl_ca_certs=str(self.tls_cert))
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> RedisServer:
        args = [
            require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
        ]
        if self.tls_cert and self.tls_key:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                     str(self.tls_cert), "--tls-key-file", str(self.tls_key),
                     "--tls-ca-cert-file", str(self.tls_cert), "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = self.client()
        wait_for(probe.ping, timeout=30, what=f"redis-server on port {self.port}")
        probe.close()
        return self

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


@dataclass
class PrometheusServer:
    """A real prometheus scraping `targets` ("host:port", path /metrics)."""

    directory: Path
    targets: list[str] = field(default_factory=list)
    scrape_interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # More scrape jobs, by job name ("targets" is the job of `targets`), and rule files
    # to load (evaluated every scrape_interval).
    jobs: dict[str, list[str]] = field(default_factory=dict)
    rule_files: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusServer:
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": list(targets)}]}
                for name, targets in {"targets": self.targets, **self.jobs}.items()
                if targets
            ],
        }
        if self.rule_files:
            config["rule_files"] = [str(Path(path).resolve()) for path in self.rule_files]
        config_file = self.directory / "prometheus.yml"
        # JSON is YAML, and needs no YAML library here.
        config_file.write_text(json.dumps(config, indent=2))
        log = self.directory / "prometheus.log"
        with log.open("wb") as log_file:
            self.process = subprocess.Popen(
                [
                    require("prometheus"),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def ready() -> str | None:
            # "exited" is truthy so that a prometheus that died fails now, not at the deadline.
            if process.poll() is not None:
                return "exited"
            response = requests.get(f"{self.url}/-/ready", timeout=1)
            return "ready" if response.status_code == 200 else None

        if wait_for(ready, timeout=30, what=f"prometheus on port {self.port}") == "exited":
            self.process = None
            raise AssertionError(
                f"prometheus exited with code {process.returncode}:\n{log.read_text()[-2000:]}"
            )
        return self

    def query(self, promql: str) -> list[float]:
        """Values of an instant query, read without the scaler's client (which is under test)."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()
        data = response.json()["data"]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(sample["value"][1]) for sample in data["result"]]

    def wait_for_value(
        self, promql: str, predicate: Callable[[list[float]], bool], timeout: float = 10.0
    ) -> list[float]:
        """Poll `promql` until predicate(values) holds (say, until a target was scraped)."""
        values: list[float] = []

        def holds() -> bool:
            nonlocal values
            values = self.query(promql)
            return predicate(values)

        try:
            wait_for(holds, timeout=timeout, what=f"{promql} to match")
        except AssertionError as error:
            raise AssertionError(f"{error}; last values: {values}") from None
        return values

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


class MetricsTarget:
    """A scrape target serving whatever exposition text `text` holds at the time."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not a live worker.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def live_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # After the command: state, ppid, pgrp.
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


EXPORTER = str(Path(sys.executable).parent / "taskqueue-exporter")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Exporter:
    """A real `taskqueue-exporter` process on a free port, its output in a log file."""


    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / f"exporter-{self.port}.log"
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            [EXPORTER, "--listen-address", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        wait_for(lambda: self.process.poll() is not None or get(self.url("/healthz"))[0] == 200,
                 timeout=30, what="the exporter to answer /healthz")
        assert self.process.poll() is None, self.output()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self) -> dict:
        status, text = get(self.url("/metrics"))
        assert status == 200
        return parse_text(text)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=10)
        self._log.close()
        return code

    def output(self) -> str:
        return self.log.read_text()


SCALER = str(Path(sys.executable).parent / "taskqueue-scaler")


class ScalerProcess:
    """A real `taskqueue-scaler run` process at debug level, its log in a file."""

    def __init__(self, config: Path, port: int, *args: str,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.port = port
        self.log = config.parent / f"scaler-{port}-{time.monotonic_ns()}.log"
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            [SCALER, "run", "--config", str(config), "--listen-address", "127.0.0.1",
             "--port", str(port), "--log-level", "debug", *args],
            stdout=subprocess.DEVNULL, stderr=self._log, env={**os.environ, **(env or {})},
            cwd=cwd)

    def text(self) -> str:
        return self.log.read_text()

    def metrics(self) -> dict:
        status, text = get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200
        return parse_text(text)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        self.process.kill()
        self.process.wait()
        self._log.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# 2024-01-01 12:00:00,123 DEBUG scaler.cycle: service=... desired=1 ... new=1 reason=...
DECISION = re.compile(
    r"^(?P<time>\S+ \S+) \w+ scaler\.cycle: service=(?P<service>\S+) desired=(?P<desired>\d+) "
    r".*? new=(?P<new>\d+) reason=(?P<reason>\w+) .*?rules=\[backlog=(?P<value>\S+)->"
)


def decisions(log: str, service: str) -> list[dict[str, Any]]:
    """The decision lines a scaler logged (at debug level) for a service whose first rule is
    named backlog: time (epoch seconds), desired, new, reason and the rule's value."""
    found = []
    for line in log.splitlines():
        match = DECISION.match(line)
        if match and match["service"] == service:
            found.append({
                "time": datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp(),
                "desired": int(match["desired"]), "new": int(match["new"]),
                "reason": match["reason"], "value": match["value"],
            })
    return found
