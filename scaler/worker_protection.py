"""Keep an ECS task safe from scale-in while its Celery worker holds work.

On ECS the service, not the scaler, picks which task to stop on scale-in. The
supported way to keep a busy task alive is task scale-in protection, set from
inside the task through the ECS agent's endpoint. One call in the Celery app:

    from scaler.worker_protection import protect_ecs_workers
    protect_ecs_workers(app)

and each worker protects its task as a task arrives, before the task is reserved
or run (the `task_received` signal, in the consumer), renews the protection while
it holds any task (reserved, prefetched or running; not one waiting for its ETA,
which a warm shutdown gives back to the queue), and releases it once it has held
nothing for `release_after` seconds. If the agent refuses protection, the worker
stops consuming, finishes the tasks it holds, and exits, so ECS replaces it with a
task that can be protected. Outside ECS (no ECS_AGENT_URI) it does nothing and says so once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import requests

log = logging.getLogger(__name__)

AGENT_PATH = "/task-protection/v1/state"
# Error codes the agent passes on from the ECS API that say "try again", not "no".
_TRANSIENT_CODES = frozenset({
    "ThrottlingException", "RequestCanceled", "RequestError", "RequestTimeout",
    "ServerException", "InternalFailure", "ServiceUnavailable",
})

Outcome = Literal["ok", "refused", "transient"]


@dataclass(frozen=True)
class AgentAnswer:
    outcome: Outcome
    detail: str


class EcsAgent:
    """The task protection endpoint of the ECS container agent."""

    def __init__(self, uri: str, timeout: float = 2.0) -> None:
        self.url = uri.rstrip("/") + AGENT_PATH
        self.timeout = timeout
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def set(self, enabled: bool, expires_in_minutes: int | None = None) -> AgentAnswer:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled and expires_in_minutes is not None:
            body["ExpiresInMinutes"] = expires_in_minutes
        try:
            response = self._session.put(self.url, json=body, timeout=self.timeout)
        except requests.RequestException as error:
            return AgentAnswer("transient", f"agent unreachable: {type(error).__name__}")
        return _answer(response.status_code, response.content)


def _answer(status: int, content: bytes) -> AgentAnswer:
    """The agent's JSON reply: `protection` on success, `failure` or `error` otherwise."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, Mapping):
        kind: Outcome = "transient" if status >= 500 or status == 429 else "refused"
        return AgentAnswer(kind, f"HTTP {status}, body is not a JSON object")
    if 200 <= status < 300 and isinstance(body.get("protection"), Mapping):
        state = body["protection"]
        return AgentAnswer("ok", f"ProtectionEnabled={state.get('ProtectionEnabled')} "
                                 f"ExpirationDate={state.get('ExpirationDate')}")
    failure = body.get("failure")
    if isinstance(failure, Mapping):
        # e.g. TASK_NOT_VALID: not a service's task, or not on ECS at all.
        return AgentAnswer("refused", f"failure {failure.get('Reason')}: {failure.get('Detail')}")
    error = body.get("error")
    if isinstance(error, Mapping):
        code = str(error.get("Code"))
        kind = "transient" if code in _TRANSIENT_CODES or status >= 500 else "refused"
        return AgentAnswer(kind, f"error {code}: {error.get('Message')}")
    kind = "transient" if status >= 500 or status == 429 else "refused"
    return AgentAnswer(kind, f"HTTP {status} without protection, failure or error")


