"""The decision core with a fake clock: every reason code, windows, policies, tolerance."""

from __future__ import annotations

import pytest

from scaler.decision import (
    Behavior,
    Counts,
    Decision,
    Direction,
    History,
    Inputs,
    Limits,
    Pause,
    Policy,
    Reason,
    decide,
    default_scale_down,
    default_scale_up,
    parse_pause,
    restart_history,
)

DEFAULT = Behavior(default_scale_up(), default_scale_down())
# No windows, no rate limits, no tolerance: the rules' count, clamped.
DIRECT = Behavior(Direction(0, ()), Direction(0, ()), tolerance=0.0)
LIMITS = Limits(min=1, max=10)


def one(recommendation: int, desired: int, *, limits: Limits = LIMITS,
        behavior: Behavior = DIRECT, pending: int = 0, history: History | None = None,
        now: float = 1000.0, **inputs) -> Decision:
    return decide(Inputs((recommendation,), **inputs), Counts(desired, desired - pending, pending),
                  limits, behavior, history or History(), now)


@pytest.mark.parametrize(
    ("recommendation", "desired", "count", "reason"),
    [
        (5, 2, 5, Reason.SCALE_UP),
        (2, 5, 2, Reason.SCALE_DOWN),
        (4, 4, 4, Reason.HOLD),
        (50, 3, 10, Reason.AT_MAX),
        (50, 10, 10, Reason.AT_MAX),
        (0, 3, 1, Reason.AT_MIN),
        (0, 1, 1, Reason.AT_MIN),
        (50, 12, 10, Reason.AT_MAX),  # above max (max lowered): down to max
        (5, 12, 5, Reason.SCALE_DOWN),
        (0, 0, 1, Reason.AT_MIN),  # below min: up to min
    ],
)
def test_direct_decisions(recommendation, desired, count, reason):
    decision = one(recommendation, desired)
    assert (decision.count, decision.reason) == (count, reason)


def test_the_largest_recommendation_wins():
    decision = decide(Inputs((2, 7, 4)), Counts(3, 3, 0), LIMITS, DIRECT, History(), 0.0)
    assert (decision.count, decision.reason, decision.recommendation) == (7, Reason.SCALE_UP, 7)


@pytest.mark.parametrize(
    ("recommendation", "desired", "count", "reason"),
    [
        (11, 10, 10, Reason.HOLD),  # +10 %: within the tolerance
        (9, 10, 10, Reason.HOLD),
        (12, 10, 12, Reason.SCALE_UP),
        (2, 1, 2, Reason.SCALE_UP),  # small counts: one worker is 100 %
    ],
)
def test_tolerance(recommendation, desired, count, reason):
    behavior = Behavior(Direction(0, ()), Direction(0, ()), tolerance=0.1)
    decision = one(recommendation, desired, behavior=behavior, limits=Limits(1, 20))
    assert (decision.count, decision.reason) == (count, reason)


def test_scale_down_waits_for_the_highest_recommendation_of_the_window():
    behavior = Behavior(Direction(0, ()), Direction(300, ()), tolerance=0.0)
    history = History()
    seen = []
    # Recommendations at t=0..: 8, then 3 for a while; desired starts at 8.
    desired = 8
    for t, rec in [(0, 8), (60, 3), (120, 3), (299, 3), (301, 3), (361, 2)]:
        decision = decide(Inputs((rec,)), Counts(desired, desired, 0), LIMITS, behavior,
                          history, float(t))
        seen.append((t, decision.count, decision.reason))
        desired, history = decision.count, decision.history
    assert seen == [
        (0, 8, Reason.HOLD),
        (60, 8, Reason.SCALE_DOWN_STABILIZED),
        (120, 8, Reason.SCALE_DOWN_STABILIZED),
        (299, 8, Reason.SCALE_DOWN_STABILIZED),
        (301, 3, Reason.SCALE_DOWN),  # the 8 of t=0 has left the window
        (361, 3, Reason.SCALE_DOWN_STABILIZED),  # 3 of t=299 and t=301 still in it
    ]


