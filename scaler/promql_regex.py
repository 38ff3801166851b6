"""A label matcher's regular expression checked as Prometheus checks it, in linear time.

Prometheus parses `=~` and `!~` values with Go's regexp (RE2 syntax), then compiles them
anchored, `^(?:value)$`. The offline PromQL parser would compile them with Rust's regex,
which refuses some that Go accepts (`\\Q...\\E`; `\\w{1,255}`, past its size limit, as
Rust's `\\w` is Unicode) and takes a tenth of a second for some that are cheap to Go. So
the parser never sees them (scaler.promql_syntax puts a placeholder in), and they are
checked here instead: one pass, no backtracking, no recursion.

Only what Go's parser refuses for certain is refused (a `(` never closed, a repetition
of nothing, a count over 1,000, an unknown escape...); what is merely unusual passes,
and so does `(?<name>...)`, which Prometheus 3 (Go 1.22) accepts. Whether the expression
matches the empty string is computed too: a selector needs one matcher that does not
(`{a=~".*"}` would select every series of every metric).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Go: a counted repetition may not exceed 1,000 copies, nested counts multiplied.
MAX_REPEAT = 1000

_TOKEN = re.compile(r"""
    (?P<literals>[^\\\[\](){}|*+?.^$]++)
  | \\(?P<escape>.?)
  | (?P<class>\[)
  | \((?P<group>\?(?:P?<(?P<name>[^>]*+)>?|[^:)]*+[:)]?))?
  | (?P<close>\))
  | (?P<bar>\|)
  | (?P<repeat>[*+?]|\{(?P<min>0|[1-9][0-9]*+)(?P<comma>,(?P<max>0|[1-9][0-9]*+)?)?\})
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
_PERL_CLASSES = frozenset("dDsSwW")
# Outside a class: Go reads these after a backslash as assertions, not characters.
_EMPTY_ASSERTIONS = frozenset("AzB")  # match the empty string
_SINGLE_ESCAPES = frozenset("afnrtv")
_POSIX_CLASSES = frozenset({"alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph",
                            "lower", "print", "punct", "space", "upper", "word", "xdigit"})
_HEX = frozenset("0123456789abcdefABCDEF")
_OCTAL = frozenset("01234567")
_FLAGS = re.compile(r"\?(?:[imsU]*+(?:-[imsU]++)?)[:)]")
# Most matchers: literal names, or alternatives of them (`emails|default`), any character
# but Go's operators and the backslash.
_LITERAL_ALTERNATIVES = re.compile(r"[^\\\[\](){}|*+?^$]*+(?:\|[^\\\[\](){}|*+?^$]*+)*+")


class RegexError(ValueError):
    """Why Go's regexp refuses an expression, in its words."""


@dataclass
class _Group:
    """An open group: what its finished alternatives and the current one match."""

    any_empty: bool = False      # a finished alternative matches the empty string
    before_empty: bool = True    # everything before the last item does
    last_empty: bool | None = None  # the last item does (None: there is none)
    weight: int = 1              # the most nested counted copies within
    last_weight: int = 1

    def add(self, empty: bool, weight: int = 1) -> None:
        if self.last_empty is not None:
            self.before_empty = self.before_empty and self.last_empty
            self.weight = max(self.weight, self.last_weight)
        self.last_empty, self.last_weight = empty, weight

    def close_alternative(self) -> None:
        self.any_empty = self.any_empty or self.empty_so_far()
        self.weight = max(self.weight, self.last_weight)
        self.before_empty, self.last_empty, self.last_weight = True, None, 1

    def empty_so_far(self) -> bool:
        return self.before_empty and self.last_empty is not False

    def result(self) -> tuple[bool, int]:
        return self.any_empty or self.empty_so_far(), max(self.weight, self.last_weight)


def check(value: str) -> bool:
    """Whether the matcher `value` matches the empty string; RegexError if Go refuses it.

    Prometheus parses the value, then compiles it anchored, `^(?:value)$`: the two differ
    only when a `\\Q` is never ended, as it takes the `)$` for literal text.
    """
    if _LITERAL_ALTERNATIVES.fullmatch(value):
        return "" in value.split("|")
    empty = _parse(value)
    if "\\Q" in value:
        _parse(f"^(?:{value})$")
    return empty


