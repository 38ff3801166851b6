"""The local backend: real processes started, stopped, replaced and cleaned up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaler.config import ConfigError, parse_config
from scaler.ecs import BackendError, ServiceCounts
from scaler.local import LocalBackend, LocalWorkers
from tests.services import alive, live_members, wait_for

FAKE = str(Path(__file__).with_name("fake_worker.py"))


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    made: list[LocalWorkers] = []

    def build(stop_timeout: float = 5.0, **env: str) -> LocalWorkers:
        backend = LocalBackend(command=(sys.executable, FAKE, str(tmp_path), "w{worker}"),
                               env=env, ready_pattern=r"ready$", stop_timeout=stop_timeout)
        workers = LocalWorkers("svc", backend)
        made.append(workers)
        return workers

    yield build
    for workers in made:
        workers.close()


def pid_of(tmp_path: Path, name: str) -> tuple[int, str]:
    path = tmp_path / f"{name}.pid"
    wait_for(path.exists, timeout=10, what=f"{name} to start")
    pid, worker_id = path.read_text().split()
    return int(pid), worker_id


def test_processes_are_pending_until_ready_then_running(make, tmp_path):
    workers = make(FAKE_READY_AFTER="1.5")  # time to check pending first
    workers.set_desired(3)
    assert workers.counts() == ServiceCounts(desired=3, running=0, pending=3)
    wait_for(lambda: workers.counts() == ServiceCounts(3, 3, 0), timeout=10,
             what="three ready workers")
    # {worker} in the command and TASKQUEUE_WORKER_ID number the processes.
    assert [pid_of(tmp_path, f"w{n}")[1] for n in (1, 2, 3)] == ["1", "2", "3"]


def test_scale_in_stops_the_newest_with_sigterm_and_lets_them_finish(make, tmp_path):
    workers = make(FAKE_READY_AFTER="0", FAKE_DRAIN="2.0")
    workers.set_desired(3)
    wait_for(lambda: workers.counts().running == 3, timeout=10, what="three workers")
    pids = {n: pid_of(tmp_path, f"w{n}")[0] for n in (1, 2, 3)}
    workers.set_desired(1)
    # Being stopped counts as neither running nor pending, at once.
    assert workers.counts() == ServiceCounts(1, 1, 0)
    assert alive(pids[2]) and alive(pids[3])  # finishing their "task" (2 s)
    wait_for(lambda: not alive(pids[2]) and not alive(pids[3]), timeout=10,
             what="the stopped workers to finish and exit")
    workers.supervise()
    assert workers.pids() == [pids[1]]
    assert workers.restarts == 0


def test_a_crashed_worker_is_counted_and_replaced(make, tmp_path):
    workers = make(FAKE_READY_AFTER="0")
    workers.set_desired(2)
    wait_for(lambda: workers.counts().running == 2, timeout=10, what="two workers")
    crashed = pid_of(tmp_path, "w1")[0]
    os.kill(crashed, signal.SIGKILL)
    wait_for(lambda: (workers.supervise(), workers.restarts)[1] == 1, timeout=10,
             what="the crash to be noticed")
    assert crashed not in workers.pids()
    # Died within QUICK_EXIT of its start: replaced after a 1 s back-off.
    wait_for(lambda: (workers.supervise(), workers.counts())[1] == ServiceCounts(2, 2, 0),
             timeout=10, what="the replacement to be ready")
    assert pid_of(tmp_path, "w3")[1] == "3"


def test_a_worker_that_ignores_sigterm_is_killed_after_stop_timeout(make, tmp_path):
    workers = make(stop_timeout=0.5, FAKE_READY_AFTER="0", FAKE_IGNORE_TERM="1")
    workers.set_desired(1)
    pid = pid_of(tmp_path, "w1")[0]
    workers.set_desired(0)
    wait_for(lambda: (workers.supervise(), workers.pids())[1] == [], timeout=10,
             what="the stubborn worker to be killed")
    assert not alive(pid)
    assert workers.restarts == 0


def test_close_stops_every_worker_and_leaves_no_process_behind(make, tmp_path):
    workers = make(FAKE_READY_AFTER="0", FAKE_CHILD="1")
    workers.set_desired(2)
    wait_for(lambda: workers.counts().running == 2, timeout=10, what="two workers")
    pids = [pid_of(tmp_path, f"w{n}")[0] for n in (1, 2)]
    children = [int((tmp_path / f"w{n}.child").read_text()) for n in (1, 2)]
    assert all(alive(p) for p in pids + children)
    workers.close()
    # close() reaps the workers themselves; the orphaned children die by the group
    # SIGKILL, which the kernel delivers asynchronously.
    assert not any(alive(p) for p in pids)
    wait_for(lambda: not any(alive(p) for p in children), timeout=5,
             what="the workers' children to die")
    assert [live_members(p) for p in pids] == [[], []]
    workers.set_desired(3)  # closed: nothing starts again
    assert workers.pids() == []


def test_a_command_that_cannot_start_is_an_error_and_counts_nothing(tmp_path, caplog):
    workers = LocalWorkers("svc", LocalBackend(command=(str(tmp_path / "missing"),)))
    with pytest.raises(BackendError) as caught:
        workers.set_desired(2)
    assert str(caught.value) == (
        f"svc: cannot start worker 1 ({tmp_path / 'missing'}): No such file or directory")
    # Not set: the count stays what runs, so the scaler tries again at its next evaluation.
    assert workers.counts() == ServiceCounts(0, 0, 0)
    assert "service=svc cannot start worker 1" in caplog.text
    workers.close()


def test_a_worker_gets_only_what_it_needs_of_the_scalers_environment(tmp_path):
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
               "PROMETHEUS_TOKEN": "s3cret", "AWS_SECRET_ACCESS_KEY": "k3y",
               "LEASE_REDIS_URL": "redis://:pw@r:6379", "CELERY_BROKER_URL": "redis://b:6379/0"}
    dump = tmp_path / "env.json"
    code = f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))"
    backend = LocalBackend(command=(sys.executable, "-c", code), env={"EXTRA": "1"},
                           pass_env=("CELERY_BROKER_URL",))
    workers = LocalWorkers("svc", backend, environ=environ)
    try:
        workers.set_desired(1)
        wait_for(lambda: dump.exists() and dump.read_text(), timeout=10,
                 what="the worker to write its environment")
    finally:
        workers.close()
    seen = json.loads(dump.read_text())
    seen.pop("LC_CTYPE", None)  # Python may set it itself at start-up
    assert seen == {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
                    "CELERY_BROKER_URL": "redis://b:6379/0", "EXTRA": "1",
                    "TASKQUEUE_WORKER_ID": "1"}



def test_a_healthy_worker_does_not_reset_the_backoff_of_ones_that_keep_dying():
    clock = Clock()
    # Worker 1 stays up; every later one exits at once (a port clash, say).
    code = "import sys, time; time.sleep(600) if sys.argv[1] == '1' else sys.exit(3)"
    backend = LocalBackend(command=(sys.executable, "-c", code, "{worker}"))
    workers = LocalWorkers("svc", backend, clock=clock)

    def restarts(n: int) -> bool:
        workers.supervise()
        return workers.restarts == n

    try:
        workers.set_desired(2)
        wait_for(lambda: restarts(1), timeout=10, what="the first exit")  # next start at 1
        clock.now = 1.0
        workers.supervise()
        wait_for(lambda: restarts(2), timeout=10, what="the second exit")  # next at 1 + 2
        clock.now = 12.0  # worker 1 has been up 12 s
        workers.supervise()
        wait_for(lambda: restarts(3), timeout=10, what="the third exit")
        # The third quick failure in a row waits 4 s, not 1 s.
        clock.now = 15.9
        workers.supervise()
        assert len(workers.pids()) == 1
        clock.now = 16.0
        workers.supervise()
        assert len(workers.pids()) == 2
    finally:
        workers.close()

# --------------------------------------------------------------------------- config

LOCAL = """
prometheus: {url: 'http://p:9090'}
services:
  - name: w
    backend: %s
    min: 0
    max: 5
    rules: [{type: per_worker, query: x, target: 1}]