def test_scale_up_window_takes_the_lowest_recommendation():
    behavior = Behavior(Direction(60, ()), Direction(0, ()), tolerance=0.0)
    history = decide(Inputs((2,)), Counts(2, 2, 0), LIMITS, behavior, History(), 0.0).history
    decision = decide(Inputs((9,)), Counts(2, 2, 0), LIMITS, behavior, history, 30.0)
    assert (decision.count, decision.reason) == (2, Reason.SCALE_UP_LIMITED)
    decision = decide(Inputs((9,)), Counts(2, 2, 0), LIMITS, behavior, decision.history, 61.0)
    assert (decision.count, decision.reason) == (9, Reason.SCALE_UP)


@pytest.mark.parametrize(
    ("policies", "select", "desired", "recommendation", "count", "reason"),
    [
        # The HPA default: max(+100 %, +4) per 15 s.
        ((Policy("percent", 100, 15), Policy("workers", 4, 15)), "max", 1, 50, 5, "limited"),
        ((Policy("percent", 100, 15), Policy("workers", 4, 15)), "max", 10, 50, 20, "limited"),
        ((Policy("percent", 100, 15), Policy("workers", 4, 15)), "min", 10, 50, 14, "limited"),
        ((Policy("percent", 100, 15), Policy("workers", 4, 15)), "max", 10, 15, 15, "up"),
        ((Policy("workers", 1, 60),), "max", 3, 9, 4, "limited"),
        ((Policy("workers", 1, 60),), "disabled", 3, 9, 3, "limited"),
        ((Policy("percent", 50, 60),), "max", 0, 9, 1, "limited"),  # out of zero: at least 1
    ],
)
def test_scale_up_policies(policies, select, desired, recommendation, count, reason):
    behavior = Behavior(Direction(0, policies, select), Direction(0, ()), tolerance=0.0)
    decision = one(recommendation, desired, behavior=behavior, limits=Limits(0, 100))
    expected = Reason.SCALE_UP_LIMITED if reason == "limited" else Reason.SCALE_UP
    assert (decision.count, decision.reason) == (count, expected)


def test_scale_up_policy_counts_what_was_added_in_its_period():
    behavior = Behavior(Direction(0, (Policy("workers", 4, 60),)), Direction(0, ()), 0.0)
    first = one(50, 2, behavior=behavior, limits=Limits(0, 100), now=0.0)
    assert first.count == 6
    second = one(50, 6, behavior=behavior, limits=Limits(0, 100), history=first.history,
                 now=30.0)
    assert (second.count, second.reason) == (6, Reason.SCALE_UP_LIMITED)
    third = one(50, 6, behavior=behavior, limits=Limits(0, 100), history=second.history,
                now=61.0)
    assert (third.count, third.reason) == (10, Reason.SCALE_UP_LIMITED)


@pytest.mark.parametrize(
    ("policies", "select", "desired", "recommendation", "count", "reason"),
    [
        ((Policy("percent", 100, 15),), "max", 10, 1, 1, Reason.SCALE_DOWN),
        ((Policy("workers", 2, 60),), "max", 10, 1, 8, Reason.SCALE_DOWN_LIMITED),
        ((Policy("percent", 50, 60),), "max", 9, 1, 5, Reason.SCALE_DOWN_LIMITED),  # ceil(4.5)
        ((Policy("percent", 50, 60), Policy("workers", 2, 60)), "max", 10, 1, 5,
         Reason.SCALE_DOWN_LIMITED),
        ((Policy("percent", 50, 60), Policy("workers", 2, 60)), "min", 10, 1, 8,
         Reason.SCALE_DOWN_LIMITED),
        ((Policy("workers", 2, 60),), "disabled", 10, 1, 10, Reason.SCALE_DOWN_LIMITED),
    ],
)
def test_scale_down_policies(policies, select, desired, recommendation, count, reason):
    behavior = Behavior(Direction(0, ()), Direction(0, policies, select), tolerance=0.0)
    decision = one(recommendation, desired, behavior=behavior)
    assert (decision.count, decision.reason) == (count, reason)