def _parse(pattern: str) -> bool:
    groups = [_Group()]
    # Where the next `:]` is, for POSIX classes: each search starts past the last one
    # found, or none is left (-1), so that `[[:[:[:...` costs no quadratic time.
    posix_end = [-2]
    last_repeat = ""  # the repetition just read: another right after it is an error
    position = 0
    size = len(pattern)
    while position < size:
        token = _TOKEN.match(pattern, position)
        assert token is not None  # `other` matches any character
        position = token.end()
        repeat, last_repeat = last_repeat, ""
        group = groups[-1]
        kind = token.lastgroup
        if kind == "literals":
            text = token.group()
            if len(text) > 1:
                group.add(False)
            group.add(False)
        elif kind == "escape":
            position = _escape(pattern, token, group)
        elif kind == "class":
            position = _class(pattern, position, posix_end)
            group.add(False)
        elif kind == "group":
            if _opens_group(token):
                groups.append(_Group())
        elif token.group() == "(":
            groups.append(_Group())
        elif kind == "close":
            if len(groups) == 1:
                raise RegexError("unexpected )")
            empty, weight = groups.pop().result()
            groups[-1].add(empty, weight)
        elif kind == "bar":
            group.close_alternative()
        elif kind == "repeat":
            text = token.group("repeat")
            if position < size and pattern[position] == "?":
                position += 1  # non-greedy
                text += "?"
            if group.last_empty is None:
                raise RegexError(f"missing argument to repetition operator: `{text}`")
            if repeat:
                raise RegexError(f"invalid nested repetition operator: `{repeat}{text}`")
            _repeat(token, text, group)
            last_repeat = text
        else:  # `.`, `^`, `$` or a `{`, `}` or `]` that is no repetition: one item
            character = token.group()
            group.add(character in "^$")
    if len(groups) > 1:
        raise RegexError("missing closing )")
    return groups[0].result()[0]


def _opens_group(token: re.Match[str]) -> bool:
    """Whether `(?...` opens a group (or only sets flags); RegexError if Go refuses it."""
    text = token.group("group")
    name = token.group("name")
    if name is not None:
        if not token.group().endswith(">") or not name or not all(
                c == "_" or c.isalnum() for c in name):
            raise RegexError(f"invalid named capture: `{token.group()}`")
        return True
    if not _FLAGS.fullmatch(text):
        # Go quotes it up to the character that is not a flag.
        end = next((i for i, c in enumerate(text[1:], 2) if c not in "imsU-"), len(text))
        raise RegexError(f"invalid or unsupported Perl syntax: `({text[:end]}`")
    return text.endswith(":")


def _repeat(token: re.Match[str], text: str, group: _Group) -> None:
    low_text = token.group("min")
    if low_text is None:  # *, + or ?
        if text[0] != "+":
            group.last_empty = True
        return
    high_text = token.group("max")
    low = int(low_text) if len(low_text) < 8 else -1
    high = low if token.group("comma") is None else (
        -1 if high_text is None else int(high_text) if len(high_text) < 8 else -2)
    if low < 0 or high == -2 or low > MAX_REPEAT or high > MAX_REPEAT or 0 <= high < low:
        raise RegexError(f"invalid repeat count: `{text}`")
    if low == 0:
        group.last_empty = True
    copies = high if high >= 0 else low
    if high == 0:
        group.last_weight = 1
    else:
        group.last_weight *= max(copies, 1)
        if (low >= 2 or high >= 2) and group.last_weight > MAX_REPEAT:
            raise RegexError(f"invalid repeat count: `{text}`")


def _escape(pattern: str, token: re.Match[str], group: _Group) -> int:
    """Reads one escape outside a class; the position after it."""
    position = token.end()
    character = token.group("escape")
    if not character:
        raise RegexError("trailing backslash at end of expression")
    if character in _EMPTY_ASSERTIONS:
        group.add(True)
    elif character == "b":
        group.add(False)  # a word boundary: never in the empty string
    elif character == "C":
        raise RegexError("invalid escape sequence: `\\C`")
    elif character == "Q":
        end = pattern.find("\\E", position)
        literal = pattern[position:] if end < 0 else pattern[position:end]
        if len(literal) > 1:
            group.add(False)
        if literal:
            group.add(False)
        return len(pattern) if end < 0 else end + 2
    elif character in "pP":
        position = _unicode_class(pattern, position)
        group.add(False)
    elif character in _PERL_CLASSES:
        group.add(False)
    else:
        position = _character(pattern, position - 1, character)
        group.add(False)
    return position


