"""A stand-in worker process for the local backend's tests.

Usage: fake_worker.py DIR NAME. Writes DIR/NAME.pid (its pid and TASKQUEUE_WORKER_ID),
prints "worker ready" after FAKE_READY_AFTER seconds, and on SIGTERM waits FAKE_DRAIN
seconds (a task finishing) before exiting 0. FAKE_IGNORE_TERM=1 ignores SIGTERM;
FAKE_CHILD=1 forks a child that ignores SIGTERM too (like a pool process that would be
orphaned) and writes its pid to DIR/NAME.child.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

directory, name = Path(sys.argv[1]), sys.argv[2]
stop = False


def on_term(signum: int, frame: object) -> None:
    global stop
    stop = True


def write(path: Path, text: str) -> None:
    # Whole or not at all: the tests read these files while the worker starts.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


if os.environ.get("FAKE_CHILD") == "1":
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    write(directory / f"{name}.child", str(child))
signal.signal(signal.SIGTERM,
              signal.SIG_IGN if os.environ.get("FAKE_IGNORE_TERM") == "1" else on_term)
write(directory / f"{name}.pid", f"{os.getpid()} {os.environ.get('TASKQUEUE_WORKER_ID')}")
time.sleep(float(os.environ.get("FAKE_READY_AFTER", "0.2")))
print("worker ready", flush=True)
while not stop:
    time.sleep(0.02)
time.sleep(float(os.environ.get("FAKE_DRAIN", "0.3")))
sys.exit(0)
