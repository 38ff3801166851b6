"""Real Celery and RQ worker processes for the integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def celery_worker(
    broker_url: str, log: Path, transport_options: dict[str, Any] | None = None,
    queues: str = "celery",
) -> WorkerProcess:
    # The threads pool keeps the consumer loop free while a task blocks, so the
    # worker prefetches exactly as a prefork worker would, in one process.
    args = [
        str(BIN / "celery"), "-A", "tests.celery_app", "worker", "-P", "threads", "-c", "1",
        "-Q", queues, "--without-heartbeat", "--without-gossip", "--without-mingle",
        "-l", "warning",
    ]
    env = _env(
        TQ_TEST_BROKER_URL=broker_url,
        TQ_TEST_TRANSPORT_OPTIONS=json.dumps(transport_options or {}),
    )
    return WorkerProcess(args, env, log)


def rq_worker(redis_url: str, queue: str, log: Path, burst: bool = False) -> WorkerProcess:
    args = [str(BIN / "rq"), "worker", "--url", redis_url, "--worker-class", "rq.SimpleWorker",
            "--disable-job-desc-logging", queue]
    if burst:
        args.append("--burst")
    return WorkerProcess(args, _env(), log)
