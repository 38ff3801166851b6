"""PromQL syntax checked offline, with a real parser, before a query reaches Prometheus.

The parser is promql-parser (Rust bindings of GreptimeTeam's PromQL parser). It knows
Prometheus 3's functions; `holt_winters`, the Prometheus 2 name of
`double_exponential_smoothing`, is taught to it here. It accepts a little more than
Prometheus does (`x{}`, Prometheus 3 syntax on a Prometheus 2 server), and must never
accept less. Where it would (or would take long), the query is prepared first, in one
left-to-right pass:

- a raw string (`` `\\d+` ``) becomes the double-quoted string of the same value: the
  parser reads escapes in raw strings, which Prometheus does not;
- a `=~` or `!~` value is checked here as Go's regexp reads it (scaler.promql_regex)
  and the matcher replaced by an `=` or `!=` one that matches the empty string when it
  does: the parser would compile it with Rust's regex, slower and stricter than Go's.

The parser's cost grows with the square of a query's operators (a query of 1,000 takes
a tenth of a second): scaler.query_checks bounds what a whole config may cost.
"""

from __future__ import annotations

import functools
import re

import promql_parser

from scaler import promql_regex

# The parser recurses once per nesting level and has no limit of its own: about 4,500
# levels (`x + x + ... + x`, `- - - x`) overflow an 8 MiB stack and kill the process.
# Each level needs an operator or an opening bracket, so counting those bounds the depth
# (1,000 levels fit in a 2 MiB thread stack); real queries have a few dozen.
MAX_OPERATORS = 1000
MAX_MESSAGE = 200

# One token at each position, possessive: the scan is linear whatever the text (a string
# never closed ends the scan; the parser says what is wrong with it).
_TOKENS = re.compile(r"""
    (?P<code>[^"'`\#]++)
  | "(?P<double>(?:[^"\\\n]|\\.)*+)(?P<end>")?
  | '(?P<single>(?:[^'\\\n]|\\.)*+)(?P<end2>')?
  | `(?P<raw>[^`]*+)(?P<end3>`)?
  | \#[^\n]*+
""", re.VERBOSE | re.DOTALL)
# Quoted strings, each removed whole (a string never closed ends at its line, so that what
# follows still counts): for a query with nothing to rewrite, in one C-speed pass.
_QUOTED = re.compile(r""""(?:[^"\\\n]|\\.)*+"?|'(?:[^'\\\n]|\\.)*+'?""")
# A label matcher list is flat: its `=`, `!=`, `=~` nest nothing.
_MATCHERS = re.compile(r"\{[^{}]*+\}")
_NESTING = re.compile(r"[-+*/%^(\[<>=!]|\b(?:and|or|unless|atan2)\b", re.IGNORECASE)
_REGEX_OPERATOR = re.compile(r"[=!]~\s*\Z")
# Go's escapes in a quoted string (Prometheus's lexer and strutil.Unquote).
_ESCAPE = re.compile(r"""\\(?:(?P<single>[abfnrtv\\"'])|(?P<octal>[0-7]{3})|x(?P<hex>[0-9a-fA-F]{2})
                         |u(?P<u>[0-9a-fA-F]{4})|U(?P<U>[0-9a-fA-F]{8})|(?P<bad>.?))""",
                     re.VERBOSE | re.DOTALL)
_SINGLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
           "\\": "\\", '"': '"', "'": "'"}


@functools.cache
def _parser() -> None:
    """Teaches the parser the Prometheus 2 functions it lacks (once per process)."""
    value = promql_parser.ValueType
    promql_parser.register_extra_functions([
        promql_parser.Function("holt_winters", [value.Matrix, value.Scalar, value.Scalar],
                               value.Vector),
    ])


def short(text: str, limit: int = MAX_MESSAGE) -> str:
    """One line of at most `limit` characters: a message may quote a megabyte of query."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _unquote(text: str, quote: str) -> str | None:
    """A quoted string's value, as Prometheus reads it; None for a bad escape (the
    parser then says which)."""
    if "\\" not in text:
        return text
    parts = []
    position = 0
    for escape in _ESCAPE.finditer(text):
        parts.append(text[position:escape.start()])
        position = escape.end()
        if escape["single"] is not None:
            if escape["single"] in "\"'" and escape["single"] != quote:
                return None
            parts.append(_SINGLE[escape["single"]])
        elif escape["octal"] is not None:
            code = int(escape["octal"], 8)
            if code > 255:
                return None
            parts.append(chr(code))
        elif escape["hex"] is not None:
            parts.append(chr(int(escape["hex"], 16)))
        else:
            digits = escape["u"] or escape["U"]
            if digits is None:
                return None
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                return None
            parts.append(chr(code))
    parts.append(text[position:])
    return "".join(parts)


def _quoted(value: str) -> str:
    """`value` as a double-quoted PromQL string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}"
                         for c in escaped) + '"'


