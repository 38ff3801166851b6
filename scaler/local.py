"""The local backend: a service is N worker processes on this machine.

Scale-up starts processes from the configured command; scale-in sends SIGTERM
(Celery's warm shutdown: stop consuming, finish the running tasks) to the newest
ones and lets them finish, with SIGKILL after `stop_timeout` as ECS does. A
process that exits without being asked to is counted and replaced. A process
counts as pending until it prints a line matching `ready_pattern` (when one is
set), then as running; processes being stopped count as neither.

Each process runs in a session of its own, so a Ctrl-C in the scaler's terminal
reaches the scaler only, which then stops its workers in order; and a SIGKILL
can reach the whole group, leaving no child behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from scaler.ecs import BackendError, ServiceCounts

log = logging.getLogger(__name__)
output_log = logging.getLogger("scaler.local.output")

WORKER_PLACEHOLDER = "{worker}"
# A process that dies within this many seconds of its start (or cannot start) delays
# the next start: 1 s, 2 s, 4 s ... up to MAX_BACKOFF, so a broken command is not
# restarted twice a second for ever.
QUICK_EXIT = 10.0
MAX_BACKOFF = 60.0


# What a worker gets from the scaler's own environment: enough to find programs, run
# Python and speak the user's locale. Nothing else passes (the scaler's may hold a
# Prometheus token, AWS keys, a lease's Redis URL); the backend's `env` and `pass_env`
# add what the workers need.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
             "TERM", "PYTHONPATH", "VIRTUAL_ENV")
INHERITED_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class LocalBackend:
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    ready_pattern: str | None = None
    stop_timeout: float = 30.0
    # Names of more variables of the scaler's environment to pass on, as they are.
    pass_env: tuple[str, ...] = ()


def worker_environment(environ: Mapping[str, str], backend: LocalBackend,
                       number: int) -> dict[str, str]:
    """A worker process's whole environment."""
    kept = {k: v for k, v in environ.items()
            if k in INHERITED or k in backend.pass_env or k.startswith(INHERITED_PREFIXES)}
    return {**kept, **backend.env, "TASKQUEUE_WORKER_ID": str(number)}


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes]
    started_at: float
    ready: bool = False
    stopping_at: float | None = None
    reader: threading.Thread | None = None


