"""The simulator's private Prometheus: started, found ready, stopped without leftovers;
a missing or failing binary is one clear line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import requests

from scaler.simulation.prometheus_process import LocalPrometheus, PrometheusStartError
from scaler.simulation.remote_write import RemoteWriter
from tests.services import alive, require, wait_for
from tests.workers import REPO

T0 = 1_767_225_600_000


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile makes directories during the test, to see what is left there."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def script(directory: Path, body: str) -> Path:
    path = directory / "fake-prometheus"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def query(prometheus: LocalPrometheus, promql: str, at_ms: int) -> list[str]:
    response = requests.get(
        f"{prometheus.url}/api/v1/query",
        params={"query": promql, "time": at_ms / 1000},
        timeout=10,
    )
    response.raise_for_status()
    return [sample["value"][1] for sample in response.json()["data"]["result"]]


def test_start_then_stop_leaves_nothing_behind(temp_root):
    prometheus = LocalPrometheus(require("prometheus"), lookback="1m")
    with prometheus:
        assert prometheus.url.startswith("http://127.0.0.1:")
        assert requests.get(f"{prometheus.url}/-/ready", timeout=5).status_code == 200
        directory = Path(prometheus.directory)
        assert directory.parent == temp_root
        assert (directory / "prometheus.log").is_file()
        assert (directory / "data").is_dir()
        process = prometheus.process
        assert process is not None
        # A session of its own: the terminal's Ctrl-C does not reach it.
        assert os.getsid(process.pid) == process.pid
        flags = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"--storage.tsdb.retention.time=100y" in flags
        assert b"--web.enable-remote-write-receiver" in flags
        # It scrapes nothing: no targets at all.
        targets = requests.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()
        assert targets["data"]["activeTargets"] == []
        # --query.lookback-delta=1m: a sample is seen for a minute, not the default 5.
        with RemoteWriter(prometheus.url) as writer:
            writer.write([({"__name__": "sim_up"}, [(T0, 1.0)])])
        assert query(prometheus, "sim_up", T0 + 59_000) == ["1"]
        assert query(prometheus, "sim_up", T0 + 61_000) == []
    assert not directory.exists()
    assert not alive(process.pid)
    assert list(temp_root.iterdir()) == []
    prometheus.stop()  # again: nothing to do


def test_a_directory_given_is_kept_even_a_relative_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prometheus = LocalPrometheus(require("prometheus"), Path("run")).start()
    try:
        process = prometheus.process
        assert process is not None
    finally:
        prometheus.stop()
    assert process.returncode is not None
    assert (tmp_path / "run" / "prometheus.log").is_file()
    assert (tmp_path / "run" / "data").is_dir()


def test_a_taken_port_is_replaced_by_another(tmp_path):
    prometheus = LocalPrometheus(require("prometheus"), tmp_path)
    taken = prometheus.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))  # bound is enough: Prometheus cannot bind it
        with prometheus:
            assert prometheus.port != taken
            assert requests.get(f"{prometheus.url}/-/ready", timeout=5).status_code == 200


def test_it_does_not_outlive_a_killed_parent(tmp_path):
    require("prometheus")
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from scaler.simulation.prometheus_process import LocalPrometheus
            prometheus = LocalPrometheus(directory=Path({str(tmp_path)!r})).start()
            print(prometheus.process.pid, flush=True)
            sys.stdin.read()
        """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert alive(pid)
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not alive(pid), what="prometheus to stop after its parent was killed")


@pytest.mark.parametrize("binary", ["no-such-prometheus", "/no/such/dir/prometheus"])
def test_a_missing_binary_names_the_package(binary, temp_root):
    with pytest.raises(PrometheusStartError) as raised:
        LocalPrometheus(binary).start()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{binary} not found")
    assert "apt-get install prometheus" in message and "--prometheus-binary" in message
    assert list(temp_root.iterdir()) == []


def test_a_binary_that_exits_at_once_is_its_code_and_last_log_line(tmp_path, temp_root):
    binary = script(tmp_path, """\
        echo "starting up"
        echo "fatal: cannot open the storage" >&2
        echo
        exit 3
    """)
    prometheus = LocalPrometheus(str(binary))
    with pytest.raises(PrometheusStartError) as raised:
        prometheus.start()
    assert str(raised.value) == "prometheus exited with code 3: fatal: cannot open the storage"
    assert prometheus.process is None
    assert list(temp_root.iterdir()) == []


def test_a_binary_that_never_becomes_ready_is_stopped(tmp_path, monkeypatch):
    binary = script(tmp_path, """\
        echo "waiting for nothing"
        exec sleep 60
    """)
    prometheus = LocalPrometheus(str(binary), tmp_path / "run", ready_timeout=0.3)
    started: list[subprocess.Popen[bytes]] = []
    original = subprocess.Popen

    def recording(*args, **kwargs):
        started.append(original(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", recording)
    with pytest.raises(PrometheusStartError) as raised:
        prometheus.start()
    # (The script's echo may not be in the log yet on a loaded machine: the prefix only.)
    assert str(raised.value).startswith("prometheus was not ready within 0.3 s")
    [process] = started
    assert process.returncode == -signal.SIGTERM
    assert not alive(process.pid)


def test_a_file_that_cannot_be_run_is_one_line(tmp_path):
    binary = tmp_path / "prometheus"
    binary.write_text("not a program\n")
    binary.chmod(0o644)
    with pytest.raises(PrometheusStartError, match="not found or not executable"):
        LocalPrometheus(str(binary)).start()
    binary.write_bytes(b"\x7fELF garbage")
    binary.chmod(0o755)
    with pytest.raises(PrometheusStartError) as raised:
        LocalPrometheus(str(binary), tmp_path / "run").start()
    assert str(raised.value).startswith(f"cannot run {binary}: ")
    assert "\n" not in str(raised.value)
