"""The config's Jinja2 templates rendered with bounded work, whatever they say.

Nearly every template in a config is plain substitution: text and `{{ name }}`, perhaps
through `lower`, `upper`, `trim` or `replace` with two constant strings. Those are
recognized here with one linear scan (no Jinja parse, whose cost a megabyte of template
would make seconds) and rendered in this process, their size known before they are
built: a config of 5,000 services does not spend the sandbox's CPU time on `| lower`.
Everything else (other filters, expressions, loops, macros) is rendered by
scaler.template_sandbox in one child process with CPU-time and memory limits, since no
check of single operations can bound what a template computes.

Limits: a rendered string may have MAX_OUTPUT characters; the whole config's template
texts and outputs together MAX_TOTAL (a few templates aliased or stamped many times
could otherwise render gigabytes).
"""

from __future__ import annotations

import pickle
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2.defaults import DEFAULT_NAMESPACE

from scaler import child_limits, template_sandbox
from scaler.template_sandbox import CPU_SECONDS, MAX_OUTPUT, budget_spent, promql_string, short

MAX_TOTAL = 16 << 20
# Only if the child hangs without using CPU, which a template cannot make it do.
WALL_SECONDS = 20.0

_BLOCK_START = re.compile(r"\{[{%#]")
# A Jinja string literal without escapes (its value is its text), braces or newlines.
_LITERAL = r"'[^'\\{}\r\n]*'" + "|" + r'"[^"\\{}\r\n]*"'
# The filters rendered in process: Jinja's, on str(value), never more than 3 times longer
# (upper: "ß" is "SS") except replace, whose size is known before it is built.
_FILTER = re.compile(rf"\s*\|\s*(?:(?P<name>lower|upper|trim)\b(?!\s*\()"
                     rf"|replace\(\s*(?P<old>{_LITERAL})\s*,\s*(?P<new>{_LITERAL})\s*\))")
# Repeated in a block, the same without names (a group's name may occur once in a pattern).
_FILTERS = re.sub(r"\?P<\w+>", "?:", _FILTER.pattern)
_PLAIN_BLOCK = re.compile(rf"\{{\{{\s*([A-Za-z_][A-Za-z0-9_]*)((?:{_FILTERS})*)\s*\}}\}}")
_NEWLINES = re.compile(r"\r\n|\r|\n")
# Names Jinja does not read as a variable: constants, an operator, the template itself.
_NOT_VARIABLES = frozenset({"true", "false", "none", "True", "False", "None", "not", "self"})
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Job:
    """One string to render: with the variables `stamps[stamp]`, escaped for PromQL or not."""

    text: str
    promql: bool
    stamp: int


@dataclass(frozen=True)
class Failure:
    problem: str  # one line: "template: 'queu' is undefined"


# A rendered string, why it could not be, or None: never rendered, as rendering stopped
# at an earlier template's failure (which is reported).
Result = str | Failure | None


@dataclass(frozen=True)
class _Variable:
    """`{{ name }}`, through filters: ("lower",), ("replace", old, new)..."""

    name: str
    filters: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class _Plan:
    """A plain template: literal text and variables, alternating, text first."""

    parts: tuple[str | _Variable, ...]

    def variables(self) -> tuple[_Variable, ...]:
        return self.parts[1::2]  # type: ignore[return-value]


def _filters(text: str) -> tuple[tuple[str, ...], ...]:
    return tuple((f["name"],) if f["name"] else ("replace", f["old"][1:-1], f["new"][1:-1])
                 for f in _FILTER.finditer(text))


def _filtered(text: str, filters: tuple[tuple[str, ...], ...]) -> str | None:
    """`text` through the filters, as Jinja's do them; None past MAX_OUTPUT characters."""
    for name, *args in filters:
        if name == "lower":
            text = text.lower()
        elif name == "upper":
            text = text.upper()
        elif name == "trim":
            text = text.strip()
        else:
            old, new = args
            count = len(text) + 1 if not old else text.count(old)
            if len(text) + count * (len(new) - len(old)) > MAX_OUTPUT:
                return None
            text = text.replace(old, new)
        if len(text) > MAX_OUTPUT:
            return None
    return text


def plain(text: str) -> _Plan | None:
    """The plan of `text` when it is text and `{{ name }}` only, as Jinja reads it."""
    # Jinja's lexer: every newline becomes \n and one trailing newline goes.
    source = _NEWLINES.sub("\n", text)
    if source.endswith("\n"):
        source = source[:-1]
    parts: list[str | _Variable] = []
    position = 0
    while (start := _BLOCK_START.search(source, position)) is not None:
        block = _PLAIN_BLOCK.match(source, start.start())
        if block is None or block.group(1) in _NOT_VARIABLES:
            return None
        parts += (source[position:start.start()], _Variable(block[1], _filters(block[2])))
        position = block.end()
    parts.append(source[position:])
    return _Plan(tuple(parts))


