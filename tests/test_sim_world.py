"""The simulated queue and workers: event by event, by hand."""

from __future__ import annotations

import math
import random

import pytest

from scaler.ecs import ServiceCounts as Counts
from scaler.simulation.world import World


def world(arrivals, durations, *, concurrency=1, startup=10.0, protection=True, initial=1,
          seed=1):
    return World(arrivals, durations, concurrency=concurrency, startup=lambda: startup,
                 protection=protection, initial=initial, rng=random.Random(seed),
                 queue="q", task="t", start=1000.0)


def test_fifo_on_one_worker():
    w = world([0.0, 1.0, 2.0], [5.0, 5.0, 5.0])
    w.advance(100)
    assert list(w.started) == [0.0, 5.0, 10.0]
    assert list(w.finished) == [5.0, 10.0, 15.0]
    assert w.worker_seconds() == 100.0  # the initial worker, billed from t=0 until now


def test_readings_mid_run():
    w = world([0.0, 1.0, 2.0], [5.0, 5.0, 5.0], concurrency=1)
    w.advance(3.0)
    assert (w.depth, w.busy, w.oldest_age()) == (2, 1, 2.0)
    q = w.queue_snapshot()
    assert (q.queue, q.depth, q.unacked, q.oldest_enqueued_at) == ("q", 2, 1, 1001.0)
    e = w.events_snapshot()
    assert e.tasks[("q", "t", "sent")] == 3
    assert e.tasks[("q", "t", "started")] == 1
    assert e.active == {"q": 1} and e.workers == {"q": 1}
    assert e.wait[("q", "t")].count == 1 and e.wait[("q", "t")].total == 0.0


def test_concurrency_slots_and_waits():
    w = world([0.0, 0.0, 0.0], [4.0, 4.0, 4.0], concurrency=2)
    w.advance(20)
    assert list(w.started) == [0.0, 0.0, 4.0]
    hist = w.events_snapshot().wait[("q", "t")]
    assert hist.count == 3 and hist.total == 4.0


def test_new_workers_start_after_the_startup_delay():
    w = world([0.0] * 4, [100.0] * 4, startup=30.0)
    w.advance(5.0)
    w.set_desired(3)
    assert w.counts() == Counts(desired=3, running=1, pending=2)
    w.advance(34.0)
    assert math.isnan(w.started[1])
    w.advance(35.0)
    assert list(w.started)[:3] == [0.0, 35.0, 35.0]
    assert (w.counts().running, w.counts().pending) == (3, 0)
    assert w.actions == 1


def test_scale_in_with_protection_lets_busy_workers_finish():
    w = world([0.0, 0.0], [50.0, 10.0], initial=3)
    w.advance(1.0)  # worker 0 runs task 0, worker 1 task 1, worker 2 idle
    w.set_desired(1)
    # The idle worker goes at once; a busy one drains: no new task, stops when done.
    c = w.counts()
    assert (c.desired, c.running) == (1, 2)
    w.advance(11.0)
    assert w.counts().running == 1
    assert w.requeued == 0
    assert w.finished[1] == 10.0
    # Billing: 3 workers from 0; the idle one stopped at 1, the drained one at 10.
    w.advance(60.0)
    assert w.worker_seconds() == pytest.approx(60.0 + 1.0 + 10.0)


def test_scale_in_without_protection_requeues_the_tasks_of_stopped_workers():
    w = world([0.0, 0.0], [50.0, 50.0], initial=2, protection=False)
    w.advance(5.0)
    w.set_desired(1)
    assert w.requeued == 1
    assert w.depth == 1 and w.oldest_age() == 5.0  # back at the head, with its arrival
    w.advance(200.0)
    # The survivor finishes its own task at 50, then reruns the other from the start.
    assert sorted(w.finished) == [50.0, 100.0]
    assert w.events_snapshot().tasks[("q", "t", "started")] == 3


def test_scaling_up_again_takes_back_draining_workers_first():
    w = world([0.0, 0.0, 0.0], [50.0, 50.0, 50.0], initial=3)
    w.advance(1.0)
    w.set_desired(1)
    assert w.counts() == Counts(desired=1, running=3, pending=0)  # two drain
    w.set_desired(3)
    assert w.counts() == Counts(desired=3, running=3, pending=0)  # no launch
    assert len(w.workers) == 3


def test_requeued_tasks_go_back_oldest_first_and_wait_again():
    w = world([0.0, 2.0], [50.0, 50.0], initial=1, concurrency=2, protection=False)
    w.advance(5.0)
    w.set_desired(0)
    assert (w.requeued, w.depth, w.oldest_age()) == (2, 2, 5.0)
    assert math.isnan(w.started[0]) and math.isnan(w.started[1])


@pytest.mark.parametrize("seed", range(1, 9))
def test_tasks_of_several_stopped_workers_go_back_in_arrival_order(seed):
    # ECS picks the victims in any order; the queue stays FIFO across them.
    w = world([0.0, 1.0, 2.0], [50.0, 50.0, 50.0], initial=3, protection=False, seed=seed)
    w.advance(5.0)
    w.set_desired(0)
    assert (w.requeued, w.depth, w.oldest_age()) == (3, 3, 5.0)
    w.set_desired(1)
    w.advance(500.0)
    assert list(w.started) == [15.0, 65.0, 115.0]


def test_a_further_scale_in_leaves_draining_workers_draining():
    w = world([0.0] * 4, [50.0] * 4, initial=4)
    w.advance(1.0)

    def draining():
        return {x.id for x in w.workers if x.state == "draining"}

    w.set_desired(1)
    assert len(draining()) == 3
    w.set_desired(2)  # one taken back
    before = draining()
    assert len(before) == 2
    w.set_desired(1)
    assert len(draining()) == 3 and before <= draining()


def test_a_worker_stopped_while_starting_never_works():
    w = world([0.0], [1.0], initial=0, startup=30.0)
    w.set_desired(2)
    w.advance(10.0)
    w.set_desired(1)  # the newest starting one goes first
    w.advance(100.0)
    assert w.counts().running == 1
    assert w.started[0] == 30.0
    assert w.worker_seconds() == pytest.approx(100.0 + 10.0)


def test_idle_means_nothing_left():
    w = world([0.0], [1.0])
    assert not w.idle
    w.advance(0.5)
    assert not w.idle
    w.advance(1.0)
    assert w.idle
