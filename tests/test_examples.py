"""The example configs are valid and use only the metric names the project defines."""

from __future__ import annotations

import re
from pathlib import Path

from exporter import metric_names as m
from scaler.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
    for path in EXAMPLES.iterdir():
        used = set(re.findall(r"\btaskqueue_[a-z_]+", path.read_text()))
        assert used - defined == set(), path.name