def _unicode_class(pattern: str, position: int) -> int:
    """`\\pL`, `\\p{Greek}`, `\\P{^Lu}` from after the p; the position after it.

    Any name of letters passes: which scripts Go knows depends on its version.
    """
    if position < len(pattern) and pattern[position] == "{":
        end = pattern.find("}", position)
        name = pattern[position + 1:end].removeprefix("^") if end > 0 else ""
        if end < 0 or not name or not all(c == "_" or c.isalpha() for c in name):
            raise RegexError(f"invalid character class range: `{pattern[position - 2:end + 1]}`")
        return end + 1
    if position >= len(pattern) or not pattern[position].isalpha():
        raise RegexError(f"invalid character class range: `{pattern[position - 2:position + 1]}`")
    return position + 1


def _character(pattern: str, position: int, character: str) -> int:
    """An escaped character (`character`, after the backslash at position - 1); the
    position after it. Go's escapes: punctuation, \\a \\f \\n \\r \\t \\v, octal, \\x."""
    after = position + 1
    if character in _SINGLE_ESCAPES or (ord(character) < 128 and not character.isalnum()):
        return after
    if character == "0" or (character in "1234567" and after < len(pattern)
                            and pattern[after] in _OCTAL):
        for _ in range(2):
            if after < len(pattern) and pattern[after] in _OCTAL:
                after += 1
        return after
    if character == "x":
        if pattern[after:after + 1] == "{":
            end = pattern.find("}", after)
            digits = pattern[after + 1:end] if end > 0 else ""
            value = digits.lstrip("0")
            if digits and all(d in _HEX for d in digits) and (
                    len(value) <= 6 and int(value or "0", 16) <= 0x10FFFF):
                return end + 1
        elif len(pattern) >= after + 2 and all(d in _HEX for d in pattern[after:after + 2]):
            return after + 2
    raise RegexError(f"invalid escape sequence: `\\{character}`")


def _class(pattern: str, position: int, posix_end: list[int]) -> int:
    """A character class from after its `[`; the position after its `]`."""
    start = position - 1
    size = len(pattern)
    if position < size and pattern[position] == "^":
        position += 1
    first = True
    while True:
        if position >= size:
            raise RegexError(f"missing closing ]: `{pattern[start:start + 20]}`")
        character = pattern[position]
        if character == "]" and not first:
            return position + 1
        first = False
        if pattern.startswith("[:", position):
            if posix_end[0] != -1 and posix_end[0] < position + 2:
                posix_end[0] = pattern.find(":]", position + 2)
            end = posix_end[0]
            if end >= 0:
                name = pattern[position + 2:end].removeprefix("^")
                if name not in _POSIX_CLASSES:
                    raise RegexError(f"invalid character class range: "
                                     f"`{pattern[position:end + 2]}`")
                position = end + 2
                continue
        if character == "\\" and position + 1 < size and pattern[position + 1] in "pP":
            position = _unicode_class(pattern, position + 2)
            continue
        if character == "\\" and position + 1 < size and pattern[position + 1] in _PERL_CLASSES:
            position += 2
            continue
        low, position = _class_character(pattern, position, start)
        if position + 1 < size and pattern[position] == "-" and pattern[position + 1] != "]":
            high, after = _class_character(pattern, position + 1, start)
            if high < low:
                raise RegexError(f"invalid character class range: "
                                 f"`{pattern[position - 1:after]}`")
            position = after


def _class_character(pattern: str, position: int, start: int) -> tuple[int, int]:
    """One character of a class, escaped or not: its code point and the position after."""
    if position >= len(pattern):
        raise RegexError(f"missing closing ]: `{pattern[start:start + 20]}`")
    character = pattern[position]
    if character != "\\":
        return ord(character), position + 1
    if position + 1 >= len(pattern):
        raise RegexError("trailing backslash at end of expression")
    escaped = pattern[position + 1]
    after = _character(pattern, position + 1, escaped)
    text = pattern[position + 1:after]
    return _code_point(text), after


def _code_point(escape: str) -> int:
    """The character an escape (without its backslash) stands for."""
    first = escape[0]
    if first in _SINGLE_ESCAPES:
        return ord("\a\f\n\r\t\v"["afnrtv".index(first)])
    if first == "x":
        return int(escape[1:].strip("{}"), 16)
    if (first in _OCTAL and len(escape) > 1) or first == "0":
        return int(escape, 8)
    return ord(first)