class WorkerProtection:
    """When to protect, renew and release, given what the worker holds; thread-safe.

    `work_arrived` runs in the consumer as a task comes in; `tick` runs every
    second or so from a thread of its own. Both call the agent under one lock, so
    the calls are made one at a time and in order.
    """

    def __init__(
        self,
        agent: Any,
        holding: Callable[[], bool],
        *,
        expires_in_minutes: int = 60,
        renew_every: float | None = None,
        release_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] = lambda detail: None,
        retry_after: float = 5.0,
    ) -> None:
        if not 1 <= expires_in_minutes <= 2880:
            raise ValueError(f"expires_in_minutes must be 1..2880 (got {expires_in_minutes})")
        lifetime = expires_in_minutes * 60.0
        renew = lifetime / 2 if renew_every is None else renew_every
        if not 0 < renew < lifetime:
            raise ValueError(f"renew_every must be > 0 and < {lifetime:g}s (got {renew:g})")
        if release_after < 0:
            raise ValueError(f"release_after must be >= 0 (got {release_after:g})")
        self._agent = agent
        self._holding = holding
        self._minutes = expires_in_minutes
        self._lifetime = lifetime
        self._renew_every = renew
        self._release_after = release_after
        self._clock = clock
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._retry_after = retry_after
        self.protected_at: float | None = None  # when the protection in force was set
        self.idle_since: float | None = None
        self.failed_at: float | None = None  # the last transient failure
        self.refused = False

    def _protected(self, now: float) -> bool:
        return self.protected_at is not None and now < self.protected_at + self._lifetime

    def work_arrived(self) -> None:
        with self._lock:
            now = self._clock()
            self.idle_since = None
            # Runs in the consumer's event loop: after a failure, leave the retries to
            # the ticker rather than block the loop on a slow agent for every task.
            recently_failed = (self.failed_at is not None
                               and now - self.failed_at < self._retry_after)
            if not self.refused and not self._protected(now) and not recently_failed:
                self._protect(now)

    def tick(self) -> None:
        with self._lock:
            if self.refused:
                return
            now = self._clock()
            if self._holding():
                self.idle_since = None
                if (self.protected_at is None
                        or now - self.protected_at >= self._renew_every
                        or not self._protected(now)):
                    self._protect(now)
                return
            if self.idle_since is None:
                self.idle_since = now
            if self.protected_at is not None and now - self.idle_since >= self._release_after:
                self._release()

    def close(self) -> None:
        """At worker shutdown: release, so a stopping task never blocks a deployment."""
        with self._lock:
            if self.protected_at is not None and not self.refused:
                self._release()

    def _protect(self, now: float) -> None:
        answer = self._agent.set(True, self._minutes)
        if answer.outcome == "ok":
            if self.protected_at is None:
                log.info("task protected from scale-in for %d min (%s)", self._minutes,
                         answer.detail)
            self.protected_at = now
            self.failed_at = None
        elif answer.outcome == "refused":
            self.refused = True
            log.error("the ECS agent refused task protection (%s)", answer.detail)
            self._on_refused(answer.detail)
        else:
            # Tried again at the next tick; a protection still in force stays.
            self.failed_at = now
            log.warning("task protection not set, will retry: %s", answer.detail)

    def _release(self) -> None:
        answer = self._agent.set(False)
        if answer.outcome == "transient":
            log.warning("task protection not released, will retry: %s", answer.detail)
            return
        if answer.outcome == "refused":
            log.warning("releasing task protection failed (%s); it lapses by itself",
                        answer.detail)
        else:
            log.info("task protection released after %gs idle", self._release_after)
        self.protected_at = None


# --------------------------------------------------------------------------- Celery glue


def _holding() -> bool:
    """Reserved (prefetched or about to run) or running tasks in this worker.

    Tasks waiting in the worker for their ETA do not count: a warm shutdown gives
    them back to the queue, and keeping the task protected until an ETA hours
    away would block scale-in for nothing.
    """
    from celery.worker import state

    # Read directly: a Celery without these would otherwise look idle for ever and
    # protection would be released under a running task.
    return bool(state.reserved_requests) or bool(state.active_requests)


