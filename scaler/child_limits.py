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
import os
import resource
import signal
import sys

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
