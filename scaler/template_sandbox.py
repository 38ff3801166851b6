"""The config's Jinja2 environments, and the child process that renders what computes.

A sandboxed template can still loop for hours, recurse 2**40 times or build a
gigabyte string (`{{ 'x' * 10**9 }}`); no check of single operations stops every such
template. So scaler.templates renders anything beyond plain `{{ name }}` substitution
here, in a child process run as a script (`python -P template_sandbox.py`, with none of
our environment but the module path) under limits the kernel enforces: CPU time
(SIGPROF ends it) and address space (an allocation past it is a MemoryError). It reads
its jobs as a pickle on stdin and writes one JSON line before each template (so a kill
names the one running) and one with its result.

This module imports only the standard library, Jinja2 and scaler.child_limits: the
child starts fast.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox

from scaler import child_limits

MAX_OUTPUT = 64 * 1024   # characters, per rendered string
CPU_SECONDS = 0.4        # for all of a config's computing templates together
MEMORY_BYTES = 64 << 20   # more than the interpreter already maps


def promql_string(value: Any) -> str:
    """A value made safe inside a double-quoted PromQL string literal."""
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def environment(promql: bool) -> jinja2.Environment:
    """Queries get every value escaped for a PromQL string; other keys get it as is."""
    finalize: Callable[[Any], Any] | None = promql_string if promql else None
    return jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, finalize=finalize,
        keep_trailing_newline=False,
    )


class TooLong(Exception):
    """Rendering stopped past a limit; the message says which."""


def budget_spent(total: int) -> str:
    return f"the config's templates render more than the {total} characters allowed in all"


class Compiled:
    """One template text compiled, and the variables it reads."""

    def __init__(self, env: jinja2.Environment, text: str) -> None:
        tree = env.parse(text)
        self.names = jinja2.meta.find_undeclared_variables(tree)
        self.template = env.from_string(tree)


def render(compiled: Compiled, variables: Mapping[str, Any], left: int, total: int) -> str:
    """The rendered text; TooLong past MAX_OUTPUT or the `left` of the `total` budget."""
    chunks = []
    size = 0
    # Jinja copies the variables it is given: only those the template reads, so that a
    # thousand templates over a thousand variables cost no million copies. One mapping,
    # not keywords: a variable may be called `self`.
    used = {name: variables[name] for name in compiled.names if name in variables}
    for chunk in compiled.template.generate(used):
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise TooLong(f"renders more than the {MAX_OUTPUT} characters allowed")
        if size > left:
            raise TooLong(budget_spent(total))
        chunks.append(chunk)
    return "".join(chunks)


def short(text: str, limit: int = 160) -> str:
    """One line of at most `limit` characters: a message may quote a megabyte name."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def problem(error: BaseException) -> str:
    """One line for what went wrong in a template, as the config reports it."""
    if isinstance(error, jinja2.UndefinedError):
        return f"template: {short(str(error.message))}"
    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"template syntax error: {short(str(error.message))}"
    if isinstance(error, jinja2.TemplateError | TooLong):
        return f"template: {short(str(error))}"
    if isinstance(error, MemoryError):
        return f"template: needs more than the {MEMORY_BYTES >> 20} MiB of memory allowed"
    if isinstance(error, RecursionError):
        return "template: recursion too deep"
    text = short(str(error), 100)
    return f"template: {type(error).__name__}" + (f": {text}" if text else "")


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"


def main() -> None:
    child_limits.limit_memory(MEMORY_BYTES)
    request = pickle.load(sys.stdin.buffer)
    jobs: list[tuple[str, bool, int]] = request["jobs"]
    stamps: list[Mapping[str, Any]] = request["stamps"]
    left: int = request["left"]
    total: int = request["total"]
    envs = {True: environment(True), False: environment(False)}
    compiled: dict[tuple[str, bool], Compiled] = {}
    # CPU time, not wall time: a loaded machine does not make a template too slow.
    child_limits.limit_cpu(CPU_SECONDS)
    started = time.process_time()
    done = ""
    for index, (text, promql, stamp) in enumerate(jobs):
        # The last result and the next start in one write, flushed before the template
        # runs: when SIGPROF ends the process, the parent knows which one ran, and how
        # much CPU time the others had left it.
        sys.stdout.write(done + _line({"start": index, "cpu": time.process_time() - started}))
        sys.stdout.flush()
        # What a template costs: its text (parsed) and its output.
        left -= len(text)
        try:
            if left < 0:
                raise TooLong(budget_spent(total))
            key = (text, promql)
            if key not in compiled:
                compiled[key] = Compiled(envs[promql], text)
            output = render(compiled[key], stamps[stamp], left, total)
        except Exception as error:  # every failure is the template's, reported as such
            done = _line({"index": index, "error": problem(error)})
            continue
        left -= len(output)
        done = _line({"index": index, "output": output})
    sys.stdout.write(done)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
