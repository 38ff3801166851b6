"""Label matcher regular expressions checked as Go's regexp reads them, in linear time.

promtool (Prometheus's own parser, Go's regexp) confirms the whole table: what we
accept it accepts, what we refuse it refuses, and which ones match the empty string.
"""

from __future__ import annotations

import contextlib
import subprocess
import time

import pytest
import yaml

from scaler import promql_regex
from tests.services import require

EMPTY, NOT_EMPTY = True, False
# (value, whether it matches the empty string), valid for Prometheus 2.42 and 3.
VALID = [
    ("", EMPTY), ("a", NOT_EMPTY), (".*", EMPTY), (".+", NOT_EMPTY), ("a|", EMPTY),
    ("a|b", NOT_EMPTY), ("(a)", NOT_EMPTY), ("()", EMPTY), ("a*", EMPTY), ("a+", NOT_EMPTY),
    ("a?", EMPTY), ("a{0,3}", EMPTY), ("a{2}", NOT_EMPTY), ("ab*", NOT_EMPTY),
    ("(a|b)*", EMPTY), ("\\Qa.b\\E", NOT_EMPTY), ("\\Q\\E", EMPTY),
    ("\\w{1,255}", NOT_EMPTY), ("\\d+", NOT_EMPTY), ("\\w{400}", NOT_EMPTY),
    ("(?i)abc", NOT_EMPTY), ("(?i)", EMPTY), ("(?:)", EMPTY), ("(?P<x>a)", NOT_EMPTY),
    ("[a-z]+", NOT_EMPTY), ("[]a]", NOT_EMPTY), ("[^]a]", NOT_EMPTY), ("[[:alpha:]]", NOT_EMPTY),
    ("[[:^digit:]x]", NOT_EMPTY), ("[\\d\\s]", NOT_EMPTY), ("\\p{Greek}", NOT_EMPTY),
    ("\\pL", NOT_EMPTY), ("\\PL", NOT_EMPTY), ("[\\p{Lu}]", NOT_EMPTY), ("\\x41", NOT_EMPTY),
    ("\\x{10FFFF}", NOT_EMPTY), ("\\x{000000041}", NOT_EMPTY), ("\\101", NOT_EMPTY),
    ("\\0", NOT_EMPTY), ("\\12", NOT_EMPTY), ("a{,3}", NOT_EMPTY), ("{", NOT_EMPTY),
    ("a{01}", NOT_EMPTY), ("x{a}", NOT_EMPTY), ("}", NOT_EMPTY), ("]", NOT_EMPTY),
    ("^$", EMPTY), ("\\b", NOT_EMPTY), ("\\B", EMPTY), ("\\A\\z", EMPTY),
    ("(a{100}){10}", NOT_EMPTY), ("(a{1000}){0,}", EMPTY), ("(a{0}){1000}", EMPTY),
    ("(?-i)a", NOT_EMPTY), ("(?s).", NOT_EMPTY), ("(?U)a*", EMPTY), ("(?i:a)*", EMPTY),
    ("a{0,}", EMPTY), ("^*", EMPTY), ("(?:a*)*", EMPTY), ("a*?", EMPTY), ("a+?", NOT_EMPTY),
    ("[a-]", NOT_EMPTY), ("[-a]", NOT_EMPTY), ("[a\\-z]", NOT_EMPTY), ("[\\x00-\\x{10FFFF}]",
                                                                      NOT_EMPTY),
    ("\\_", NOT_EMPTY), ("\\.\\*\\$", NOT_EMPTY), ("[[:a]", NOT_EMPTY), ("a\\\n", NOT_EMPTY),
    ("(a|b|)+", EMPTY), ("a|(b|)", EMPTY), ("(a)(b)?", NOT_EMPTY), ("celery|default|emails",
                                                                   NOT_EMPTY),
    ("q[0-9]{3}", NOT_EMPTY), (".*-(a|b)", NOT_EMPTY), ("é+", NOT_EMPTY), ("\\t\\n", NOT_EMPTY),
]
# Refused by Go's regexp: (value, our message).
INVALID = [
    ("(", "missing closing )"), (")", "unexpected )"), ("a)|(b", "unexpected )"),
    ("\\Qabc", "missing closing )"), ("*", "missing argument to repetition operator: `*`"),
    ("a|*", "missing argument to repetition operator: `*`"),
    ("(*)", "missing argument to repetition operator: `*`"),
    ("{2}", "missing argument to repetition operator: `{2}`"),
    ("a**", "invalid nested repetition operator: `**`"),
    ("a**?", "invalid nested repetition operator: `**?`"),
    ("a{2}{3}", "invalid nested repetition operator: `{2}{3}`"),
    ("a{1001}", "invalid repeat count: `{1001}`"), ("a{2,1}", "invalid repeat count: `{2,1}`"),
    ("a{99999999999}", "invalid repeat count: `{99999999999}`"),
    ("(a{100}){11}", "invalid repeat count: `{11}`"),
    ("((a{1000}){1}){2}", "invalid repeat count: `{2}`"),
    ("\\q", "invalid escape sequence: `\\q`"), ("\\1", "invalid escape sequence: `\\1`"),
    ("\\8", "invalid escape sequence: `\\8`"), ("\\C", "invalid escape sequence: `\\C`"),
    ("\\é", "invalid escape sequence: `\\é`"), ("\\x4", "invalid escape sequence: `\\x`"),
    ("\\x{110000}", "invalid escape sequence: `\\x`"), ("[\\b]", "invalid escape sequence: `\\b`"),
    ("\\", "trailing backslash at end of expression"), ("[", "missing closing ]: `[`"),
    ("[a", "missing closing ]: `[a`"), ("[z-a]", "invalid character class range: `z-a`"),
    ("[[:foo:]]", "invalid character class range: `[:foo:]`"),
    ("\\p{}", "invalid character class range: `\\p{}`"),
    ("\\p{Greek", "invalid character class range"),
    ("(?=a)", "invalid or unsupported Perl syntax: `(?=`"),
    ("(?P=x)", "invalid or unsupported Perl syntax: `(?P`"),
    ("(?P<>a)", "invalid named capture: `(?P<>`"), ("(?P<a-b>c)", "invalid named capture"),
    ("(?i-)", "invalid or unsupported Perl syntax: `(?i-)`"),
]