"""


def test_a_local_backend_from_a_command_line_or_a_list():
    text = LOCAL % ("{type: local, command: 'celery -A app worker -n \"w{worker}@%h\"', "
                    "env: {A: 1}, cwd: /srv, ready_pattern: 'ready\\.', stop_timeout: 2m}")
    backend = parse_config(text, {}).services[0].backend
    assert backend == LocalBackend(command=("celery", "-A", "app", "worker", "-n", "w{worker}@%h"),
                                   env={"A": "1"}, cwd="/srv", ready_pattern=r"ready\.",
                                   stop_timeout=120.0)
    listed = parse_config(LOCAL % "{type: local, command: [python, -m, x, 2]}", {})
    assert listed.services[0].backend == LocalBackend(command=("python", "-m", "x", "2"))


@pytest.mark.parametrize(
    ("backend", "error"),
    [("{type: local}", "services[0].backend.command: required"),
     ("{type: local, command: []}", "services[0].backend.command: must name a program to run"),
     ("{type: local, command: 'a \"b'}",
      "services[0].backend.command: cannot split into arguments: No closing quotation "
      "(got 'a \"b')"),
     ("{type: local, command: x, ready_pattern: '('}",
      "services[0].backend.ready_pattern: not a valid regular expression: missing ), "
      "unterminated subpattern at position 0 (got '(')"),
     ("{type: local, command: x, stop_timeout: 0}",
      "services[0].backend.stop_timeout: must be > 0 (got 0)"),
     ("{type: local, command: x, cluster: c}", "services[0].backend.cluster: unknown key"),
     ("{type: local, command: x, env: {A: [1]}}",
      "services[0].backend.env: must map variable names to string values")],
)
def test_local_backend_errors(backend, error):
    with pytest.raises(ConfigError) as caught:
        parse_config(LOCAL % backend, {})
    assert caught.value.errors == [error]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_command_that_keeps_dying_at_once_is_restarted_with_backoff():
    clock = Clock()
    dying = LocalBackend(command=(sys.executable, "-c", "raise SystemExit(3)"))
    workers = LocalWorkers("svc", dying, clock=clock)
    try:
        workers.set_desired(1)

        def restarts(n: int) -> bool:
            workers.supervise()
            return workers.restarts == n

        wait_for(lambda: restarts(1), timeout=10, what="the first exit")
        assert workers.pids() == []  # next start in 1 s
        clock.now = 0.9
        workers.supervise()
        assert workers.pids() == []
        clock.now = 1.0
        workers.supervise()
        assert len(workers.pids()) == 1
        wait_for(lambda: restarts(2), timeout=10, what="the second exit")
        clock.now = 2.9  # then 2 s
        workers.supervise()
        assert workers.pids() == []
        clock.now = 3.0
        workers.supervise()
        assert len(workers.pids()) == 1
    finally:
        workers.close()


def test_a_failed_scale_up_keeps_the_count_asked_before(tmp_path):
    # Worker 1 runs; the command then disappears, so a scale-up cannot start worker 2.
    script = tmp_path / "worker"
    script.symlink_to(shutil.which("sleep") or "/bin/sleep")  # exec'd whole: no later read
    workers = LocalWorkers("svc", LocalBackend(command=(str(script), "600")))
    try:
        workers.set_desired(1)
        script.unlink()
        with pytest.raises(BackendError):
            workers.set_desired(3)
        assert workers.counts() == ServiceCounts(1, 1, 0)
    finally:
        workers.close()