class _Renderer:
    def __init__(self, stamps: Sequence[Mapping[str, Any]]) -> None:
        self.stamps = stamps
        self.left = MAX_TOTAL
        self.plans: dict[str, _Plan | None] = {}
        self.values: dict[tuple[int, _Variable, bool], str | None] = {}

    def in_process(self, job: Job) -> Result | type[_Child]:
        if job.text not in self.plans:
            self.plans[job.text] = plain(job.text)
        plan = self.plans[job.text]
        if plan is None:
            return _Child
        variables = self.stamps[job.stamp]
        cost = len(job.text)
        for variable in plan.variables():
            name = variable.name
            if name not in variables:
                if name in DEFAULT_NAMESPACE:
                    return _Child  # Jinja's range, dict...: rare, and not plain text
                return Failure(short(f"template: '{name}' is undefined"))
            value = variables[name]
            if type(value) not in _SCALARS:
                return _Child  # a list or a mapping: its text is Python's, of any size
            cost += len(value) if isinstance(value, str) else 24
        if cost > self.left:
            self.left = -1
            return Failure(f"template: {budget_spent(MAX_TOTAL)}")
        pieces: list[str] = []
        for part in plan.parts:
            text = self._value(job, part) if isinstance(part, _Variable) else part
            if text is None:
                return Failure(f"template: renders more than the {MAX_OUTPUT} characters "
                               "allowed")
            pieces.append(text)
        size = sum(map(len, pieces))
        if len(job.text) + size > self.left:  # filters made it longer than its cost
            self.left = -1
            return Failure(f"template: {budget_spent(MAX_TOTAL)}")
        self.left -= len(job.text) + size
        if size > MAX_OUTPUT:
            return Failure(f"template: renders {size} characters, more than the "
                           f"{MAX_OUTPUT} allowed")
        return "".join(pieces)

    def _value(self, job: Job, variable: _Variable) -> str | None:
        """The variable's text, filtered then escaped; None past MAX_OUTPUT characters."""
        key = (job.stamp, variable, job.promql)
        if key not in self.values:
            value = self.stamps[job.stamp][variable.name]
            text = _filtered(value if isinstance(value, str) else str(value), variable.filters)
            self.values[key] = text if text is None or not job.promql else promql_string(text)
        return self.values[key]


class _Child:
    """Marks a job for the sandboxed child process."""


def render_all(jobs: Sequence[Job], stamps: Sequence[Mapping[str, Any]]) -> list[Result]:
    """Each job's rendered text or failure, in order; equal jobs are rendered once."""
    renderer = _Renderer(stamps)
    done: dict[Job, Result] = {}
    child_jobs: list[Job] = []
    for job in jobs:
        if job in done or renderer.left < 0:
            continue
        result = renderer.in_process(job)
        if result is _Child:
            child_jobs.append(job)
            done[job] = None
        else:
            done[job] = result  # type: ignore[assignment]
    if child_jobs and renderer.left >= 0:
        done.update(zip(child_jobs, _in_child(child_jobs, stamps, renderer.left), strict=True))
    return [done.get(job) for job in jobs]


def _in_child(jobs: list[Job], stamps: Sequence[Mapping[str, Any]], left: int) -> list[Result]:
    used = sorted({job.stamp for job in jobs})
    index = {stamp: i for i, stamp in enumerate(used)}
    request = pickle.dumps({
        "jobs": [(job.text, job.promql, index[job.stamp]) for job in jobs],
        "stamps": [stamps[stamp] for stamp in used],
        "left": left, "total": MAX_TOTAL,
    }, protocol=pickle.HIGHEST_PROTOCOL)
    results: list[Result] = [None] * len(jobs)
    # -P: the script's own directory (scaler/) is no place to import from.
    command = [sys.executable, "-P", str(Path(template_sandbox.__file__))]
    try:
        run = child_limits.run(command, request, WALL_SECONDS)
    except OSError as error:
        results[0] = Failure(f"template: cannot start the sandbox: {error.strerror or error}")
        return results
    for record in run.records:
        results[record["index"]] = (Failure(record["error"]) if "error" in record
                                    else record["output"])
    if run.returncode != 0:
        culprit = 0 if run.running is None else run.running
        results[culprit] = Failure(_death(run.returncode, run.killed, run.running is not None,
                                          run.stderr, culprit, run.cpu_before))
    return results

def _death(code: int, killed: bool, started: bool, stderr: bytes, culprit: int,
           cpu_before: float) -> str:
    if killed:
        return f"template: still rendering after {WALL_SECONDS:g} s"
    if code in (-signal.SIGPROF, -signal.SIGXCPU):
        if cpu_before < CPU_SECONDS / 2:
            return (f"template: still computing after {CPU_SECONDS:g} s of CPU time "
                    "(a long loop, deep recursion or a huge number?)")
        # Most of the time went to the templates before it: the whole is too much.
        return (f"template: the config's {culprit} templates before this one that compute "
                f"(filters, expressions, statements) took most of the {CPU_SECONDS:g} s of "
                "CPU time they may have together")
    if code < 0:
        return f"template: the sandbox rendering it died ({signal.Signals(-code).name})"
    last = short((stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1])
    if started:
        return f"template: the sandbox rendering it failed: {last}"
    return f"template: the sandbox did not start: {last}"
