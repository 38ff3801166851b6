"""Every query of a config checked as PromQL, with bounded work whatever the config holds.

The parser's cost grows with the square of a query's operators (a valid query of 1,000
takes a tenth of a second, and a config may hold thousands), and no count of single
operations can promise that no other input is slow. So:

- a config's distinct queries may total MAX_QUERY_BYTES, and hold MAX_REGEX_MATCHERS
  regular expression matchers (each checked by scaler.promql_regex);
- a short query (SHORT_QUERY characters: at most a few hundred levels of nesting, a few
  milliseconds at worst) is checked in this process, as nearly all are, until that has
  taken IN_PROCESS_SECONDS of CPU time;
- the others are checked by this module run as a child process (`python -P -m
  scaler.query_checks`), that the kernel stops after its CPU time (scaler.child_limits).
  It reads the queries as JSON on stdin and writes one JSON line before each query (so
  that a kill names the one being checked) and one with its result.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from scaler import child_limits, promql_syntax

MAX_QUERY_BYTES = 4 << 20
MAX_REGEX_MATCHERS = 20_000
SHORT_QUERY = 512
IN_PROCESS_SECONDS = 0.2
CPU_SECONDS = 0.4     # the child's, for every query it checks
MIN_CPU_SECONDS = 0.1  # ...whatever the templates took before
MEMORY_BYTES = 256 << 20
# Only if the child hangs without using CPU, which a query cannot make it do.
WALL_SECONDS = 20.0


@dataclass(frozen=True)
class Query:
    text: str
    instant: bool  # its result must be an instant vector or a scalar


@dataclass(frozen=True)
class Invalid:
    """Not valid PromQL: why, in one line."""

    problem: str


@dataclass(frozen=True)
class Refused:
    """Not checked, past a limit of the whole config: why, in one line ("" for a query
    left unchecked after another's refusal, which is the error to report)."""

    reason: str


# None: valid.
Result = Invalid | Refused | None


def check_all(queries: Sequence[Query], cpu_seconds: float = CPU_SECONDS) -> list[Result]:
    """Each query's result, in order; the child, if needed, gets `cpu_seconds`."""
    results: list[Result] = [Refused("")] * len(queries)
    later: list[int] = []
    total_bytes = regex_matchers = 0
    spent = 0.0
    for index, query in enumerate(queries):
        total_bytes += len(query.text)
        if total_bytes > MAX_QUERY_BYTES:
            results[index] = Refused(f"the config's queries pass the {MAX_QUERY_BYTES} "
                                     "characters allowed in all")
            break
        regex_matchers += query.text.count("=~") + query.text.count("!~")
        if regex_matchers > MAX_REGEX_MATCHERS:
            results[index] = Refused(f"the config's queries pass the {MAX_REGEX_MATCHERS} "
                                     "regular expression matchers (=~, !~) allowed in all")
            break
        if len(query.text) > SHORT_QUERY or spent > IN_PROCESS_SECONDS:
            later.append(index)
            continue
        started = time.process_time()
        results[index] = _result(query)
        spent += time.process_time() - started
    else:
        if later:
            checked = _in_child([queries[i] for i in later], max(cpu_seconds, MIN_CPU_SECONDS))
            for index, result in zip(later, checked, strict=True):
                results[index] = result
    return results


def _result(query: Query) -> Result:
    problem = promql_syntax.check(query.text, instant=query.instant)
    return None if problem is None else Invalid(problem)


# --------------------------------------------------------------------------- parent


def _in_child(queries: list[Query], cpu_seconds: float) -> list[Result]:
    results: list[Result] = [Refused("")] * len(queries)
    request = json.dumps({"queries": [[q.text, q.instant] for q in queries],
                          "cpu": cpu_seconds}).encode()
    # -P: no directory of ours (the current one) to import from but the module path.
    command = [sys.executable, "-P", "-m", "scaler.query_checks"]
    try:
        run = child_limits.run(command, request, WALL_SECONDS)
    except OSError as error:
        results[0] = Refused("cannot start the process that checks queries: "
                             f"{error.strerror or error}")
        return results
    for record in run.records:
        problem = record["problem"]
        results[record["index"]] = None if problem is None else Invalid(problem)
    if run.returncode != 0:
        culprit = 0 if run.running is None else run.running
        results[culprit] = Refused(_death(run.returncode, run.killed, run.running is not None,
                                          run.stderr, culprit, run.cpu_before, cpu_seconds))
    return results

def _death(code: int, killed: bool, started: bool, stderr: bytes, culprit: int,
           cpu_before: float, cpu_seconds: float) -> str:
    if killed:
        return f"still being checked as PromQL after {WALL_SECONDS:g} s"
    if code in (-signal.SIGPROF, -signal.SIGXCPU):
        if cpu_before < cpu_seconds / 2:
            return (f"checking it as PromQL takes more than {cpu_seconds:.2g} s of CPU time "
                    "(thousands of operators?)")
        # Most of the time went to the queries before it: the whole is too much.
        return (f"the config's {culprit} long queries before this one took most of the "
                f"{cpu_seconds:.2g} s of CPU time allowed to check them all")
    if code < 0:
        return f"the PromQL parser died checking it ({signal.Signals(-code).name})"
    last = promql_syntax.short(
        (stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1], 120)
    if started:
        return f"the process checking it as PromQL failed: {last}"
    return f"the process that checks queries did not start: {last}"


# --------------------------------------------------------------------------- child


def _line(record: dict[str, object]) -> str:
    return json.dumps(record) + "\n"


def main() -> None:
    child_limits.limit_memory(MEMORY_BYTES)
    request = json.load(sys.stdin)
    queries = [Query(text, instant) for text, instant in request["queries"]]
    promql_syntax.check("x")  # the parser set up before the clock starts
    child_limits.limit_cpu(request["cpu"])
    started = time.process_time()
    done = ""
    for index, query in enumerate(queries):
        # The last result and the next start in one write, flushed before the query is
        # checked: when SIGPROF ends the process, the parent knows which one it was.
        sys.stdout.write(done + _line({"start": index, "cpu": time.process_time() - started}))
        sys.stdout.flush()
        result = _result(query)
        done = _line({"index": index,
                      "problem": result.problem if isinstance(result, Invalid) else None})
    sys.stdout.write(done)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
