"""Benchmark `taskqueue-scaler check-config` on adversarial configs and on legit large ones.

Each case is a config file; the command runs as a user runs it (a new process: Python's
start-up and imports included) --runs times, and the report gives its wall time
(median and slowest) and what it answered. An adversarial config must be refused (exit
2, its error line) within TARGET_S; a legit one accepted (exit 0). tests/test_scaler_cli.py
runs the same cases for their outcome; this measures their time.

Run: .venv/bin/python bench/config_bench.py [--runs N] [--case NAME ...] [--json PATH]

Exit 0 with a report (a target may be missed), 1 if a case is answered wrongly.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import SanityError, run_benchmark, step

TARGET_S = 1.0
SCALER = str(Path(sys.executable).parent / "taskqueue-scaler")

SERVICE = """\
prometheus: {url: 'http://127.0.0.1:9'}
services:
  - name: w
    backend: {cluster: c, service: s, region: us-east-1}
    min: 1
    max: 5
    rules: [{type: per_worker, query: QUERY, target: 10}]
"""
LAUGHS = "".join(
    f"  {name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True))


@dataclass(frozen=True)
class Case:
    text: str
    # check-config's first error line, after the file name (a pattern where it depends on
    # the machine's speed); None: valid.
    error: str | re.Pattern[str] | None


def query(template: str) -> str:
    """The service, its rule's query a double-quoted YAML string."""
    return SERVICE.replace("QUERY", '"' + template.replace('"', '\\"') + '"')


def legit(services: int, written_out: bool) -> str:
    """200 ECS services on as many queues: one for_each definition, or each written out."""
    rules = """\
    rules:
      - {name: backlog, type: per_worker, target: 20, query: 'QUERY'}
      - {name: drain, type: drain, query: 'QUERY', throughput: 2/min, drain_within: 10m,
         startup_delay: 1m}
      - {name: age, type: threshold, above: 60, below: 5, step: 2,
         query: 'max(taskqueue_oldest_task_age_seconds{queue="Q"})'}
    behavior:
      scale_up: {policies: [{type: percent, value: 100, period: 15s}]}
      scale_down: {stabilization_window: 5m, policies: [{type: workers, value: 2, period: 1m}]}
"""
    depth = 'sum(taskqueue_queue_depth{queue="Q"}) + sum(taskqueue_tasks_unacked{queue="Q"})'
    head = "prometheus: {url: 'http://prometheus:9090'}\nservices:\n"
    if not written_out:
        items = ", ".join(f"q{i:03d}" for i in range(services))
        return head + f"""\
  - name: "celery-{{{{ item }}}}"
    for_each: [{items}]
    backend: {{cluster: production, service: "celery-worker-{{{{ item }}}}", region: eu-west-1}}
    min: 1
    max: 40
    fallback: 2
""" + rules.replace("QUERY", depth).replace('"Q"', '"{{ item }}"')
    body = []
    for i in range(services):
        q = f"q{i:03d}"
        body.append(f"""\
  - name: celery-{q}
    backend: {{cluster: production, service: celery-worker-{q}, region: eu-west-1}}
    min: 1
    max: 40
    fallback: 2
""" + rules.replace("QUERY", depth).replace('"Q"', f'"{q}"'))
    return head + "".join(body)


def lower_filters(services: int) -> str:
    """One for_each of `services` ECS services whose 4 rules each read `{{ item | lower }}`."""
    items = ", ".join(f"Q{i:04d}" for i in range(services))
    rules = "".join(
        f"      - {{name: r{r}, type: per_worker, target: 20, "
        f"""query: 'sum(taskqueue_queue_depth{{queue="{{{{ item | lower }}}}", r="{r}"}})'}}\n"""
        for r in range(4))
    return ("prometheus: {url: 'http://prometheus:9090'}\nservices:\n"
            f'  - name: "celery-{{{{ item | lower }}}}"\n    for_each: [{items}]\n'
            '    backend: {cluster: production, service: "celery-worker-{{ item | lower }}", '
            "region: eu-west-1}\n    min: 1\n    max: 40\n    rules:\n" + rules)