class _CeleryWorker:
    """One worker process's protection: the ticker thread and the exit on refusal."""

    def __init__(self, protection_args: dict[str, Any], agent: EcsAgent, tick: float,
                 exit_on_refusal: bool) -> None:
        self.agent = agent
        on_refused = self._refused if exit_on_refusal else _carry_on
        self.protection = WorkerProtection(agent, _holding, on_refused=on_refused,
                                           **protection_args)
        self.consumer: Any = None
        self._tick = tick
        self._stop = threading.Event()
        self._leaving = False
        self._thread = threading.Thread(target=self._run, name="ecs-task-protection",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.protection.close()
        self.agent.close()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            try:
                self.protection.tick()
                if self._leaving and not _holding():
                    log.warning("refused protection: the tasks held are done; exiting")
                    os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown
                    return
            except Exception:  # the thread must outlive any one failure
                log.exception("task protection tick failed")

    def _refused(self, detail: str) -> None:
        log.error("this worker stops taking tasks, finishes those it holds, and exits")
        self._leaving = True
        consumer = self.consumer
        hub = getattr(consumer, "hub", None)
        if consumer is None or hub is None:
            # No event loop to hand the cancel to: a warm shutdown stops consuming
            # and finishes the running tasks; prefetched ones go back to the queue.
            os.kill(os.getpid(), signal.SIGTERM)
            return

        def cancel_all() -> None:
            try:
                for queue in list(consumer.task_consumer.queues):
                    consumer.cancel_task_queue(queue.name)
            except Exception:  # e.g. no task consumer during a reconnect: leave now
                log.exception("cannot stop consuming; warm shutdown instead")
                os.kill(os.getpid(), signal.SIGTERM)

        # The consumer's channel belongs to its event loop thread.
        hub.call_soon(cancel_all)


def _carry_on(detail: str) -> None:
    log.error("working on without task protection (exit_on_refusal=False)")


def protect_ecs_workers(
    app: Any,
    *,
    expires_in_minutes: int = 60,
    renew_every: float | None = None,
    release_after: float = 10.0,
    tick: float = 1.0,
    exit_on_refusal: bool = True,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Protect each worker's ECS task while it holds tasks (see the module docs).

    `expires_in_minutes` (1-2880): how long one protection lasts if never renewed, so a
    worker that hangs does not block scale-in for ever; renewed every `renew_every`
    seconds (default half of it) while the worker holds tasks; released after
    `release_after` seconds without any. On a refusal the worker stops consuming,
    finishes what it holds and exits, unless `exit_on_refusal` is False: then it logs
    the refusal and works on unprotected (a refusal for a reason every new task meets
    too, such as a missing IAM permission, would otherwise replace the fleet over and
    over). Safe to call in every process that imports the app: only a worker started
    from it does anything.
    """
    from celery import signals

    environ = os.environ if environ is None else environ
    args = {"expires_in_minutes": expires_in_minutes, "renew_every": renew_every,
            "release_after": release_after}
    # Checked now, so a bad argument fails where it is written, not in the worker.
    WorkerProtection(None, lambda: False, **args)
    workers: dict[int, _CeleryWorker] = {}

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        uri = environ.get("ECS_AGENT_URI")
        if getattr(sender, "app", None) is not app or not uri:
            return
        worker = _CeleryWorker(args, EcsAgent(uri), tick, exit_on_refusal)
        workers[id(app)] = worker
        worker.start()

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        worker = workers.get(id(app))
        if worker is None:
            # Said here rather than at worker_init: the worker's logging is set up by now.
            log.info("ECS_AGENT_URI is not set (not on ECS): task protection is off")
            return
        worker.consumer = sender

    def on_task_received(sender: Any = None, **_: Any) -> None:
        worker = workers.get(id(app))
        if worker is not None and getattr(sender, "app", None) is app:
            worker.consumer = sender
            worker.protection.work_arrived()

    def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
        worker = workers.pop(id(app), None)
        if worker is not None:
            worker.stop()

    # weak=False: the receivers are closures that nothing else references.
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.task_received.connect(on_task_received, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