class LocalWorkers:
    """One service's worker processes; every method is thread-safe."""

    def __init__(self, service: str, backend: LocalBackend,
                 clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None) -> None:
        self.service = service
        self.backend = backend
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._ready = re.compile(backend.ready_pattern) if backend.ready_pattern else None
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._desired = 0
        self._numbers = 0
        self.restarts = 0  # processes that exited unasked and were replaced
        self._closed = False
        self._quick_failures = 0
        self._last_quick_failure: float | None = None
        self._no_start_before = 0.0
        self._start_error: str | None = None

    # ---------------------------------------------------------------- the backend's API

    def counts(self) -> ServiceCounts:
        with self._lock:
            self._reap()
            live = [w for w in self._workers if w.stopping_at is None]
            running = sum(1 for w in live if w.ready)
            return ServiceCounts(self._desired, running, len(live) - running)

    def set_desired(self, count: int) -> None:
        """Starts or stops processes to reach `count`; BackendError when a process cannot
        be started at all (the command is missing, not executable...): the desired count
        is then what is running, and the supervisor does not retry on its own."""
        with self._lock:
            if self._closed:
                return
            before, self._desired = self._desired, count
            self._start_error = None
            self._reconcile()
            if self._start_error is not None:
                # Not set: what was asked before, or what runs if more (never lower: a
                # worker waiting out its restart back-off is still wanted).
                live = len([w for w in self._workers if w.stopping_at is None])
                self._desired = max(before, live)
                raise BackendError("other", self.service, self._start_error)

    def supervise(self) -> None:
        """Reap exits, replace crashed processes, kill those past stop_timeout."""
        with self._lock:
            self._reap()
            if not self._closed:
                self._reconcile()

    def close(self) -> None:
        """Stop every process: SIGTERM, then SIGKILL to its group after stop_timeout."""
        with self._lock:
            self._closed = True
            self._desired = 0
            workers = list(self._workers)
            for worker in workers:
                self._terminate(worker)
        # Real time, not the injected clock: this waits on real processes.
        deadline = time.monotonic() + self.backend.stop_timeout
        for worker in workers:
            while not _exited(worker.process) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _exited(worker.process):
                log.warning("service=%s worker %d did not stop within %gs: killed",
                            self.service, worker.number, self.backend.stop_timeout)
            _kill_group(worker.process)
            worker.process.wait()
            if worker.reader is not None:
                worker.reader.join(timeout=5)
        with self._lock:
            self._workers.clear()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers]

    # ---------------------------------------------------------------- internals (lock held)

    def _reconcile(self) -> None:
        live = [w for w in self._workers if w.stopping_at is None]
        if self._clock() >= self._no_start_before:
            for _ in range(self._desired - len(live)):
                if not self._start():
                    break
        if len(live) > self._desired:
            # Newest first: the oldest have warmed up and are most likely busy anyway;
            # a warm shutdown lets a busy one finish either way.
            for worker in sorted(live, key=lambda w: w.number)[self._desired:]:
                self._terminate(worker)

    def _failed_quickly(self) -> None:
        self._quick_failures += 1
        delay = min(MAX_BACKOFF, 2.0 ** (self._quick_failures - 1))
        self._last_quick_failure = self._clock()
        self._no_start_before = self._last_quick_failure + delay
        log.warning("service=%s: next worker start in %gs (%d quick failures in a row)",
                    self.service, delay, self._quick_failures)

    def _start(self) -> bool:
        self._numbers += 1
        number = self._numbers
        command = [part.replace(WORKER_PLACEHOLDER, str(number))
                   for part in self.backend.command]
        env = worker_environment(self._environ, self.backend, number)
        try:
            process = subprocess.Popen(
                command, cwd=self.backend.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as error:
            self._start_error = (f"cannot start worker {number} ({command[0]}): "
                                 f"{error.strerror or error}")
            log.error("service=%s %s", self.service, self._start_error)
            self._failed_quickly()
            return False
        worker = _Worker(number, process, self._clock(), ready=self._ready is None)
        worker.reader = threading.Thread(target=self._read, args=(worker,),
                                         name=f"{self.service}-{number}", daemon=True)
        worker.reader.start()
        self._workers.append(worker)
        log.info("service=%s started worker %d (pid %d)", self.service, number, process.pid)
        return True

    def _terminate(self, worker: _Worker) -> None:
        # _exited, not poll(): poll() would reap it, and _reap must kill its group
        # while its pid (the group's id) is still taken.
        if worker.stopping_at is not None or _exited(worker.process):
            return
        worker.stopping_at = self._clock()
        log.info("service=%s stopping worker %d (pid %d): SIGTERM", self.service,
                 worker.number, worker.process.pid)
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        now = self._clock()
        for worker in list(self._workers):
            # A worker started since the last quick failure stayed up: the command works.
            # (One that was up before proves nothing about the ones that keep dying.)
            if (worker.stopping_at is None and now - worker.started_at >= QUICK_EXIT
                    and (self._last_quick_failure is None
                         or worker.started_at >= self._last_quick_failure)):
                self._quick_failures = 0
            if not _exited(worker.process):
                if (worker.stopping_at is not None
                        and now - worker.stopping_at >= self.backend.stop_timeout):
                    log.warning("service=%s worker %d did not stop within %gs: SIGKILL",
                                self.service, worker.number, self.backend.stop_timeout)
                    _kill_group(worker.process)
                continue
            # The main process is gone but not yet reaped, so its pid (the group's id)
            # cannot be reused: whatever it left in its group goes too, then reap it.
            _kill_group(worker.process)
            code = worker.process.wait()
            self._workers.remove(worker)
            if worker.stopping_at is not None:
                log.info("service=%s worker %d stopped (exit code %d)", self.service,
                         worker.number, code)
            elif not self._closed:
                self.restarts += 1
                log.warning("service=%s worker %d exited unasked (exit code %d): replacing it",
                            self.service, worker.number, code)
                if now - worker.started_at < QUICK_EXIT:
                    self._failed_quickly()

    def _read(self, worker: _Worker) -> None:
        stream = worker.process.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not worker.ready and self._ready is not None and self._ready.search(line):
                worker.ready = True
            output_log.debug("service=%s worker=%d: %s", self.service, worker.number, line)
        stream.close()


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it (its pid stays taken)."""
    if process.returncode is not None:
        return True
    try:
        found = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return found is not None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class LocalFleet:
    """The local services, and the thread that keeps their processes as asked."""

    def __init__(self, services: Mapping[str, LocalBackend], tick: float = 0.5) -> None:
        self.workers = {name: LocalWorkers(name, backend) for name, backend in services.items()}
        self._stop = threading.Event()
        self._tick = tick
        self._thread: threading.Thread | None = None
        if self.workers:
            self._thread = threading.Thread(target=self._run, name="local-workers", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            for workers in self.workers.values():
                try:
                    workers.supervise()
                except Exception:  # the supervisor must outlive any one failure
                    log.exception("service=%s supervising workers failed", workers.service)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        threads = [threading.Thread(target=w.close) for w in self.workers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