def rules_of(queries: list[str]) -> str:
    """One service whose expression rules have these queries (single-quoted YAML)."""
    return SERVICE.replace(
        "    rules: [{type: per_worker, query: QUERY, target: 10}]\n",
        "    rules:\n" + "".join(f"      - {{type: expression, query: '{q}'}}\n"
                              for q in queries))


def big_queries(services: int) -> str:
    """`services` services stamped by for_each, each query 60 KB of its own."""
    return SERVICE.replace("QUERY", """'x{a="{{ item }}{{ big }}"}'""").replace(
        "  - name: w\n", "  - name: 'w-{{ item }}'\n    for_each: ["
        + ", ".join(f"q{i}" for i in range(services)) + "]\n    vars: {big: " + "y" * 60_000
        + "}\n").replace("service: s,", "service: 's-{{ item }}',")


QUADRATIC = '"\\' * 520_000  # "\"\"\... took the old string scan minutes
ALIAS_CHAIN = "junk:\n  x0: &a0 " + "[" * 60 + "1" + "]" * 60 + "\n" + "".join(
    f"  x{i}: &a{i} " + "[" * 60 + f"*a{i - 1}" + "]" * 60 + "\n" for i in range(1, 38))
LOCAL = SERVICE.replace("{cluster: c, service: s, region: us-east-1}",
                        "{type: local, command: 'celery -A app worker', "
                        "ready_pattern: 'PATTERN'}").replace("QUERY", "x")
CPU = ("services[0].rules[0].query: template: still computing after 0.4 s of CPU time "
       "(a long loop, deep recursion or a huge number?)")
MEMORY = "services[0].rules[0].query: template: needs more than the 64 MiB of memory allowed"
NESTED = "sum(x" + " + x" * 5000 + ")"