def prepare(query: str, *, keep_regex_matchers: bool = False) -> str:
    """The query as the parser is to read it (see the module's docstring); ValueError,
    with the message check() gives, for a regular expression Prometheus refuses or a query
    nested too deeply for the parser.

    A `=~` or `!~` matcher becomes `=` or `!=` a placeholder that matches the empty string
    as the expression does (`a=~"x*"` is `a=""`, `a=~"x+"` is `a="x"`): the parser then
    compiles no regular expression at all (even `.+` takes it 20 microseconds). With
    `keep_regex_matchers` it stays a regular expression, `.*` or `.+`.
    """
    if "~" not in query and "`" not in query and "#" not in query:
        # Nothing to rewrite (most queries): only the nesting to count.
        _check_nesting(_QUOTED.sub("", query))
        return query
    pieces: list[str] = []
    code: list[str] = []
    operator: tuple[int, int] | None = None  # the last code read ends with =~ or !~ here
    position = 0
    for token in _TOKENS.finditer(query):
        position = token.end()
        kind = token.lastgroup
        if kind == "code":
            text = token["code"]
            code.append(text)
            pieces.append(text)
            if text.strip():
                found = _REGEX_OPERATOR.search(text)
                operator = None if found is None else (len(pieces) - 1, found.start())
            continue
        if kind is None:  # a comment
            continue
        raw = token["raw"] is not None
        text = token["raw"] if raw else token["double"] if token["double"] is not None else (
            token["single"])
        if kind not in ("end", "end2", "end3"):  # the closing quote is the group matched last
            # Never closed: the parser says so. What follows still counts as nesting,
            # in case the parser reads on.
            pieces.append(query[token.start():])
            code.append(query[token.end():])
            position = len(query)
            break
        value = text if raw else _unquote(text, token.group()[0])
        if value is not None and operator is not None:
            try:
                empty = promql_regex.check(value)
            except promql_regex.RegexError as error:
                shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
                raise ValueError(f"invalid regular expression {shown}: {error}") from None
            if keep_regex_matchers:
                pieces.append('".*"' if empty else '".+"')
            else:
                index, at = operator
                before = pieces[index]
                negated = before[at] == "!"
                pieces[index] = before[:at] + ("!=" if negated else "=") + before[at + 2:]
                # `!~` matches the empty string when its expression does not.
                pieces.append('""' if empty else '"x"')
        elif raw and value is not None:
            pieces.append(_quoted(value))
        else:
            pieces.append(token.group())
        operator = None
    pieces.append(query[position:])
    _check_nesting("".join(code))
    return "".join(pieces)


def _check_nesting(code: str) -> None:
    """ValueError when `code` (a query without its strings and comments) may nest deeper
    than the parser can take."""
    if len(_NESTING.findall(_MATCHERS.sub("", code))) > MAX_OPERATORS:
        raise ValueError(f"more than {MAX_OPERATORS} operators and brackets, "
                         "too deeply nested to check")


def _parse(query: str, keep_regex_matchers: bool = False) -> promql_parser.Expr:
    prepared = prepare(query, keep_regex_matchers=keep_regex_matchers)
    _parser()
    return promql_parser.parse(prepared)


def _result_problem(expression: promql_parser.Expr) -> str | None:
    """Why an expression's result is not an instant vector or a scalar, or None."""
    while isinstance(expression, promql_parser.ParenExpr):
        expression = expression.expr
    if isinstance(expression, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        return ("returns a range vector, not one number per series: wrap it in a function "
                "such as rate() or max_over_time()")
    if isinstance(expression, promql_parser.StringLiteral):
        return "returns a string, not a number"
    return None


def check(query: str, *, instant: bool = False) -> str | None:
    """Why `query` is not valid PromQL, in one line, or None when it is.

    `instant`: its result must also be an instant vector or a scalar, what a rule reads
    (a range vector, a subquery or a string fails every evaluation).
    """
    try:
        expression = _parse(query)
    except ValueError as error:
        return short(str(error)) or "not valid"
    except BaseException as error:
        # A panic in the parser is pyo3's PanicException, no Exception: the query's fault.
        if type(error).__name__ != "PanicException":
            raise
        return short(f"the parser failed on it: {error}")
    return _result_problem(expression) if instant else None


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

    try:
        # A placeholder value would read as a metric's name.
        expression = _parse(query, keep_regex_matchers=True)
    except ValueError as error:
        raise ValueError(short(str(error)) or "not valid") from None
    promql_parser.walk(expression, visit)
    return frozenset(names)
