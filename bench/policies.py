"""`make bench-policies`: our recommended config against the peers' algorithms.

Every policy runs through `taskqueue-scaler simulate`'s closed loop (a real
Prometheus, the production scaler) on the same workloads with the same seed:
steady traffic with noise, a daily curve and sharp bursts. Writes
bench/results/policies.md, policies.json and one PNG per workload, and exits 1 if
ours misses the bar on any workload:

- its share of tasks over the objective is no higher than the best peer's;
- it uses less worker time than every peer that meets the objective;
- it is within 1.3x of the lower bound.

Usage: python bench/policies.py [--only WORKLOAD] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scaler.config import load_config  # noqa: E402
from scaler.simulation.plot import plot_policies  # noqa: E402
from scaler.simulation.prometheus_process import LocalPrometheus  # noqa: E402
from scaler.simulation.report import to_json  # noqa: E402
from scaler.simulation.simulate import (  # noqa: E402
    SimOptions,
    SimulationResult,
    pick_service,
    simulate,
)
from scaler.simulation.workload import (  # noqa: E402
    load_workload,
    parse_distribution,
    with_durations,
)

OURS = "ours (examples/scaler-recommended.yml)"
POLICIES = {
    OURS: ROOT / "examples" / "scaler-recommended.yml",
    "KEDA-like": ROOT / "bench" / "policies" / "keda.yml",
    "Judoscale-like": ROOT / "bench" / "policies" / "judoscale.yml",
    "blog threshold": ROOT / "bench" / "policies" / "blog.yml",
    "fixed at max": ROOT / "bench" / "policies" / "fixed.yml",
}
SERVICE = "celery-default"
# One worker: 4 slots, tasks of 3 s on average (lognormal), 30-90 s from launch to
# work (ECS); tasks should start within 5 minutes.
SERVICE_TIME = "lognormal:mean=3s,sigma=0.5"
CONCURRENCY = 4
STARTUP = "uniform:min=30s,max=90s"
SLO = 300.0
RATIO = 1.3


@dataclass(frozen=True)
class Case:
    name: str
    spec: str


WORKLOADS = (
    Case("steady", "steady:rate=8/s,noise=0.3,duration=2h"),
    Case("daily", "diurnal:base=0.5/s,peak=20/s,period=24h,peak_at=14h,noise=0.2"),
    Case("bursts", "burst:base=2/s,peak=30/s,every=30m,length=3m,duration=3h"),
)


def run_one(config_path: Path, case: Case, seed: int) -> SimulationResult:
    config = load_config(str(config_path), {})
    service = pick_service(config, SERVICE)
    workload = with_durations(load_workload(case.spec, seed=seed),
                              parse_distribution(SERVICE_TIME, "service time"), seed)
    options = SimOptions(startup=parse_distribution(STARTUP, "startup"),
                         concurrency=CONCURRENCY, slo=SLO, seed=seed, scrape_interval=15.0,
                         rule_interval=15.0)
    with LocalPrometheus() as prometheus:
        return simulate(config, service, workload, options, prometheus.url)


def verdict(results: dict[str, SimulationResult]) -> list[str]:
    """What ours misses on one workload; empty when it clears the bar."""
    ours = results[OURS]
    peers = {name: r for name, r in results.items() if name != OURS}
    problems = []
    best = min(r.waits.over_slo for r in peers.values())
    if ours.waits.over_slo > best:
        problems.append(f"share over the objective {ours.waits.over_slo:.3%} > best peer's "
                        f"{best:.3%}")
    for name, r in peers.items():
        if r.waits.over_slo <= ours.waits.over_slo and r.worker_seconds <= ours.worker_seconds:
            problems.append(f"{name} meets the objective with {r.worker_seconds:,.0f} worker-s "
                            f"<= ours {ours.worker_seconds:,.0f}")
    if ours.bound_ratio > RATIO:
        problems.append(f"{ours.bound_ratio:.2f}x the lower bound > {RATIO}x")
    return problems


def bound_of(results: dict[str, SimulationResult]) -> float:
    """One bound for every policy: ours' (min 1); each result's own counts its config's
    min, and the fixed fleet's min is its max."""
    return (results[OURS] if OURS in results else next(iter(results.values()))).bound.worker_seconds


def table(case: Case, results: dict[str, SimulationResult]) -> list[str]:
    first = results[OURS] if OURS in results else next(iter(results.values()))
    bound = bound_of(results)
    lines = [
        f"### {case.name}: `{case.spec}`",
        "",
        f"{first.tasks:,} tasks; lower bound {bound / 3600:,.2f} worker-h "
        f"({first.bound.needed} workers needed at once, {first.bound.launches} launches).",
        "",
        "| policy | worker-h | x bound | wait p50 | p95 | p99 | max | over 5 min "
        "| actions | peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        w = r.waits
        lines.append(
            f"| {name} | {r.worker_seconds / 3600:,.2f} | {r.worker_seconds / bound:.2f} "
            f"| {w.p50:.1f}s "
            f"| {w.p95:.1f}s | {w.p99:.1f}s | {w.max:.0f}s | {w.over_slo:.2%} "
            f"| {r.scale_ups + r.scale_downs} | {r.peak_running} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[c.name for c in WORKLOADS])
    parser.add_argument("--policy", choices=list(POLICIES), action="append")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    policies = {n: p for n, p in POLICIES.items() if not args.policy or n in args.policy}
    report = [
        "# Scaling policies on the same workloads",
        "",
        f"`make bench-policies` (seed {args.seed}): each policy in `taskqueue-scaler "
        "simulate`'s closed loop. Workers: "
        f"{CONCURRENCY} slots, task time `{SERVICE_TIME}`, start-up `{STARTUP}`; "
        f"objective: tasks start within {SLO / 60:g} minutes; scrapes every 15 s.",
        "",
    ]
    everything: dict[str, dict[str, object]] = {}
    failed = False
    for case in WORKLOADS:
        if args.only and case.name != args.only:
            continue
        results: dict[str, SimulationResult] = {}
        for name, path in policies.items():
            began = time.monotonic()
            results[name] = run_one(path, case, args.seed)
            print(f"{case.name:7} {name:40} {results[name].worker_seconds / 3600:8.2f} worker-h "
                  f"{results[name].waits.over_slo:7.2%} over  "
                  f"{results[name].worker_seconds / bound_of(results):5.2f}x bound  "
                  f"({time.monotonic() - began:.0f}s)", flush=True)
        report += table(case, results)
        if OURS in results and len(results) == len(POLICIES):
            problems = verdict(results)
            failed |= bool(problems)
            report += ["", "Ours: " + ("**meets the bar**" if not problems else
                                       "**misses**: " + "; ".join(problems))]
        report.append("")
        plot_policies(args.out / f"policies-{case.name}.png",
                      {name: r.series for name, r in results.items()},
                      title=f"{case.name}: {case.spec}", slo_seconds=SLO)
        report += [f"![{case.name}](policies-{case.name}.png)", ""]
        everything[case.name] = {name: to_json(r) for name, r in results.items()}
    (args.out / "policies.md").write_text("\n".join(report))
    (args.out / "policies.json").write_text(json.dumps(everything, indent=2))
    print("\n".join(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
