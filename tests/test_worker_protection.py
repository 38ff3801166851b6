"""ECS task protection for Celery workers: the state machine, the agent's answers, and a
real Celery worker against a stand-in for the agent's documented endpoint."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from scaler.worker_protection import AgentAnswer, WorkerProtection, _answer
from tests.ecs_agent import FakeEcsAgent
from tests.services import RedisServer, wait_for
from tests.workers import BIN, WorkerProcess, _env

# --------------------------------------------------------------------------- state machine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedAgent:
    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[bool, int | None]] = []

    def set(self, enabled: bool, expires_in_minutes: int | None = None) -> AgentAnswer:
        self.calls.append((enabled, expires_in_minutes))
        outcome = self.answers.pop(0) if self.answers else "ok"
        return AgentAnswer(outcome, f"scripted {outcome}")  # type: ignore[arg-type]


def machine(agent: ScriptedAgent, holding: list[bool], clock: Clock,
            refusals: list[str] | None = None) -> WorkerProtection:
    return WorkerProtection(agent, lambda: holding[0], expires_in_minutes=10, renew_every=60,
                            release_after=5, clock=clock,
                            on_refused=(refusals if refusals is not None else []).append)


def test_protects_when_work_arrives_renews_while_holding_and_releases_when_idle():
    agent, holding, clock = ScriptedAgent(), [False], Clock()
    protection = machine(agent, holding, clock)
    protection.tick()
    assert agent.calls == []  # idle and never protected: nothing to release

    protection.work_arrived()
    holding[0] = True
    protection.work_arrived()  # already protected: no second call
    assert agent.calls == [(True, 10)]
    clock.now += 59
    protection.tick()
    assert len(agent.calls) == 1
    clock.now += 1
    protection.tick()  # 60 s after the last protect: renewed
    assert agent.calls == [(True, 10), (True, 10)]

    holding[0] = False
    protection.tick()
    clock.now += 4.9
    protection.tick()
    assert len(agent.calls) == 2  # idle under release_after
    holding[0] = True
    protection.tick()  # work again: the idle clock starts over
    holding[0] = False
    clock.now += 0.2
    protection.tick()
    clock.now += 5
    protection.tick()
    assert agent.calls[-1] == (False, None)
    assert protection.protected_at is None
    protection.tick()
    assert len(agent.calls) == 3


def test_a_refusal_is_reported_once_and_stops_every_later_call():
    agent, holding, clock, refusals = ScriptedAgent("refused"), [True], Clock(), []
    protection = machine(agent, holding, clock, refusals)
    protection.work_arrived()
    protection.tick()
    protection.work_arrived()
    protection.close()
    assert agent.calls == [(True, 10)]
    assert refusals == ["scripted refused"]


def test_a_transient_failure_is_retried_at_the_next_tick_and_keeps_protection_in_force():
    agent, holding, clock = ScriptedAgent("transient", "ok", "transient"), [True], Clock()
    protection = machine(agent, holding, clock)
    protection.work_arrived()
    assert protection.protected_at is None
    protection.tick()
    assert protection.protected_at == 100.0
    clock.now += 60
    protection.tick()  # the renewal fails: the protection set at 100 still holds
    assert protection.protected_at == 100.0 and not protection.refused
    clock.now += 1
    protection.tick()
    assert protection.protected_at == 161.0
    assert len(agent.calls) == 4


def test_after_a_failure_arriving_work_leaves_the_retries_to_the_ticker():
    agent, holding, clock = ScriptedAgent("transient"), [True], Clock()
    protection = machine(agent, holding, clock)
    protection.work_arrived()
    clock.now += 4.9
    protection.work_arrived()  # the consumer's loop is not blocked on the agent again
    assert len(agent.calls) == 1
    protection.tick()
    assert len(agent.calls) == 2 and protection.protected_at == clock.now
    clock.now += 601
    protection.work_arrived()
    assert len(agent.calls) == 3


def test_a_lapsed_protection_is_set_again_when_work_arrives():
    agent, holding, clock = ScriptedAgent(), [False], Clock()
    protection = machine(agent, holding, clock)
    protection.work_arrived()
    clock.now += 601  # 10 min lifetime passed without a tick (a hung ticker)
    protection.work_arrived()
    assert agent.calls == [(True, 10), (True, 10)]


def test_close_releases_a_protected_task():
    agent, holding, clock = ScriptedAgent(), [True], Clock()
    protection = machine(agent, holding, clock)
    protection.work_arrived()
    protection.close()
    assert agent.calls == [(True, 10), (False, None)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"expires_in_minutes": 0}, "expires_in_minutes must be 1..2880 (got 0)"),
     ({"expires_in_minutes": 1, "renew_every": 60}, "renew_every must be > 0 and < 60s (got 60)"),
     ({"release_after": -1}, "release_after must be >= 0 (got -1)")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as caught:
        WorkerProtection(None, lambda: False, **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("status", "body", "outcome", "detail"),
    [
        (200, {"protection": {"ExpirationDate": "2026-11-21T10:00:00Z",
                              "ProtectionEnabled": True, "TaskArn": "arn"}},
         "ok", "ProtectionEnabled=True ExpirationDate=2026-11-21T10:00:00Z"),
        (200, {"failure": {"Arn": "arn", "Detail": None, "Reason": "TASK_NOT_VALID"}},
         "refused", "failure TASK_NOT_VALID: None"),
        (400, {"error": {"Code": "AccessDeniedException", "Message": "not authorized"}},
         "refused", "error AccessDeniedException: not authorized"),
        (500, {"error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
         "transient", "error ThrottlingException: Rate exceeded"),
        (400, {"error": {"Code": "RequestCanceled", "Message": "Timed out"}},
         "transient", "error RequestCanceled: Timed out"),
        (502, "<html>bad gateway</html>", "transient", "HTTP 502, body is not a JSON object"),
        (404, "not found", "refused", "HTTP 404, body is not a JSON object"),
        (200, {}, "refused", "HTTP 200 without protection, failure or error"),
    ],
)
def test_agent_answers(status, body, outcome, detail):
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert _answer(status, content) == AgentAnswer(outcome, detail)


# --------------------------------------------------------------------------- real worker


@pytest.fixture
def agent() -> Iterator[FakeEcsAgent]:
    server = FakeEcsAgent()
    yield server
    server.close()


def start_worker(broker_url: str, queue: str, log: Path, agent_uri: str | None,
                 **protect: float) -> WorkerProcess:
    extra = {"TQ_TEST_BROKER_URL": broker_url, "TQ_TEST_PROTECT": json.dumps(protect)}
    env = _env(**extra)
    env.pop("ECS_AGENT_URI", None)
    if agent_uri is not None:
        env["ECS_AGENT_URI"] = agent_uri
    args = [str(BIN / "celery"), "-A", "tests.protected_app", "worker", "-P", "threads",
            "-c", "1", "-Q", queue, "-n", f"{queue}@%h", "--without-heartbeat",
            "--without-gossip", "--without-mingle", "-l", "info"]
    return WorkerProcess(args, env, log)


def producer(broker_url: str) -> Celery:
    app = Celery("producer", broker=broker_url, set_as_current=False)
    return app


def times(client: redis.Redis, key: str) -> list[float]:
    return [float(v) for v in client.lrange(key, 0, -1)]


@pytest.mark.integration
def test_a_worker_protects_renews_and_releases_around_its_task(
        redis_server: RedisServer, agent: FakeEcsAgent, tmp_path: Path):
    client = redis.Redis.from_url(redis_server.url)
    client.delete("started:long", "finished:long")
    worker = start_worker(redis_server.url, "protect-seq", tmp_path / "worker.log", agent.uri,
                          expires_in_minutes=3, renew_every=1.0, release_after=1.0, tick=0.2)
    app = producer(redis_server.url)
    try:
        app.send_task("tests.hold", ("long", 4.0), queue="protect-seq")
        wait_for(lambda: any(not c.enabled for c in agent.snapshot()), timeout=30,
                 what="the worker to release its protection")
        calls = agent.snapshot()
    finally:
        worker.stop()
        app.close()
    started, finished = times(client, "started:long")[0], times(client, "finished:long")[0]
    enabled = [c for c in calls if c.enabled]
    release = next(c for c in calls if not c.enabled)
    # Protected before the task started, for the minutes asked.
    assert enabled[0].at <= started
    assert {c.minutes for c in enabled} == {3}
    # Renewed about every second while the 4 s task ran.
    renewals = [c for c in enabled[1:] if c.at < finished]
    assert len(renewals) >= 2, calls
    # Not at every 0.2 s tick. (Arrival times at the agent: a slow first call shortens
    # the next gap, so not >= 1.0.)
    assert all(b.at - a.at >= 0.5 for a, b in itertools.pairwise(enabled))
    # Released once it had held nothing for release_after (1 s), and not renewed after.
    assert release.at >= finished + 1.0
    assert release.at <= finished + 10.0
    assert release.minutes is None
    assert all(c.at < release.at for c in enabled)


@pytest.mark.integration
def test_a_refused_worker_finishes_what_it_holds_and_exits(
        redis_server: RedisServer, agent: FakeEcsAgent, tmp_path: Path):
    client = redis.Redis.from_url(redis_server.url)
    names = [f"refused-{i}" for i in range(4)]
    client.delete(*[f"{k}:{n}" for n in names for k in ("started", "finished")])
    agent.refuse = "denied"
    app = producer(redis_server.url)
    for name in names:
        app.send_task("tests.hold", (name, 0.5), queue="protect-refused")
    worker = start_worker(redis_server.url, "protect-refused", tmp_path / "worker.log",
                          agent.uri, tick=0.2)
    try:
        wait_for(lambda: worker.process.poll() is not None, timeout=30,
                 what="the refused worker to exit by itself")
    finally:
        worker.stop()
        app.close()
    assert worker.process.returncode == 0
    finished = [n for n in names if client.llen(f"finished:{n}")]
    started = [n for n in names if client.llen(f"started:{n}")]
    # It finished what it had taken (the task that met the refusal, and the one
    # prefetched with it) and left the rest in the queue: nothing lost, nothing half done.
    assert started == finished
    assert 1 <= len(finished) <= 2
    assert len(finished) + client.llen("protect-refused") == len(names)
    log = (tmp_path / "worker.log").read_text()
    assert "the ECS agent refused task protection (error AccessDeniedException" in log
    assert [c.enabled for c in agent.snapshot()] == [True]


@pytest.mark.integration
def test_outside_ecs_the_worker_says_so_once_and_runs_tasks(
        redis_server: RedisServer, agent: FakeEcsAgent, tmp_path: Path):
    client = redis.Redis.from_url(redis_server.url)
    client.delete("started:plain", "finished:plain")
    log = tmp_path / "worker.log"
    worker = start_worker(redis_server.url, "protect-off", log, None, tick=0.2)
    app = producer(redis_server.url)
    try:
        app.send_task("tests.hold", ("plain", 0.1), queue="protect-off")
        app.send_task("tests.hold", ("plain", 0.1), queue="protect-off")
        wait_for(lambda: client.llen("finished:plain") == 2, timeout=30,
                 what="both tasks to finish")
    finally:
        worker.stop()
        app.close()
    said = "ECS_AGENT_URI is not set (not on ECS): task protection is off"
    assert log.read_text().count(said) == 1
    assert agent.snapshot() == []
