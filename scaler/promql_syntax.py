"""PromQL syntax checked offline, with a real parser, before a query reaches Prometheus.

The parser is promql-parser (Rust bindings of GreptimeTeam's PromQL parser). It knows
Prometheus 3's functions; `holt_winters`, the Prometheus 2 name of
`double_exponential_smoothing`, is taught to it here. It accepts a little more than
Prometheus does (`x{}`, Prometheus 3 syntax on a Prometheus 2 server), never less: a
query refused here fails on every Prometheus.
"""

from __future__ import annotations

import functools
import re

import promql_parser

# The parser recurses once per nesting level and has no limit of its own: about 4,500
# levels (`x + x + ... + x`, `- - - x`) overflow an 8 MiB stack and kill the process.
# Each level needs an operator or an opening bracket, so counting those bounds the depth
# (1,000 levels fit in a 2 MiB thread stack); real queries have a few dozen.
MAX_OPERATORS = 1000
_STRINGS_AND_COMMENTS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|#[^\n]*',
                                   re.DOTALL)
# A label matcher list is flat: its `=`, `!=`, `=~` nest nothing.
_MATCHERS = re.compile(r"\{[^{}]*\}")
_NESTING = re.compile(r"[-+*/%^(\[<>=!]|\b(?:and|or|unless|atan2)\b", re.IGNORECASE)


@functools.cache
def _parser() -> None:
    """Teaches the parser the Prometheus 2 functions it lacks (once per process)."""
    value = promql_parser.ValueType
    promql_parser.register_extra_functions([
        promql_parser.Function("holt_winters", [value.Matrix, value.Scalar, value.Scalar],
                               value.Vector),
    ])


def _operators(query: str) -> int:
    return len(_NESTING.findall(_MATCHERS.sub("", _STRINGS_AND_COMMENTS.sub("", query))))


def _parse(query: str) -> promql_parser.Expr:
    if _operators(query) > MAX_OPERATORS:
        raise ValueError(f"more than {MAX_OPERATORS} operators and brackets, "
                         "too deeply nested to check")
    _parser()
    return promql_parser.parse(query)


def check(query: str) -> str | None:
    """Why `query` is not valid PromQL, in one line, or None when it is."""
    try:
        _parse(query)
    except ValueError as error:
        return " ".join(str(error).split()) or "not valid"
    return None


def metric_names(query: str) -> frozenset[str]:
    """The metric names `query`'s selectors read: `name{...}` and `{__name__="name"}`.

    A regular expression on `__name__` names no metric and is left out. ValueError
    (with check()'s message) when `query` is not valid PromQL.
    """
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            matchers = node.matchers
            for group in (matchers.matchers, *matchers.or_matchers):
                names.update(m.value for m in group
                             if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal)

    promql_parser.walk(_parse(query), visit)
    return frozenset(names)
