"""What the benchmarks share: nearest-rank percentiles, progress lines, and the
main() that runs one in a temporary directory and prints (or writes) its report."""

from __future__ import annotations

import json
import math
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol


class SanityError(RuntimeError):
    """The system under test did not do what the benchmark set up."""


class Report(Protocol):
    def as_json(self) -> dict[str, Any]: ...


def step(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank: with 50 samples p99 is the slowest one."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_benchmark(name: str, run: Callable[[Path], Report], render: Callable[[Any], str],
                  json_path: Path | None) -> int:
    """Exit 0 with a report (a target may be missed), 1 on a sanity failure, 130 if stopped."""
    # SIGTERM (e.g. make being stopped) unwinds like Ctrl-C, so the children are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            report = run(Path(tmp))
    except SanityError as error:
        print(f"{name}: SANITY CHECK FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    print(render(report))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0


def proc_status_kb(pid: int, key: str) -> int:
    """A kB figure (VmRSS, VmHWM) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/{pid}/status")
