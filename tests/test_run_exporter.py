"""`make run` (scripts/run-exporter.sh): every URL it prints is where the exporter answers."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from exporter import metric_names as m
from tests.scrape import parse_text, value
from tests.services import RedisServer, free_port, get, live_members, wait_for

REPO = Path(__file__).resolve().parent.parent
URL = re.compile(r"http://\S+/metrics")


class Run:
    """The script (or make) in its own session, as a terminal runs it; Ctrl-C stops it."""

    def __init__(self, argv: list[str], log: Path, **env: str) -> None:
        self.log = log
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith("TASKQUEUE_EXPORTER_") and k not in ("PORT", "MAKEFLAGS")}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=REPO, env={**environ, **env}, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def started(self) -> str:
        wait_for(lambda: self.process.poll() is not None or "exporting" in self.output(),
                 timeout=30, what="the exporter to start")
        assert self.process.poll() is None, self.output()
        return self.output()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def another_terminal() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("BROKER_URL", "TASKQUEUE_EXPORTER_BROKER_URL")}


def answers(url: str) -> bool:
    status, text = get(url)
    return status == 200 and value(parse_text(text), m.SCRAPE_SUCCESS.name) == 1


def test_make_run_prints_where_it_listens_and_a_working_publish_line(
        redis_server: RedisServer, redis_client, tmp_path: Path) -> None:
    port = free_port()
    run = Run(["make", "--no-print-directory", "run"], tmp_path / "run.log",
              BROKER_URL=redis_server.url, PORT=str(port))
    try:
        output = run.started()
        urls = URL.findall(output)
        assert urls == [f"http://127.0.0.1:{port}/metrics"], output
        # The README's next step, as the script spells it, run from another terminal:
        # one where BROKER_URL is not set.
        (line,) = [line for line in output.splitlines() if line.startswith("try:")]
        publish = subprocess.run(["bash", "-c", line.removeprefix("try:").strip()], cwd=REPO,
                                 env=another_terminal(), capture_output=True, text=True,
                                 timeout=60)
        assert publish.returncode == 0, publish.stdout + publish.stderr
        samples = parse_text(get(urls[0])[1])
    finally:
        run.stop()
    assert value(samples, m.QUEUE_DEPTH.name, system="celery", queue="celery") == 4
    assert value(samples, m.QUEUE_DEPTH.name, system="rq", queue="reports") == 1
    # make itself dies of the Ctrl-C, as in a terminal; the exporter stops cleanly.
    assert "exporter: stopped" in run.output(), run.output()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # EXPORTER_ARGS come last: their --port wins over PORT.
        ({"PORT": "{a}", "EXPORTER_ARGS": "--listen-address 127.0.0.1 --port {b}"},
         "http://127.0.0.1:{b}/metrics"),
        ({"PORT": "{a}", "EXPORTER_ARGS": "--listen-address ::"}, "http://[::1]:{a}/metrics"),
        # The exporter's own variables, when PORT is not set.
        ({"TASKQUEUE_EXPORTER_LISTEN_ADDRESS": "::1", "TASKQUEUE_EXPORTER_PORT": "{b}"},
         "http://[::1]:{b}/metrics"),
        # Where it listens is said at any log level.
        ({"PORT": "{a}", "TASKQUEUE_EXPORTER_LOG_LEVEL": "error"}, "http://127.0.0.1:{a}/metrics"),
    ],
    ids=["exporter-args-port", "ipv6-wildcard", "exporter-variables", "log-level-error"],
)
def test_every_url_the_script_prints_answers(env: dict[str, str], expected: str,
                                             redis_server: RedisServer, redis_client,
                                             tmp_path: Path) -> None:
    ports = {"a": free_port(), "b": free_port()}
    env = {key: text.format(**ports) for key, text in env.items()}
    run = Run([str(REPO / "scripts/run-exporter.sh")], tmp_path / "run.log",
              BROKER_URL=redis_server.url, **env)
    try:
        output = run.started()
        urls = URL.findall(output)
        assert urls == [expected.format(**ports)], (shlex.join(env.values()), output)
        for url in urls:
            assert answers(url), (url, output)
    finally:
        run.stop()


def test_the_broker_password_is_not_on_any_command_line(tmp_path: Path) -> None:
    # Any user of the machine reads command lines (ps, /proc/<pid>/cmdline).
    password = "Top-Secret-9"
    server = RedisServer(tmp_path, password=password).start()
    port = free_port()
    run = Run([str(REPO / "scripts/run-exporter.sh")], tmp_path / "run.log",
              BROKER_URL=server.url, PORT=str(port))
    try:
        run.started()
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"),
                 what="the exporter to read the broker")
        command_lines = {}
        for pid in live_members(run.process.pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                command_lines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        run.stop()
        server.stop()
    assert any(b"taskqueue-exporter" in line for line in command_lines.values()), command_lines
    assert not [line for line in command_lines.values() if password.encode() in line]
    assert password not in run.output()
    # The publish line cannot name a URL it may not print: it says what to set.
    (line,) = [line for line in run.output().splitlines() if line.startswith("try:")]
    assert line.endswith(f"publish-sample-tasks.py   # reads $BROKER_URL: set it to "
                         f"redis://:***@127.0.0.1:{server.port}/0, with the password (not "
                         "shown here)"), line


PUBLISH = [str(REPO / ".venv/bin/python"), str(REPO / "scripts/publish-sample-tasks.py")]


def test_publish_sample_tasks_reads_the_variables_and_refuses_an_empty_url(
        redis_server: RedisServer, redis_client) -> None:
    for env in ({"BROKER_URL": redis_server.url},
                {"TASKQUEUE_EXPORTER_BROKER_URL": redis_server.url}):
        done = subprocess.run(PUBLISH, env={**another_terminal(), **env}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.endswith(f"to {redis_server.url}\n"), done.stdout
    assert redis_client.llen("reports") == 0 and redis_client.llen("rq:queue:reports") == 2
    # "$BROKER_URL" where it is not set, or set empty: refused, not the default Redis.
    for args, env in (([""], {}), ([], {"BROKER_URL": ""})):
        refused = subprocess.run([*PUBLISH, *args], env={**another_terminal(), **env},
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "is empty: give the broker URL (is BROKER_URL set in this shell?)" in (
            refused.stderr), refused.stderr
    assert redis_client.llen("rq:queue:reports") == 2
