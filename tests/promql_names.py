"""Which metric names a PromQL text reads, and which names exist.

Alerts, dashboards and scaler configs may only read what the exporter and the scaler
export (exporter/metric_names.py) or what alerts/ records; their tests share this.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from exporter import metric_names as m

ALERTS_DIR = Path(__file__).resolve().parent.parent / "alerts"

# A string literal of PromQL, double- or single-quoted, with escapes.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# A range or subquery, [5m] or [1h:1m]: its colon is not part of a name.
RANGE = re.compile(r"\[[^\]]*\]")
# taskqueue_ metric names: not inside a recording name (queue:taskqueue_backlog:sum).
METRIC = re.compile(r"(?<![\w:])taskqueue_\w+(?![\w:])")
# Recording names, level:metric:operations: at least one colon.
RECORD = re.compile(r"(?<![\w:])[A-Za-z_]\w*:[\w:]*\w")


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """The taskqueue_ metric names and the recording names a PromQL expression reads.

    Metric names are searched in the whole text, strings included, so that the names in
    a `{__name__=~"a|b"}` matcher count; recording names outside strings only, so that a
    label value such as "host:9808" is not taken for one.
    """
    metrics = set(METRIC.findall(expr))
    records = set(RECORD.findall(RANGE.sub("[]", STRING.sub('""', expr))))
    return metrics, records


def exported_names() -> set[str]:
    """Every series name the exporter and the scaler can expose; a histogram's own name
    is not one (only its _bucket, _sum and _count series are)."""
    names = set()
    for spec in m.ALL_METRICS:
        if spec.type == "histogram":
            names |= {spec.name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(spec.name)
    return names


def recorded_names() -> set[str]:
    """The `record:` names of every rule file in alerts/."""
    names = set()
    for path in sorted(ALERTS_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def unknown_names(expr: str) -> set[str]:
    """Names `expr` reads that nothing exports or records."""
    metrics, records = names_in(expr)
    return (metrics - exported_names()) | (records - recorded_names())
