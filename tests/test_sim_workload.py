"""Workload generators, the CSV reader and service-time distributions of `simulate`.

Statistical checks use a fixed seed, so they are deterministic; their tolerances are still
computed (5 standard deviations of the quantity checked), so a different seed would pass too.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from scaler.simulation.workload import (
    DEFAULT_START,
    WorkloadError,
    load_workload,
    parse_distribution,
    rate_at,
    with_durations,
)

GENERATORS = [
    "steady:rate=5/s,duration=10m",
    "steady:rate=300/min,noise=0,duration=10m",
    "diurnal:base=1,peak=5,period=1h,duration=20m",
    "burst:base=1,peak=20,every=2m,length=30s,duration=10m",
]


def _within(observed: float, expected: float, sd: float) -> None:
    assert abs(observed - expected) <= 5 * sd, (observed, expected, sd)


def _count(arrivals, begin: float, end: float) -> int:
    return sum(1 for t in arrivals if begin <= t < end)


# --- generators ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", GENERATORS)
def test_a_seed_gives_the_same_workload_and_another_seed_a_different_one(spec):
    first, again, other = (load_workload(spec, seed=s) for s in (7, 7, 8))
    assert first.arrivals.tobytes() == again.arrivals.tobytes()
    assert first.arrivals.tobytes() != other.arrivals.tobytes()
    assert first.arrivals.typecode == first.durations.typecode == "d"
    assert len(first.durations) == len(first.arrivals) > 0
    assert all(math.isnan(d) for d in first.durations)
    assert list(first.arrivals) == sorted(first.arrivals)
    assert first.arrivals[0] >= 0 and first.arrivals[-1] < first.horizon
    assert first.start == DEFAULT_START
    assert first.description == f"{spec} (seed 7, {len(first.arrivals):,} tasks)"


@pytest.mark.parametrize("spec", GENERATORS)
def test_a_shorter_duration_is_a_prefix_of_the_longer_run(spec):
    full = load_workload(spec, seed=3)
    short = load_workload(spec, seed=3, duration=150)
    assert short.horizon == 150
    assert list(short.arrivals) == [t for t in full.arrivals if t < 150]
    assert short.description.endswith(f"(seed 3, duration 150s, {len(short.arrivals):,} tasks)")


def test_steady_without_noise_is_a_poisson_process_at_the_rate():
    workload = load_workload("steady:rate=10,noise=0,duration=1h")
    assert workload.horizon == 3600
    _within(len(workload.arrivals), 36000, math.sqrt(36000))
    # Poisson counts per second: variance equals the mean. The sample variance of n counts
    # has a standard deviation of about mean * sqrt(2 / n) when the mean is large.
    per_second = Counter(int(t) for t in workload.arrivals)
    counts = [per_second[s] for s in range(3600)]
    mean = sum(counts) / len(counts)
    variance = sum((c - mean) ** 2 for c in counts) / (len(counts) - 1)
    _within(variance / mean, 1.0, math.sqrt(2 / 3600) + 1 / math.sqrt(mean * 3600))


def _noisy_count_sd(rate: float, minutes: int, noise: float) -> float:
    """Standard deviation of the count of a noisy steady workload over `minutes`.

    Count = Poisson(L) with L = rate * 60 * sum(F_k); F_k = exp(X_k - s^2/2) with X a
    stationary AR(1) of variance s^2 = ln(1 + noise^2) and lag-1 correlation exp(-0.1),
    so Cov(F_i, F_j) = exp(s^2 * exp(-0.1 |i - j|)) - 1.
    """
    s2 = math.log1p(noise * noise)
    keep = math.exp(-0.1)
    covariance = sum(
        (minutes - abs(lag)) * (math.exp(s2 * keep ** abs(lag)) - 1)
        for lag in range(-minutes + 1, minutes)
    )
    mean = rate * 60 * minutes
    return math.sqrt(mean + (rate * 60) ** 2 * covariance)


def test_steady_noise_keeps_the_mean_rate_and_has_the_relative_sd_asked_for():
    workload = load_workload("steady:rate=10,noise=0.2,duration=1h", seed=1)
    _within(len(workload.arrivals), 36000, _noisy_count_sd(10, 60, 0.2))

    # Over three days at 1/s, per-minute counts have variance mean + (noise * mean)^2.
    long = load_workload("steady:rate=1/s,noise=0.2,duration=72h", seed=2)
    _within(len(long.arrivals), 259200, _noisy_count_sd(1, 4320, 0.2))
    per_minute = Counter(int(t // 60) for t in long.arrivals)
    counts = [per_minute[m] for m in range(4320)]
    mean = sum(counts) / len(counts)
    variance = sum((c - mean) ** 2 for c in counts) / (len(counts) - 1)
    measured = math.sqrt(max(variance - mean, 0)) / mean
    # Minutes are correlated over ~10 minutes: ~4320 / 19 independent samples, so the relative
    # standard error of the measured sd is about 1 / sqrt(2 * 227) ~ 5%.
    _within(measured, 0.2, 0.2 * 0.05)


def test_the_noise_factor_moves_the_rate_but_noise_zero_does_not():
    noisy = load_workload("steady:rate=10,noise=0.5,duration=30m", seed=4)
    per_minute = Counter(int(t // 60) for t in noisy.arrivals)
    # Poisson alone would keep each minute's count within 600 +- 5 * sqrt(600) ~ 600 +- 122.
    assert max(per_minute.values()) - min(per_minute.values()) > 300
    quiet = load_workload("steady:rate=10,noise=0,duration=30m", seed=4)
    per_minute = Counter(int(t // 60) for t in quiet.arrivals)
    assert max(per_minute.values()) - min(per_minute.values()) < 250


def test_diurnal_follows_the_cosine_around_its_peak_and_trough():
    base, peak, period = 1.0, 9.0, 86400.0
    spec = "diurnal:base=1/s,peak=540/min,peak_at=14h,noise=0,duration=15h"
    workload = load_workload(spec, seed=5)
    assert workload.horizon == 15 * 3600

    def expected(center: float) -> float:
        # Integral of the rate over [center - 30m, center + 30m).
        swing = period / math.pi * math.sin(math.pi * 3600 / period)
        sign = math.cos(2 * math.pi * (center - 14 * 3600) / period)
        return base * 3600 + (peak - base) / 2 * (3600 + sign * swing)

    for center in (14 * 3600, 2 * 3600):  # the peak, and the trough 12 hours before it
        count = _count(workload.arrivals, center - 1800, center + 1800)
        _within(count, expected(center), math.sqrt(expected(center)))
    assert rate_at(spec, 14 * 3600) == pytest.approx(peak)
    assert rate_at(spec, 2 * 3600) == pytest.approx(base)
    assert rate_at(spec, 8 * 3600) == pytest.approx((base + peak) / 2)


def test_diurnal_defaults_to_a_day_peaking_at_14h_with_a_little_noise():
    workload = load_workload("diurnal:base=0.1,peak=0.2", seed=1)
    assert workload.horizon == 86400
    assert rate_at("diurnal:base=0.1,peak=0.2", 14 * 3600) == pytest.approx(0.2)
    assert rate_at("diurnal:base=1,peak=3,period=1h,peak_at=15m", 15 * 60) == pytest.approx(3)
    assert rate_at("diurnal:base=1,peak=3,period=1h,peak_at=15m", 45 * 60) == pytest.approx(1)


def test_burst_windows_run_at_the_peak_rate_and_the_rest_at_base():
    spec = "burst:base=1,peak=20,every=10m,length=1m,duration=1h"
    workload = load_workload(spec, seed=6)
    windows = [(300 + k * 600, 360 + k * 600) for k in range(6)]  # offset defaults to every/2
    for begin, end in windows:
        _within(_count(workload.arrivals, begin, end), 1200, math.sqrt(1200))
    outside = len(workload.arrivals) - sum(_count(workload.arrivals, *w) for w in windows)
    _within(outside, 3240, math.sqrt(3240))


@pytest.mark.parametrize(
    ("spec", "t", "rate"),
    [
        ("burst:base=1,peak=20,every=10m,length=1m", 0, 1),
        ("burst:base=1,peak=20,every=10m,length=1m", 299.9, 1),
        ("burst:base=1,peak=20,every=10m,length=1m", 300, 20),
        ("burst:base=1,peak=20,every=10m,length=1m", 359.9, 20),
        ("burst:base=1,peak=20,every=10m,length=1m", 360, 1),
        ("burst:base=1,peak=20,every=10m,length=1m", 6300, 20),
        ("burst:base=1,peak=20,every=10m,length=1m,offset=0", 0, 20),
        ("burst:base=1,peak=20,every=10m,length=1m,offset=0", 60, 1),
        ("burst:base=1,peak=20,every=10m,length=1m,offset=25m", 1200, 1),
        ("burst:base=1,peak=20,every=10m,length=1m,offset=25m", 1500, 20),
        ("steady:rate=120/min", 42, 2),
    ],
)
def test_rate_at(spec, t, rate):
    assert rate_at(spec, t) == rate


def test_burst_windows_beyond_the_duration_and_a_window_cut_by_it():
    workload = load_workload("burst:base=0,peak=10,every=1h,length=20m,offset=50m", seed=1)
    assert workload.horizon == 3600
    assert workload.arrivals[0] >= 3000
    _within(len(workload.arrivals), 6000, math.sqrt(6000))


@pytest.mark.parametrize(
    ("start", "epoch"),
    [
        ("2026-03-01T12:00:00Z", 1772366400.0),
        ("2026-03-01T13:00:00+01:00", 1772366400.0),
        ("2026-03-01T12:00:00", 1772366400.0),
        ("2026-03-01T12:00:00.5Z", 1772366400.5),
        ("1772366400", 1772366400.0),
        ("1772366400.25", 1772366400.25),
    ],
)
def test_start_sets_the_wall_clock_time_of_t0(start, epoch):
    workload = load_workload(f"steady:rate=1,duration=10s,start={start}")
    assert workload.start == epoch


def test_an_idle_generator_gives_an_empty_workload():
    workload = load_workload("steady:rate=0,duration=1h")
    assert len(workload.arrivals) == len(workload.durations) == 0
    assert workload.horizon == 3600


ACCEPTED_STEADY = "accepted keys: rate, noise, duration, start"
ACCEPTED_BURST = "accepted keys: base, peak, every, length, offset, duration, start"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("steady:rate=x",
         "workload steady: rate: must be a rate like 2/min, 0.5/s or 100/h (got 'x')"),
        ("steady:rate=-2", "workload steady: rate: must be a rate >= 0 (got '-2')"),
        ("steady:rate=nan", "workload steady: rate: must be a rate >= 0 (got 'nan')"),
        ("steady:", f"workload steady: missing rate ({ACCEPTED_STEADY})"),
        ("steady", f"workload steady: missing rate ({ACCEPTED_STEADY})"),
        ("steady:rat=5", f"workload steady: unknown key 'rat' ({ACCEPTED_STEADY})"),
        ("steady:rate", f"workload steady: 'rate' is not key=value ({ACCEPTED_STEADY})"),
        ("steady:rate=1,rate=2", "workload steady: rate: given twice"),
        ("steady:rate=1,noise=-0.1", "workload steady: noise: must be a number >= 0 (got '-0.1')"),
        ("steady:rate=1,noise=lots", "workload steady: noise: must be a number >= 0 (got 'lots')"),
        ("steady:rate=1,duration=0", "workload steady: duration: must be > 0 (got '0')"),
        ("steady:rate=1,duration=1d",
         "workload steady: duration: must be a duration like 30s, 5m or 1h (got '1d')"),
        ("steady:rate=1,start=yesterday",
         "workload steady: start: not ISO 8601 or epoch seconds (got 'yesterday')"),
        ("diurnal:base=1",
         "workload diurnal: missing peak "
         "(accepted keys: base, peak, period, peak_at, noise, duration, start)"),
        ("diurnal:base=1,peak=2,period=0s", "workload diurnal: period: must be > 0 (got '0s')"),
        ("burst:base=1,peak=9", f"workload burst: missing every, length ({ACCEPTED_BURST})"),
        ("burst:base=1,peak=9,every=10m,length=10m",
         "workload burst: length: must be shorter than every (got length=10m, every=10m)"),
        ("burst:base=1,peak=9,every=10m,length=0", "workload burst: length: must be > 0 (got '0')"),
        ("stedy:rate=1",
         "workload 'stedy:rate=1': unknown generator 'stedy' "
         "(accepted: steady, diurnal, burst, or a path to a CSV file)"),
        ("no-such-file.csv",
         "workload 'no-such-file.csv': no such file, and not a generator like steady:rate=5/s "
         "(accepted: steady, diurnal, burst)"),
    ],
)
def test_generator_errors_are_one_line_naming_the_key(spec, message):
    with pytest.raises(WorkloadError) as raised:
        load_workload(spec)
    assert str(raised.value) == message


def test_a_bad_duration_override_is_an_error():
    with pytest.raises(WorkloadError, match=r"^workload duration: must be > 0 seconds \(got -1\)$"):
        load_workload("steady:rate=1", duration=-1)


# --- CSV ----------------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str, name: str = "tasks.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_reads_iso_and_epoch_timestamps_sorts_them_and_keeps_durations(tmp_path):
    path = _csv(
        tmp_path,
        "timestamp,queue,duration_seconds\n"
        "2026-03-01T12:00:10Z,default,1.5\n"
        "\n"
        "2026-03-01T13:00:05+01:00,default,\n"  # 12:00:05Z
        "1772366400,emails,0\n"  # 12:00:00Z
        "   \n"
        "2026-03-01T12:00:20.25,default,3\n"  # naive: UTC
        "1772366402.5,default\n",  # short row: no duration
    )
    workload = load_workload(path)
    assert workload.start == 1772366400.0
    assert list(workload.arrivals) == [0.0, 2.5, 5.0, 10.0, 20.25]
    durations = list(workload.durations)
    assert durations[0] == 0 and math.isnan(durations[1]) and math.isnan(durations[2])
    assert durations[3:] == [1.5, 3.0]
    assert workload.horizon == 22  # last arrival + 1s, rounded up
    assert workload.description == f"{path} (5 tasks, 3 with duration_seconds)"


def test_csv_without_a_duration_column_and_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufefftime,other\n100,x\n100.5,y\n103,z\n".encode())
    workload = load_workload(str(path))
    assert workload.start == 100.0
    assert list(workload.arrivals) == [0.0, 0.5, 3.0]
    assert all(math.isnan(d) for d in workload.durations)
    assert workload.horizon == 4
    assert workload.description == f"{path} (3 tasks)"


def test_csv_duration_override_drops_later_rows(tmp_path):
    path = _csv(tmp_path, "ts,duration_seconds\n0,1\n5,2\n9.99,3\n10,4\n30,5\n")
    workload = load_workload(path, duration=10)
    assert list(workload.arrivals) == [0.0, 5.0, 9.99]
    assert list(workload.durations) == [1.0, 2.0, 3.0]
    assert workload.horizon == 10
    assert workload.description == f"{path} (3 tasks, 3 with duration_seconds, first 10s)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "{path}: empty file (expected a header row, e.g. timestamp,duration_seconds, "
             "then one row per task)"),
        ("\n\n", "{path}: empty file (expected a header row, e.g. timestamp,duration_seconds, "
                 "then one row per task)"),
        ("timestamp,duration_seconds\n\n", "{path}: no tasks (only a header row)"),
        ("2026-03-01T12:00:00Z,1\n",
         "{path} line 1: expected a header row first, e.g. timestamp,duration_seconds "
         "(got '2026-03-01T12:00:00Z')"),
        ("timestamp\n2026-03-01T12:00:00Z\n\n2026-13-01\n",
         "{path} line 4: timestamp: not ISO 8601 or epoch seconds (got '2026-13-01')"),
        ("when,duration_seconds\n,1\n",
         "{path} line 2: when: not ISO 8601 or epoch seconds (got '')"),
        ("timestamp,duration_seconds\n1,1\n2,-1\n",
         "{path} line 3: duration_seconds: must be a number of seconds >= 0 (got '-1')"),
        ("timestamp,Duration_Seconds\n1,2s\n",
         "{path} line 2: Duration_Seconds: must be a number of seconds >= 0 (got '2s')"),
        ("timestamp\ninf\n", "{path} line 2: timestamp: not ISO 8601 or epoch seconds (got 'inf')"),
    ],
)
def test_csv_errors_name_the_file_line_column_and_value(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(WorkloadError) as raised:
        load_workload(path)
    assert str(raised.value) == message.format(path=path)


def test_a_binary_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(WorkloadError) as raised:
        load_workload(str(path))
    assert str(raised.value) == f"{path}: not a UTF-8 text file"


# --- distributions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "description", "mean", "sd"),
    [
        ("2", "fixed(2s)", 2.0, 0.0),
        ("1.5s", "fixed(1.5s)", 1.5, 0.0),
        ("fixed:500ms", "fixed(500ms)", 0.5, 0.0),
        ("exp:mean=2s", "exp(mean=2s)", 2.0, 2.0),
        ("uniform:min=1s,max=3s", "uniform(min=1s,max=3s)", 2.0, 2 / math.sqrt(12)),
        ("lognormal:mean=2s,sigma=0.5", "lognormal(mean=2s,sigma=0.5)", 2.0,
         2.0 * math.sqrt(math.exp(0.25) - 1)),
        ("lognormal:mean=2m,sigma=1", "lognormal(mean=2m,sigma=1)", 120.0,
         120.0 * math.sqrt(math.e - 1)),
        # 4 sd above 0, the truncation still lifts the mean by 2 ms.
        ("normal:mean=60s,sd=15s", "normal(mean=1m,sd=15s)", 60.0020075, 15.0),
        # Heavily truncated: resampled draws only, and `.mean` is the truncated mean.
        ("normal:mean=1,sd=2", "normal(mean=1s,sd=2s)", 1.0 + 2.0 * 0.3520653 / 0.6914625, 2.0),
    ],
)
def test_distribution_samples_match_its_mean_and_are_never_negative(text, description, mean, sd):
    distribution = parse_distribution(text, "--service-time")
    assert distribution.describe() == description
    assert distribution.mean == pytest.approx(mean, rel=1e-6)
    rng = random.Random(11)
    samples = [distribution.sample(rng) for _ in range(100_000)]
    assert min(samples) >= 0
    _within(sum(samples) / len(samples), distribution.mean, sd / math.sqrt(len(samples)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x", "--service-time: must be a duration like 2s or a distribution like exp:mean=2s "
              "(got 'x')"),
        ("-1", "--service-time: must be >= 0 (got '-1')"),
        ("gamma:k=2", "--service-time: unknown distribution 'gamma' "
                      "(accepted: fixed, exp, uniform, lognormal, normal, or a duration like 2s)"),
        ("exp:", "--service-time: exp: missing mean (accepted keys: mean)"),
        ("exp:mean=0", "--service-time: exp: mean: must be > 0 (got '0')"),
        ("exp:avg=2s", "--service-time: exp: unknown key 'avg' (accepted keys: mean)"),
        ("exp:mean=2x",
         "--service-time: exp: mean: must be a duration like 30s, 5m or 1h (got '2x')"),
        ("fixed:soon", "--service-time: fixed: must be a duration like 30s, 5m or 1h (got 'soon')"),
        ("uniform:min=3s,max=1s",
         "--service-time: uniform: max: must be >= min (got max=1s, min=3s)"),
        ("uniform:min=1s", "--service-time: uniform: missing max (accepted keys: min, max)"),
        ("lognormal:mean=2s,sigma=-1",
         "--service-time: lognormal: sigma: must be a number >= 0 (got '-1')"),
        ("normal:mean=60s", "--service-time: normal: missing sd (accepted keys: mean, sd)"),
    ],
)
def test_distribution_errors_name_the_option_and_key(text, message):
    with pytest.raises(WorkloadError) as raised:
        parse_distribution(text, "--service-time")
    assert str(raised.value) == message


def test_with_durations_fills_only_missing_durations_deterministically(tmp_path):
    path = _csv(tmp_path, "timestamp,duration_seconds\n0,7\n1,\n2,\n3,0.25\n4,\n")
    workload = load_workload(path)
    service = parse_distribution("exp:mean=2s", "--service-time")
    filled = with_durations(workload, service, seed=1)
    again = with_durations(workload, service, seed=1)
    other = with_durations(workload, service, seed=2)
    assert filled.durations.tobytes() == again.durations.tobytes()
    assert filled.durations.tobytes() != other.durations.tobytes()
    assert filled.durations[0] == 7 and filled.durations[3] == 0.25
    assert all(d >= 0 and not math.isnan(d) for d in filled.durations)
    assert filled.arrivals is workload.arrivals
    assert math.isnan(workload.durations[1])  # the original is left as it was


def test_with_durations_on_a_generated_workload_has_the_distribution_mean():
    workload = load_workload("steady:rate=10,noise=0,duration=1h", seed=1)
    filled = with_durations(workload, parse_distribution("uniform:min=1s,max=3s", "x"), seed=1)
    n = len(filled.durations)
    _within(sum(filled.durations) / n, 2.0, (2 / math.sqrt(12)) / math.sqrt(n))
    # Drawn from their own stream: durations are not a rescaling of the arrival gaps.
    gaps = [b - a for a, b in zip(workload.arrivals, workload.arrivals[1:], strict=False)]
    assert sorted(range(50), key=gaps.__getitem__) != sorted(
        range(50), key=filled.durations.__getitem__
    )
