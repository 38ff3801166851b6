"""A simulation's result as a table for people and as JSON for machines."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from scaler.simulation.simulate import SimulationResult


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{seconds % 60:02.0f}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _hours(seconds: float) -> str:
    return f"{seconds:,.0f} worker-s ({seconds / 3600:,.2f} worker-h)"


def format_table(result: SimulationResult) -> str:
    w, b = result.waits, result.bound
    start = datetime.fromtimestamp(result.start, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    rows = [
        ("service", result.service),
        ("workload", result.workload),
        ("simulated", f"{_duration(result.duration)} from {start}"),
        ("tasks", f"{result.tasks:,}" + (f" ({result.unfinished:,} unfinished)"
                                         if result.unfinished else "")),
        ("worker time", _hours(result.worker_seconds)),
        ("lower bound", f"{_hours(b.worker_seconds)}; used {result.bound_ratio:.2f}x"),
        ("task wait p50", _duration(w.p50)),
        ("task wait p95", _duration(w.p95)),
        ("task wait p99", _duration(w.p99)),
        ("task wait max", _duration(w.max)),
        (f"waited > {_duration(w.slo)}", f"{w.over_slo:.2%}"),
        ("scaling actions", f"{result.scale_ups + result.scale_downs} "
                            f"({result.scale_ups} up, {result.scale_downs} down)"),
        ("peak workers", f"{result.peak_running} running, {result.peak_desired} desired"),
    ]
    if result.requeued:
        rows.append(("requeued tasks", f"{result.requeued:,} (stopped mid-task, ran again)"))
    if result.failed_evaluations:
        rows.append(("failed evaluations",
                     f"{result.failed_evaluations} ({result.warmup_failures} before the first "
                     f"that worked); first: {result.first_error}"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(f"{'':<{width}}  (lower bound: {_duration(b.work_seconds)} of work per slot, "
                 + (f"at least {b.needed} workers at once, {b.launches} launches)"
                    if b.needed is not None else
                    f"no fleet within max keeps every wait under {_duration(w.slo)})"))
    return "\n".join(lines)


def to_json(result: SimulationResult) -> dict[str, Any]:
    """Stable keys; times in seconds."""
    w, b = result.waits, result.bound
    return {
        "service": result.service,
        "workload": result.workload,
        "start": result.start,
        "duration_seconds": result.duration,
        "tasks": result.tasks,
        "unfinished_tasks": result.unfinished,
        "worker_seconds": result.worker_seconds,
        "lower_bound": {"worker_seconds": b.worker_seconds, "work_seconds": b.work_seconds,
                        "workers_needed": b.needed, "launches": b.launches,
                        "ratio": result.bound_ratio},
        "wait_seconds": {"p50": w.p50, "p95": w.p95, "p99": w.p99, "max": w.max},
        "slo_seconds": w.slo,
        "share_over_slo": w.over_slo,
        "scaling_actions": {"up": result.scale_ups, "down": result.scale_downs},
        "peak_workers": {"running": result.peak_running, "desired": result.peak_desired},
        "requeued_tasks": result.requeued,
        "failed_evaluations": result.failed_evaluations,
        "warmup_failures": result.warmup_failures,
        "first_error": result.first_error,
    }
