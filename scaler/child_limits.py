"""What a child process that works on config input gets: limits the kernel enforces, and
an environment without our secrets.

A template or a query can make a library compute for hours or allocate gigabytes; no
check of single operations stops every such input. So that work runs in a child
process (scaler.template_sandbox, scaler.query_checks) that the kernel stops: SIGPROF
ends it after its CPU time (its default action ends the process even inside one long C
or Rust call), and an allocation past its address space fails.

This module imports only the standard library: the children start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# A backstop, in whole seconds, should SIGPROF be blocked: the timer is the limit.
_CPU_BACKSTOP = 5


def environment() -> dict[str, str]:
    """The child's environment: nothing of ours (tokens, credentials), only where our
    modules are (so it imports the libraries we do, however we were installed) and the
    loader path, for a Python whose libpython is found through it."""
    found = {"PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    if "LD_LIBRARY_PATH" in os.environ:
        found["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return found


def mapped_bytes() -> int:
    """Bytes of address space this process maps now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def limit_memory(extra: int) -> None:
    """No more address space than is mapped now plus `extra` bytes (in the child).

    On top of what is mapped already: a locale archive alone may map 200 MiB. Not
    possible everywhere (macOS); the CPU time limit holds anyway.
    """
    limit = mapped_bytes() + extra
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def limit_cpu(seconds: float) -> None:
    """The child ends after `seconds` of CPU time from now (SIGPROF)."""
    resource.setrlimit(resource.RLIMIT_CPU, (_CPU_BACKSTOP, _CPU_BACKSTOP))
    signal.setitimer(signal.ITIMER_PROF, seconds)


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended, user and system."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class ChildRun:
    """What a limited child did with its request: the records it wrote (one JSON object a
    line; {"start": i, "cpu": s} before item i), how it ended, and which item it was on."""

    records: tuple[dict[str, Any], ...]
    returncode: int
    killed: bool  # past the wall-clock backstop
    stderr: bytes
    running: int | None  # the item it had started and not finished
    cpu_before: float  # CPU time the items before the running one took


def run(command: list[str], request: bytes, wall_seconds: float) -> ChildRun:
    """Runs a child that reads `request` on stdin, with our limited environment, and
    reads what it wrote. OSError when it cannot be started. Whatever happens (a timeout,
    Ctrl-C), no child is left behind."""
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=environment())
    killed = False
    try:
        out, err = child.communicate(request, timeout=wall_seconds)
    except subprocess.TimeoutExpired:
        child.kill()
        killed = True
        out, err = child.communicate()
    finally:
        if child.poll() is None:  # interrupted (Ctrl-C)
            child.kill()
            child.wait()
    records: list[dict[str, Any]] = []
    running: int | None = None
    cpu_before = 0.0
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            break  # cut short by the kill
        if "start" in record:
            running, cpu_before = record["start"], record["cpu"]
        else:
            records.append(record)
            running = None
    return ChildRun(tuple(records), child.returncode, killed, err, running, cpu_before)