def test_activation_brings_a_service_out_of_zero_at_once():
    limits = Limits(min=0, max=10)
    # Rules say 0 (e.g. a queue too small to round up), activation says there is work.
    decision = one(0, 0, limits=limits, behavior=DEFAULT, activation=True)
    assert (decision.count, decision.reason) == (1, Reason.SCALE_UP)
    # No work: the rules' 3 are overruled, and the scale-down window applies as usual.
    history = History(recommendations=((900.0, 3),))
    decision = one(3, 3, limits=limits, behavior=DEFAULT, activation=False, history=history)
    assert (decision.count, decision.reason) == (3, Reason.SCALE_DOWN_STABILIZED)
    decision = one(3, 3, limits=limits, behavior=DEFAULT, activation=False, now=1201.0,
                   history=history)
    assert (decision.count, decision.reason) == (0, Reason.SCALE_DOWN)


def test_pending_tasks_are_capacity_on_its_way():
    # Desired 6 of which 4 still start; the rules still say 6: nothing more to do.
    decision = one(6, 6, pending=4, behavior=DEFAULT)
    assert (decision.count, decision.reason) == (6, Reason.HOLD)


@pytest.mark.parametrize(("guard", "count", "reason"), [
    (False, 6, Reason.GUARDED), (True, 2, Reason.SCALE_DOWN), (None, 2, Reason.SCALE_DOWN)])
def test_scale_down_guard(guard, count, reason):
    decision = one(2, 6, guard=guard)
    assert (decision.count, decision.reason) == (count, reason)


def test_guard_never_holds_a_service_above_max():
    decision = one(2, 14, guard=False)
    assert (decision.count, decision.reason) == (10, Reason.AT_MAX)


def test_guard_does_not_stop_a_scale_up():
    assert one(8, 6, guard=False).count == 8


def test_no_data_holds_and_counts_failures_until_the_fallback():
    limits = Limits(min=1, max=10, fallback=4, failure_threshold=3)
    history = History()
    seen = []
    for _ in range(4):
        decision = decide(Inputs((), failed=True), Counts(2, 2, 0), limits, DEFAULT, history, 0.0)
        seen.append((decision.count, decision.reason, decision.history.failures))
        history = decision.history
    assert seen == [(2, Reason.NO_DATA, 1), (2, Reason.NO_DATA, 2), (4, Reason.FALLBACK, 3),
                    (4, Reason.FALLBACK, 4)]
    recovered = decide(Inputs((2,)), Counts(4, 4, 0), limits, DIRECT, history, 1.0)
    assert recovered.history.failures == 0


def test_a_fallback_never_scales_down():
    limits = Limits(min=1, max=10, fallback=2, failure_threshold=1)
    decision = decide(Inputs((3,), failed=True), Counts(7, 7, 0), limits, DEFAULT, History(), 0.0)
    assert (decision.count, decision.reason) == (7, Reason.FALLBACK)


def test_no_data_never_scales_down_even_with_a_window_full_of_low_recommendations():
    history = History(recommendations=((990.0, 1),))
    decision = decide(Inputs((), failed=True), Counts(8, 8, 0), LIMITS, DEFAULT, history, 1000.0)
    assert (decision.count, decision.reason) == (8, Reason.NO_DATA)


def test_no_data_still_raises_a_service_below_its_minimum():
    limits = Limits(min=2, max=10, fallback=3, failure_threshold=2)
    seen = []
    history = History()
    for current in (0, 2, 1):
        decision = decide(Inputs((), failed=True), Counts(current, current, 0), limits, DEFAULT,
                          history, 0.0)
        seen.append((decision.count, decision.reason))
        history = decision.history
    assert seen == [(2, Reason.NO_DATA), (3, Reason.FALLBACK), (3, Reason.FALLBACK)]


def test_history_keeps_only_what_the_windows_and_periods_need():
    history = History(recommendations=((0.0, 5), (800.0, 5)), changes=((0.0, 2), (995.0, 1)))
    decision = one(5, 5, behavior=DEFAULT, history=history, now=1000.0)
    assert decision.history.recommendations == ((800.0, 5), (1000.0, 5))
    assert decision.history.changes == ((995.0, 1),)


def test_direction_labels():
    decision = one(5, 2)
    assert (decision.direction(2), decision.direction(5), decision.direction(9)) == (
        "up", "none", "down")


# --- what really happened to the service, whoever did it ------------------------------------