CASES: dict[str, Case] = {
    "yaml: alias bomb (10^9 values)": Case(
        "x-laughs:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + LAUGHS + SERVICE.replace(
            "QUERY", "x"),
        "x-laughs.e: expands to more than 50000 values (YAML aliases/anchors?)"),
    "yaml: duplicate key": Case(
        SERVICE.replace("QUERY", "x").replace("    max: 5\n", "    max: 5\n    min: 2\n"),
        "services[0].min: duplicate key (line 7; first at line 5)"),
    "yaml: 300,000 values in 1 MiB": Case(
        "x: [" + ",".join(["1"] * 300_000) + "]\n" + SERVICE.replace("QUERY", "x"),
        "x[49997]: more than 50000 values (line 1)"),
    "yaml: 2 MiB file": Case(
        "# " + "x" * (2 << 20) + "\n" + SERVICE.replace("QUERY", "x"),
        "the config is 2097350 bytes, more than the 1048576 allowed"),
    "yaml: a number of 1 MiB": Case(
        SERVICE.replace("QUERY", "x").replace("max: 5", "max: 1" + ":0" * 500_000),
        "services[0].max: a number of 1000001 characters, more than the 100 allowed (line 6)"),
    "template: 'x' * 100000000": Case(query("{{ 'x' * 100000000 }}"), MEMORY),
    "template: 'x'|center(1000000000)": Case(query("{{ 'x'|center(1000000000) }}"), MEMORY),
    "template: '%0999999999d' % 1": Case(query("{{ '%0999999999d' % 1 }}"), MEMORY),
    "template: '{:>999999999}'.format(1)": Case(query("{{ '{:>999999999}'.format(1) }}"),
                                                MEMORY),
    "template: 10 ** 100000000": Case(query("{{ 10 ** 100000000 }}"), CPU),
    "template: nested loops of 100000": Case(
        query("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
              "{% endfor %}x"), CPU),
    "template: range(100000)|join x3": Case(
        query("{{ range(100000)|join(',') }}" * 3),
        "services[0].rules[0].query: template: renders more than the 65536 characters "
        "allowed"),
    "template: recursive macro f(40)": Case(
        query("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
              "{{ f(40) }}"), CPU),
    "template: namespace doubling x60": Case(
        query("{% set ns = namespace(s='ab') %}{% for i in range(60) %}"
              "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"), MEMORY),
    "template: plain, 20 x a 60 KB variable": Case(
        query("{{ v }}" * 20).replace("  - name: w\n",
                                      "  - name: w\n    vars: {v: " + "y" * 60_000 + "}\n"),
        "services[0].rules[0].query: template: renders 1200000 characters, more than the "
        "65536 allowed"),
    "promql: unclosed parenthesis": Case(
        SERVICE.replace("QUERY", "'sum by (queue) (taskqueue_queue_depth'"),
        "services[0].rules[0].query: not valid PromQL: unclosed left parenthesis "
        "(got 'sum by (queue) (taskqueue_queue_depth')"),
    "promql: 5000 nested operators": Case(
        SERVICE.replace("QUERY", f"'{NESTED}'"),
        "services[0].rules[0].query: not valid PromQL: more than 1000 operators and "
        "brackets, too deeply nested to check (got 'sum(x + x + x + x + x + x + x + x + x + x "
        "+ x + x + x + ...)"),
    "promql: quadratic strings, 1 MiB (minutes before)": Case(
        SERVICE.replace("QUERY", f"'{QUADRATIC}'"),
        "services[0].rules[0].query: not valid PromQL: escape sequence not terminated "
        f"(got {repr(QUADRATIC[:61])[:57]}...)"),
    "promql: 60 matchers =~ \\w{400} (10 s before)": Case(
        SERVICE.replace("QUERY", "'x{" + ",".join(f'l{i}=~"\\\\w{{400}}"' for i in range(60))
                        + "}'"), None),
    "promql: 450 valid rules of 999 operators (45 s before)": Case(
        rules_of([f"{'+'.join(['x'] * 999)}+y{i}" for i in range(450)]),
        re.compile(r"services\[0\]\.rules\[(\d+)\]\.query: the config's \1 long queries "
                   r"before this one took most of the 0\.4 s of CPU time allowed to check "
                   r"them all")),
    "promql: 270 queries of 60 KB (16 MiB)": Case(
        big_queries(270), "services[0].rules[0].query: the config's queries pass the 4194304 "
                          "characters allowed in all"),
    "yaml: nesting 2,280 deep through aliases (traceback before)": Case(
        ALIAS_CHAIN + SERVICE.replace("QUERY", "x").replace("max: 5", "max: *a37"),
        "junk.x1" + "[0]" * 55 + ": nested more than 64 levels deep once YAML aliases are "
        "expanded (line 3)"),
    "local: ready_pattern of 5,000 nested groups (traceback before)": Case(
        LOCAL.replace("PATTERN", "(" * 5000 + ")" * 5000),
        "services[0].backend.ready_pattern: not a valid regular expression: groups nested "
        "more than 100 deep (got '" + "(" * 56 + "...)"),
    "counts: max 10000000000 on ECS": Case(
        SERVICE.replace("QUERY", "x").replace("max: 5", "max: 10000000000"),
        "services[0].max: must be <= 5000, the most tasks ECS runs in one service "
        "(got 10000000000)"),
    "ecs: two services on one ECS service": Case(
        SERVICE.replace("QUERY", "x") + SERVICE.replace("QUERY", "x").split("services:\n")[1]
        .replace("name: w", "name: v").replace(
            "cluster: c, service: s", "cluster: c, service: "
            "'arn:aws:ecs:us-east-1:123456789012:service/c/s'"),
        "services[1].backend: the same ECS service (us-east-1 c/s) as services[0].backend: "
        "the two would fight over its desired count"),
    "for_each: 20,000 services": Case(
        SERVICE.replace("QUERY", "x").replace(
            "  - name: w\n", "  - name: 'w-{{ item }}'\n    for_each: ["
            + ", ".join(f"q{i}" for i in range(20_000)) + "]\n").replace(
            "service: s,", "service: 's-{{ item }}',"),
        "services: 20000 services, more than the 5000 one scaler may run"),
    "for_each: 4,000 services x 200 variables": Case(
        SERVICE.replace("QUERY", "x").replace(
            "  - name: w\n", "  - name: 'w-{{ item }}'\n    for_each: ["
            + ", ".join(f"q{i}" for i in range(4000)) + "]\n    vars: {"
            + ", ".join(f"v{i}: {i}" for i in range(200)) + "}\n").replace(
            "service: s,", "service: 's-{{ item }}',"),
        "services[0].for_each: stamps 4000 services of 225 values each, more than the 500000 "
        "values a config may expand to"),
    "legit: 200 services, one for_each": Case(legit(200, written_out=False), None),
    "legit: 200 services written out": Case(legit(200, written_out=True), None),
    # The most the limits let through: what a config just within them costs.
    "yaml: 49,990 services of {}": Case(
        "prometheus: {url: 'http://p:9090'}\nservices:\n" + "  - {}\n" * 49_990,
        "services: 49990 services, more than the 5000 one scaler may run"),
    "at the limits: 600 services written out (48,000 values)": Case(
        legit(600, written_out=True), None),
    "at the limits: 5,000 services, one for_each": Case(legit(5000, written_out=False), None),
    "at the limits: 5,000 services, 4 rules of | lower each": Case(lower_filters(5000), None),
    "at the limits: 69 services, each query 60 KB of its own (4 MiB of queries)": Case(
        big_queries(69), None),
}


