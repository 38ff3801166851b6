"""Recording rules in simulated time.

Prometheus' rule manager evaluates recording rules on the wall clock, which the
simulation does not follow. So the simulator does what the rule manager does, at
each simulated evaluation instant: it runs each rule's expression on the same
Prometheus at that instant (`time=`) and writes the result back under the rule's
name. Only rules that the scaler config reads, directly or through other rules,
are run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# A recorded name as Prometheus' convention writes them (level:metric:operations).
# The look-behind keeps a subquery's `[1h:5m]` out.
_RECORDED = re.compile(r"(?<![\w.])[a-zA-Z_][a-zA-Z0-9_]*(?::[a-zA-Z0-9_]+)+")
# Label values may hold colons: they are not names.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


class RuleFileError(ValueError):
    pass


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str
    labels: Mapping[str, str]
    group: str


def load_rule_files(paths: Sequence[str | Path]) -> list[RecordingRule]:
    """Recording rules of Prometheus rule files, in evaluation order; alerts are skipped."""
    rules: list[RecordingRule] = []
    for path in paths:
        try:
            document = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            raise RuleFileError(f"{path}: cannot read: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise RuleFileError(f"{path}: not YAML: {_one_line(error)}") from None
        groups = document.get("groups") if isinstance(document, dict) else None
        if not isinstance(groups, list):
            raise RuleFileError(f"{path}: groups: must be a list of rule groups")
        for i, group in enumerate(groups):
            entries = group.get("rules") if isinstance(group, dict) else None
            if not isinstance(entries, list):
                raise RuleFileError(f"{path}: groups[{i}].rules: must be a list")
            name = str(group.get("name", i))
            for j, rule in enumerate(entries):
                if not isinstance(rule, dict) or "record" not in rule:
                    continue
                where = f"{path}: groups[{i}].rules[{j}]"
                if not isinstance(rule.get("expr"), str | int | float):
                    raise RuleFileError(f"{where}.expr: must be a PromQL expression")
                labels = rule.get("labels") or {}
                if not isinstance(labels, dict):
                    raise RuleFileError(f"{where}.labels: must map names to values")
                rules.append(RecordingRule(str(rule["record"]), str(rule["expr"]),
                                           {str(k): str(v) for k, v in labels.items()}, name))
    return rules


def recorded_names(text: str) -> set[str]:
    return set(_RECORDED.findall(_STRING.sub('""', text)))


def needed_rules(rules: Sequence[RecordingRule], queries: Iterable[str]) -> list[RecordingRule]:
    """The rules the queries read, directly or through other rules, in file order."""
    wanted: set[str] = set()
    for query in queries:
        wanted |= recorded_names(query)
    by_name: dict[str, list[RecordingRule]] = {}
    for rule in rules:
        by_name.setdefault(rule.record, []).append(rule)
    pending = list(wanted)
    while pending:
        for rule in by_name.get(pending.pop(), []):
            for name in recorded_names(rule.expr) - wanted:
                wanted.add(name)
                pending.append(name)
    return [rule for rule in rules if rule.record in wanted]


def missing_records(rules: Sequence[RecordingRule], queries: Iterable[str]) -> list[str]:
    """Recorded names the queries read that no loaded rule records."""
    known = {rule.record for rule in rules}
    found: set[str] = set()
    for query in queries:
        found |= recorded_names(query)
    for rule in needed_rules(rules, queries):
        found |= recorded_names(rule.expr)
    return sorted(found - known)


def _one_line(error: Any) -> str:
    return " ".join(str(error).split())
