"""The example configs are valid and use only the metric names the project defines."""

from __future__ import annotations

import re
from pathlib import Path

from demo.configs import Ports, scaler_config
from exporter import metric_names as m
from scaler.config import ScalerConfig, load_config, parse_config
from scaler.evaluate import queries_of
from tests.promql_names import names_in, unknown_names

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_the_scaler_example_is_valid():
    config = load_config(str(EXAMPLES / "scaler.yml"), {})
    assert [s.name for s in config.services] == ["celery-default", "celery-emails",
                                                 "celery-reports"]
    assert [s.limits.max for s in config.services] == [40, 10, 40]
    reports = config.services[2]
    assert reports.rules[0].query == ("sum by (queue) (taskqueue_queue_depth)"
                                      " + sum by (queue) (taskqueue_tasks_unacked)")
    assert reports.rules[0].match_labels == (("queue", "reports"),)
    assert reports.rules[0].rule.target == 5
    # Grouped: three services, one query per rule.
    assert len({r.query for s in config.services for r in s.rules}) == 3


def test_the_local_example_is_valid():
    config = load_config(str(EXAMPLES / "scaler-local.yml"), {})
    emails = config.services[1]
    assert emails.name == "local-emails"
    assert emails.backend.command[:6] == ("celery", "-A", "app", "worker", "-Q", "emails")
    assert "emails-{worker}@%h" in emails.backend.command
    assert emails.backend.ready_pattern == r"ready\."


def test_examples_name_only_defined_metrics():
    defined = {spec.name for spec in m.ALL_METRICS}
    # A histogram's series: comments show how to measure from _sum and _count.
    defined |= {f"{spec.name}_{suffix}" for spec in m.ALL_METRICS if spec.type == "histogram"
                for suffix in ("bucket", "sum", "count")}
    for path in EXAMPLES.iterdir():
        used = set(re.findall(r"\btaskqueue_[a-z_]+", path.read_text()))
        assert used - defined == set(), path.name


def shipped_configs() -> dict[str, ScalerConfig]:
    """Every scaler config the repository ships or generates (deploy/ecs has its own test)."""
    configs = {path.name: load_config(str(path), {}) for path in sorted(EXAMPLES.glob("*.yml"))}
    configs["compose/scaler.yml"] = load_config(str(ROOT / "compose" / "scaler.yml"), {})
    # The peers' policies that `make bench-policies` runs.
    for path in sorted((ROOT / "bench" / "policies").glob("*.yml")):
        configs[f"bench/policies/{path.name}"] = load_config(str(path), {})
    configs["demo"] = parse_config(
        scaler_config(Ports(1, 2, 3, 4), "python3", ROOT, "redis://127.0.0.1:1/0"), {})
    return configs


def test_every_shipped_query_reads_only_exported_or_recorded_names():
    for name, config in shipped_configs().items():
        for service in config.services:
            for query in queries_of(service):
                # Every query reads some name, but a constant (the fixed fleet's vector(40)).
                constant = re.fullmatch(r"vector\(\d+\)", query.strip()) is not None
                assert constant or names_in(query) != (set(), set()), (name, query)
                assert unknown_names(query) == set(), (name, service.name, query)