WIDE = Limits(1, 20)
UP_ONE_PER_MINUTE = Behavior(Direction(0, (Policy("workers", 1, 60),)),
                             Direction(300, (Policy("percent", 100, 15),)), tolerance=0.0)


def run(steps, behavior=UP_ONE_PER_MINUTE, limits=WIDE, history=None):
    """Decides at each (t, recommendation, desired read); returns (count, reason) and the
    history. `desired` None: the service is where the last decision left it."""
    history = history or History()
    seen, current = [], None
    for t, recommendation, desired in steps:
        current = desired if desired is not None else current
        decision = decide(Inputs((recommendation,)), Counts(current, current, 0), limits,
                          behavior, history, float(t))
        seen.append((decision.count, decision.reason))
        history, current = decision.history, decision.count
    return seen, history


def test_a_manual_raise_is_held_for_the_scale_down_window_as_a_recommendation():
    seen, history = run([(0, 2, 2), (30, 2, 8), (60, 2, None), (329, 2, None), (331, 2, None)])
    assert seen == [(2, Reason.HOLD), (8, Reason.SCALE_DOWN_STABILIZED),
                    (8, Reason.SCALE_DOWN_STABILIZED), (8, Reason.SCALE_DOWN_STABILIZED),
                    (2, Reason.SCALE_DOWN)]
    assert history.desired == 2


def test_rate_policies_count_a_manual_cut_so_the_service_climbs_back():
    # The scaler takes 1 -> 2 at t=0 (+1 per minute). Someone cuts to 1 at t=10. At t=20
    # the rules want 4: one worker more than the count at the period's start (1) is 2,
    # at once; without counting the cut, the scaler's own +1 would have held it at 1.
    seen, history = run([(0, 2, 1), (10, 4, 1), (20, 4, None), (61, 4, None)])
    assert seen == [(2, Reason.SCALE_UP), (2, Reason.SCALE_UP_LIMITED),
                    (2, Reason.SCALE_UP_LIMITED), (3, Reason.SCALE_UP_LIMITED)]
    assert history.changes == ((10.0, -1), (10.0, 1), (61.0, 1))


def test_a_manual_cut_after_scaler_steps_leaves_room_for_the_steps_undone():
    # +3 per minute: the scaler steps 1 -> 4; someone cuts to 2; the rules still want 4:
    # the period started at 1, so 4 is allowed at once (not 2: the cut is counted too).
    behavior = Behavior(Direction(0, (Policy("workers", 3, 60),)), Direction(0, ()), 0.0)
    seen, _ = run([(0, 4, 1), (10, 4, 2)], behavior=behavior)
    assert seen == [(4, Reason.SCALE_UP), (4, Reason.SCALE_UP)]


def test_a_refused_or_dry_run_change_is_not_remembered_as_made():
    decision = decide(Inputs((6,)), Counts(2, 2, 0), LIMITS, DEFAULT, History(desired=2), 5.0)
    assert decision.count == 6
    assert decision.kept(True).changes == ((5.0, 4),) and decision.kept(True).desired == 6
    assert decision.kept(False).changes == () and decision.kept(False).desired == 2
    # Both remember the recommendation: the windows see what the rules said either way.
    assert decision.kept(False).recommendations == ((5.0, 6),)


def test_a_change_read_for_the_first_time_is_not_taken_for_someone_elses():
    decision = decide(Inputs((3,)), Counts(3, 3, 0), LIMITS, DEFAULT, History(), 0.0)
    assert decision.history.changes == () and decision.history.desired == 3


# --- a scaler that starts without history -----------------------------------------------------


def test_a_restart_without_history_holds_the_first_count_read_for_one_scale_down_window():
    history = restart_history(1000.0, UP_ONE_PER_MINUTE)  # scale-down window 300 s
    seen, _ = run([(1004, 1, 5), (1100, 1, None), (1299, 1, None), (1301, 1, None),
                   (1302, 7, None)], history=history)
    assert seen == [(5, Reason.SCALE_DOWN_STABILIZED), (5, Reason.SCALE_DOWN_STABILIZED),
                    (5, Reason.SCALE_DOWN_STABILIZED), (1, Reason.SCALE_DOWN),
                    (6, Reason.SCALE_UP_LIMITED)]  # the period started at 5: +1 from there