@pytest.mark.parametrize(("value", "empty"), VALID)
def test_valid_expressions_pass_and_say_whether_they_match_the_empty_string(value, empty):
    assert promql_regex.check(value) is empty


@pytest.mark.parametrize(("value", "message"), INVALID)
def test_invalid_expressions_say_why(value, message):
    with pytest.raises(promql_regex.RegexError) as caught:
        promql_regex.check(value)
    assert str(caught.value).startswith(message)


def test_prometheus_3_syntax_passes():
    # Go 1.22's named groups: Prometheus 3 accepts them (2.42, built with an older Go,
    # does not); never refuse what a Prometheus accepts.
    assert promql_regex.check("(?<x>a)?") is EMPTY


def test_the_tables_are_what_prometheus_says(tmp_path):
    """promtool parses each as a matcher: valid ones on a named selector, and on a nameless
    one only those that do not match the empty string; invalid ones are refused."""
    promtool = require("promtool")

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    rules = [{"record": f"valid_{i}", "expr": f"x{{a=~{quoted(v)}}}"}
             for i, (v, _) in enumerate(VALID)]
    rules += [{"record": f"nameless_{i}", "expr": f"{{a=~{quoted(v)}}}"}
              for i, (v, _) in enumerate(VALID)]
    rules += [{"record": f"invalid_{i}", "expr": f"x{{a=~{quoted(v)}}}"}
              for i, (v, _) in enumerate(INVALID)]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    failed = {line.split('"')[3] for line in (result.stdout + result.stderr).splitlines()
              if "could not parse expression" in line}
    assert failed == ({f"nameless_{i}" for i, (_, empty) in enumerate(VALID) if empty}
                      | {f"invalid_{i}" for i in range(len(INVALID))})


@pytest.mark.parametrize("value", [
    "(" * 50_000 + ")" * 50_000, "[" + "[:" * 50_000, "a*" * 50_000, "a|" * 50_000,
    "[a-z]" * 25_000, "\\." * 50_000, "(?P<" * 25_000, "\\x{" * 25_000, "\\p{" * 25_000,
    "(?" * 25_000, "a{1,2}" * 25_000,
])
def test_the_check_takes_linear_time(value):
    started = time.process_time()
    with contextlib.suppress(promql_regex.RegexError):
        promql_regex.check(value)
    # About 1 microsecond a character; a quadratic check would take minutes.
    assert time.process_time() - started < 0.5
