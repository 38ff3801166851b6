from exporter import metric_names as m
from exporter.event_tracker import EventTracker
from exporter.families import (
    event_families,
    exporter_families,
    queue_families,
    receiver_families,
)
from exporter.snapshot import QueueSnapshot
from tests.scrape import samples_of, value

NOW = 1_000.0


def test_queue_families_map_every_field():
    celery = QueueSnapshot("celery", "default", depth=7, oldest_enqueued_at=940.0, unacked=3,
                           scheduled=1)
    rq = QueueSnapshot("rq", "high", depth=0, started=2, failed=5, scheduled=4)
    s = samples_of(queue_families([rq, celery], NOW))
    assert value(s, m.QUEUE_DEPTH.name, system="celery", queue="default") == 7
    assert value(s, m.OLDEST_TASK_AGE.name, system="celery", queue="default") == 60.0
    assert value(s, m.TASKS_UNACKED.name, system="celery", queue="default") == 3
    assert value(s, m.TASKS_SCHEDULED.name, system="celery", queue="default") == 1
    assert value(s, m.QUEUE_DEPTH.name, system="rq", queue="high") == 0
    assert value(s, m.OLDEST_TASK_AGE.name, system="rq", queue="high") == 0.0
    assert value(s, m.TASKS_STARTED.name, system="rq", queue="high") == 2
    assert value(s, m.TASKS_FAILED.name, system="rq", queue="high") == 5
    assert value(s, m.TASKS_SCHEDULED.name, system="rq", queue="high") == 4
    # Fields that do not apply to a system are absent, not zero.
    assert value(s, m.TASKS_UNACKED.name, system="rq", queue="high") is None
    assert value(s, m.TASKS_STARTED.name, system="celery", queue="default") is None
    assert len(s) == 9


def test_age_is_never_negative():
    ahead = QueueSnapshot("celery", "q", depth=1, oldest_enqueued_at=NOW + 5)
    s = samples_of(queue_families([ahead], NOW))
    assert value(s, m.OLDEST_TASK_AGE.name, system="celery", queue="q") == 0.0


def test_exporter_families():
    s = samples_of(exporter_families(0.25, False, {("celery", "q"): 3}))
    assert value(s, m.SCRAPE_DURATION.name) == 0.25
    assert value(s, m.SCRAPE_SUCCESS.name) == 0.0
    assert value(s, m.UNPARSEABLE_MESSAGES.name, system="celery", queue="q") == 3


def test_every_family_is_declared_with_its_help_text():
    families = queue_families([QueueSnapshot("rq", "q", 1, 1.0, 1, 1, 1, 1)], NOW)
    families += exporter_families(0.0, True, {("rq", "q"): 1})
    families += event_families(EventTracker().snapshot(NOW), per_worker=True)
    families += receiver_families(True, None, inspecting=True)
    declared = {spec.name.removesuffix("_total"): spec
                for spec in m.QUEUE_METRICS + m.EVENT_METRICS + m.EXPORTER_METRICS}
    assert {f.name for f in families} == set(declared)
    for family in families:
        assert family.documentation == declared[family.name].help
        assert all(n.startswith(m.PREFIX) for n in [family.name])