def test_a_restart_without_history_does_not_hold_a_scale_up():
    history = restart_history(1000.0, DEFAULT)
    seen, _ = run([(1004, 9, 5)], behavior=DEFAULT, history=history)
    assert seen == [(9, Reason.SCALE_UP)]


# --- paused ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "pause", "problem"), [
    (None, None, None), ("", None, None), ("false", None, None), (" FALSE ", None, None),
    ("true", Pause(), None), ("True", Pause(), None), ("0", Pause(0), None),
    ("12", Pause(12), None), ("5000", Pause(5000), None),
    ("5001", Pause(), "pause tag value '5001' is neither true, false nor a count from 0 to "
                      "5000: held where it is"),
    ("-3", Pause(), "pause tag value '-3' is neither true, false nor a count from 0 to 5000: "
                    "held where it is"),
    ("yes please", Pause(), "pause tag value 'yes please' is neither true, false nor a count "
                            "from 0 to 5000: held where it is"),
])
def test_pause_tag_values(tag, pause, problem):
    assert parse_pause(tag) == (pause, problem)


def test_a_paused_service_is_held_where_it_is_or_at_its_count_whatever_the_rules_say():
    held = decide(Inputs((9,)), Counts(3, 3, 0), LIMITS, DEFAULT, History(desired=3), 0.0,
                  Pause())
    assert (held.count, held.reason, held.recommendation) == (3, Reason.PAUSED, 9)
    at = decide(Inputs((9,)), Counts(3, 3, 0), LIMITS, DEFAULT, History(desired=3), 0.0,
                Pause(0))
    assert (at.count, at.reason) == (0, Reason.PAUSED)  # below min: the operator's word
    assert at.history.changes == ((0.0, -3),)
    # Failed rules do not change that either.
    failed = decide(Inputs((), failed=True), Counts(3, 3, 0), Limits(1, 10, fallback=6,
                    failure_threshold=1), DEFAULT, History(), 0.0, Pause())
    assert (failed.count, failed.reason) == (3, Reason.PAUSED)
    # The rules' recommendations keep the windows warm for the resume.
    assert held.history.recommendations == ((0.0, 9),)


def test_a_manual_raise_is_never_cut_by_an_up_policy_when_the_rules_want_more():
    # Someone raised 2 -> 10 within the period; the rules want 30; +100 % / +4 per 15 s
    # from the period's start (2) would allow only 6: the count stays, it never drops.
    decision = decide(Inputs((30,)), Counts(10, 10, 0), Limits(1, 50), DEFAULT,
                      History(desired=2), 100.0)
    assert (decision.count, decision.reason) == (10, Reason.SCALE_UP_LIMITED)


def test_a_manual_cut_is_never_raised_by_a_down_policy_when_the_rules_want_less():
    behavior = Behavior(default_scale_up(), Direction(0, (Policy("workers", 1, 60),)), 0.0)
    # Someone cut 10 -> 2 at t=5: the period started at 10, whose -1 limit is 9.
    decision = decide(Inputs((1,)), Counts(2, 2, 0), Limits(1, 50), behavior,
                      History(desired=2, changes=((5.0, -8),)), 15.0)
    assert (decision.count, decision.reason) == (2, Reason.SCALE_DOWN_LIMITED)


def test_a_fallback_never_lowers_a_count_above_max():
    limits = Limits(min=1, max=10, fallback=4, failure_threshold=1)
    decision = decide(Inputs((), failed=True), Counts(20, 20, 0), limits, DEFAULT, History(),
                      0.0)
    assert (decision.count, decision.reason) == (20, Reason.FALLBACK)
    # Below the fallback it still rises, to at most max.
    decision = decide(Inputs((), failed=True), Counts(2, 2, 0), Limits(1, 3, 6, 1), DEFAULT,
                      History(), 0.0)
    assert (decision.count, decision.reason) == (3, Reason.FALLBACK)


@pytest.mark.parametrize("tag", ["²", "①", "٣"])
def test_a_pause_tag_of_other_digits_pauses_where_it_is(tag):
    assert parse_pause(tag) == (Pause(), f"pause tag value {tag!r} is neither true, false nor "
                                         "a count from 0 to 5000: held where it is")
