import logging

from exporter.first_seen import FirstSeen
from exporter.snapshot import Unparseable
from exporter.unparseable import Said, UnparseableLedger


def test_first_seen_keeps_the_first_time_and_forgets_ids_gone_from_the_head():
    seen = FirstSeen()
    assert seen.observe(["a", "b"], 10.0) == {"a": 10.0, "b": 10.0}
    assert seen.observe(["a", "c"], 20.0) == {"a": 10.0, "c": 20.0}
    assert seen.observe(["b"], 30.0) == {"b": 30.0}  # b left the head in between
    assert len(seen) == 1


def bad(queue: str, fp: bytes) -> Unparseable:
    return Unparseable("celery", queue, fp, "not JSON")


def test_ledger_counts_each_message_once_per_queue():
    ledger = UnparseableLedger()
    ledger.record([bad("a", b"1"), bad("a", b"2"), bad("b", b"1")])
    ledger.record([bad("a", b"1"), bad("a", b"2")])
    assert ledger.totals() == {("celery", "a"): 2, ("celery", "b"): 1}


def test_ledger_memory_is_bounded():
    ledger = UnparseableLedger(capacity=2)
    ledger.record([bad("a", b"1"), bad("a", b"2"), bad("a", b"3")])
    ledger.record([bad("a", b"3"), bad("a", b"2")])  # still remembered
    assert ledger.totals() == {("celery", "a"): 3}
    ledger.record([bad("a", b"1")])  # forgotten, so it counts again
    assert ledger.totals() == {("celery", "a"): 4}


def test_ledger_logs_each_reason_once_per_queue(caplog):
    ledger = UnparseableLedger()
    with caplog.at_level(logging.WARNING):
        ledger.record([bad("a", str(i).encode()) for i in range(1000)])
        ledger.record([bad("b", b"1"), Unparseable("celery", "a", b"x", "no headers")])
    assert ledger.totals() == {("celery", "a"): 1001, ("celery", "b"): 1}
    assert [(r.args[1], r.args[2]) for r in caplog.records] == [
        ("a", "not JSON"), ("b", "not JSON"), ("a", "no headers")]


def test_said_forgets_the_least_recent_cause_first():
    said = Said(capacity=2)
    assert [said.first(c) for c in ("a", "b", "a", "c")] == [True, True, False, True]
    assert said.first("b")  # forgotten for c; a was seen more recently
    assert not said.first("c")