def check_config(path: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run([SCALER, "check-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    return time.perf_counter() - started, result


def outcome(case: Case, path: Path, result: subprocess.CompletedProcess[str]) -> str | None:
    """What is wrong with the command's answer, or None."""
    if case.error is None:
        return None if result.returncode == 0 else f"refused: {result.stderr.strip()}"
    first = (result.stderr.splitlines() or [""])[0]
    prefix = f"taskqueue-scaler: {path}: "
    line = first.removeprefix(prefix) if first.startswith(prefix) else None
    matches = line is not None and (line == case.error if isinstance(case.error, str)
                                    else case.error.fullmatch(line) is not None)
    if result.returncode != 2 or not matches:
        return f"exit {result.returncode}: {result.stderr.strip()[:300]}"
    return None


@dataclass
class Report:
    runs: int
    rows: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "target_s": TARGET_S, "cases": self.rows}


def run(tmp: Path, runs: int, names: list[str]) -> Report:
    rows = []
    for number, name in enumerate(names):
        case = CASES[name]
        path = tmp / f"case{number}.yml"
        path.write_text(case.text)
        step(f"{name} ({path.stat().st_size} bytes)")
        times = []
        for _ in range(runs):
            seconds, result = check_config(path)
            problem = outcome(case, path, result)
            if problem is not None:
                raise SanityError(f"{name}: {problem}")
            times.append(seconds)
        rows.append({"case": name, "bytes": path.stat().st_size, "exit": result.returncode,
                     "median_s": statistics.median(times), "max_s": max(times)})
    return Report(runs, rows)


def render(report: Report) -> str:
    lines = [f"taskqueue-scaler check-config, wall time of {report.runs} runs each "
             f"(target: adversarial refused within {TARGET_S:g} s)", "",
             "| case | exit | median | slowest |", "|---|---|---|---|"]
    for row in report.rows:
        over = " (over)" if row["exit"] == 2 and row["max_s"] > TARGET_S else ""
        name = row["case"].replace("|", "\\|")  # a Markdown table's cell
        lines.append(f"| {name} | {row['exit']} | {row['median_s']:.2f} s | "
                     f"{row['max_s']:.2f} s{over} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--case", action="append", choices=list(CASES), metavar="NAME",
                        help="only this case (repeatable; default: every case)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    names = args.case or list(CASES)
    return run_benchmark("config-bench", lambda tmp: run(tmp, args.runs, names), render,
                         args.json)


if __name__ == "__main__":
    sys.exit(main())
