"""Task workloads for `taskqueue-scaler simulate`: when tasks arrive and how long they run.

A workload comes from a CSV file of real tasks or from a generator spec:

    steady:rate=10/s[,noise=0.2][,duration=1h]
    diurnal:base=1/s,peak=10/s[,period=24h][,peak_at=14h][,noise=0.1][,duration=<period>]
    burst:base=2/s,peak=40/s,every=30m,length=2m[,offset=<every/2>][,duration=1h]

Every generator also takes `start=` (ISO 8601 or epoch seconds), the wall-clock time of t=0.
Generated arrivals are a non-homogeneous Poisson process whose rate is piecewise constant
(see `_poisson_arrivals`); everything is a pure function of the spec and the seed.

A workload is two parallel arrays rather than a list of task objects: a day at 10 tasks/s is
~860,000 tasks, which as arrays of doubles is ~14 MB and is generated in well under a second.
"""

from __future__ import annotations

import csv
import math
import os
import random
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Protocol

from exporter.event_tracker import parse_eta
from scaler.config import parse_duration, parse_rate

DEFAULT_START = 1767225600.0  # 2026-01-01T00:00:00Z

# The noise factor is redrawn once a minute and forgets itself over ~10 minutes: slow enough to
# look like real traffic drifting, fast enough that an hour sees several independent swings.
_NOISE_STEP = 60.0
_NOISE_CORRELATION = 600.0

_GENERATORS = ("steady", "diurnal", "burst")

Piece = tuple[float, float, float]  # [start, end) in seconds from t=0, rate in tasks/s


class WorkloadError(ValueError):
    """A workload or distribution that cannot be used; the message is one line naming it."""


# --- distributions ------------------------------------------------------------------------


class Distribution(Protocol):
    """A distribution of non-negative durations in seconds."""

    @property
    def mean(self) -> float: ...

    def sample(self, rng: random.Random) -> float:
        """One value, always >= 0."""
        ...

    def describe(self) -> str:
        """A short one-line form, e.g. `exp(mean=2s)`."""
        ...


@dataclass(frozen=True)
class Fixed:
    seconds: float

    @property
    def mean(self) -> float:
        return self.seconds

    def sample(self, rng: random.Random) -> float:
        return self.seconds

    def describe(self) -> str:
        return f"fixed({_format_seconds(self.seconds)})"


@dataclass(frozen=True)
class Exponential:
    mean: float

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean)

    def describe(self) -> str:
        return f"exp(mean={_format_seconds(self.mean)})"


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def describe(self) -> str:
        return f"uniform(min={_format_seconds(self.low)},max={_format_seconds(self.high)})"


@dataclass(frozen=True)
class LogNormal:
    """Parameterised by its own mean, which is what people know about their tasks, and by the
    sigma of the underlying normal (the spread: 0.5 is moderate, 1 is heavy-tailed)."""

    mean: float
    sigma: float

    @property
    def mu(self) -> float:
        # E[exp(N(mu, sigma^2))] = exp(mu + sigma^2 / 2), solved for mu.
        return math.log(self.mean) - self.sigma * self.sigma / 2

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)

    def describe(self) -> str:
        return f"lognormal(mean={_format_seconds(self.mean)},sigma={self.sigma:g})"


@dataclass(frozen=True)
class TruncatedNormal:
    """Normal(mu, sd) truncated at 0 by resampling negative draws, so the shape above 0 is kept
    (clamping would pile the cut-off mass onto exactly 0 s). `mean` is the mean of the truncated
    distribution: it equals `mu` unless sd is a sizeable fraction of mu. mu >= 0 keeps at least
    half of the draws, so resampling always ends quickly."""

    mu: float
    sd: float

    @property
    def mean(self) -> float:
        if self.sd == 0:
            return self.mu
        alpha = -self.mu / self.sd
        density = math.exp(-alpha * alpha / 2) / math.sqrt(2 * math.pi)
        kept = math.erfc(alpha / math.sqrt(2)) / 2
        return self.mu + self.sd * density / kept

    def sample(self, rng: random.Random) -> float:
        while True:
            value = rng.normalvariate(self.mu, self.sd)
            if value >= 0:
                return value

    def describe(self) -> str:
        return f"normal(mean={_format_seconds(self.mu)},sd={_format_seconds(self.sd)})"


def parse_distribution(text: str, what: str) -> Distribution:
    """`2`, `2s`, `fixed:2s`, `exp:mean=2s`, `uniform:min=1s,max=3s`,
    `lognormal:mean=2s,sigma=0.5` or `normal:mean=60s,sd=15s` (truncated at 0 by resampling).

    `what` names the option in error messages, e.g. `--service-time`.
    """
    source = text.strip()
    name, colon, rest = source.partition(":")
    if not colon:
        seconds = _plain_number(source)
        if seconds is None:
            try:
                seconds = parse_duration(source)
            except ValueError:
                raise WorkloadError(
                    f"{what}: must be a duration like 2s or a distribution like exp:mean=2s "
                    f"(got {_show(text)})"
                ) from None
        return Fixed(_checked(seconds, what, "", source, minimum=0.0))
    where = f"{what}: {name}"
    if name == "fixed":
        return Fixed(_duration(rest, where, "", minimum=0.0))
    if name == "exp":
        params = _params(rest, where, ("mean",), ("mean",))
        return Exponential(_duration(params["mean"], where, "mean", positive=True))
    if name == "uniform":
        params = _params(rest, where, ("min", "max"), ("min", "max"))
        low = _duration(params["min"], where, "min", minimum=0.0)
        high = _duration(params["max"], where, "max", minimum=0.0)
        if high < low:
            raise WorkloadError(
                f"{where}: max: must be >= min (got max={params['max']}, min={params['min']})"
            )
        return Uniform(low, high)
    if name == "lognormal":
        params = _params(rest, where, ("mean", "sigma"), ("mean", "sigma"))
        return LogNormal(
            _duration(params["mean"], where, "mean", positive=True),
            _number(params["sigma"], where, "sigma"),
        )
    if name == "normal":
        params = _params(rest, where, ("mean", "sd"), ("mean", "sd"))
        return TruncatedNormal(
            _duration(params["mean"], where, "mean", minimum=0.0),
            _duration(params["sd"], where, "sd", minimum=0.0),
        )
    raise WorkloadError(
        f"{what}: unknown distribution {_show(name)} "
        f"(accepted: fixed, exp, uniform, lognormal, normal, or a duration like 2s)"
    )


# --- workloads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Tasks as parallel arrays; task i arrives at `arrivals[i]` and runs `durations[i]`."""

    arrivals: array[float]  # 'd', seconds from t=0, sorted ascending, all in [0, horizon)
    durations: array[float]  # 'd', same length; NaN where the workload gave no duration
    start: float  # epoch seconds of t=0
    horizon: float  # seconds simulated
    description: str  # one line


def load_workload(spec: str, *, seed: int = 1, duration: float | None = None) -> Workload:
    """The workload of `spec`: a path to an existing CSV file, or a generator spec.

    `duration` (seconds) overrides the generator's duration or the CSV's horizon; CSV rows at or
    after it are dropped. A generator's output depends only on its spec, the seed and the
    duration, and the first hour of a longer run is the same as the one-hour run.

    Generators (rates: `5`, `5/s`, `300/min`, `100/h`; durations: `90`, `90s`, `500ms`, `2m`):

    `steady:rate=R[,noise=0.2][,duration=1h]`
        Poisson arrivals at rate R times the noise factor below.
    `diurnal:base=B,peak=P[,period=24h][,peak_at=14h][,noise=0.1][,duration=<period>]`
        rate(t) = B + (P - B) * (1 + cos(2 pi (t - peak_at) / period)) / 2, times the noise
        factor, with t in seconds from the start (which by default is midnight UTC, so peak_at
        reads as a time of day). The rate is held constant within each second, at its value
        at the middle of that second.
    `burst:base=B,peak=P,every=E,length=L[,offset=E/2][,duration=1h]`
        Rate P during [offset + k E, offset + k E + L) for k = 0, 1, ...; rate B otherwise.
        L < E. No noise: the windows are exact.
    Each also takes `start=` (ISO 8601, naive meaning UTC, or epoch seconds): the wall-clock
    time of t=0, 2026-01-01T00:00:00Z by default.

    Noise: the rate is multiplied by a factor F that is constant for each minute of the run
    (minute k covers [60k, 60k + 60)): F_k = exp(X_k - s^2 / 2), where X is a stationary AR(1)
    process (a mean-reverting random walk of the log-rate) with X_0 ~ N(0, s^2),
    X_{k+1} = a X_k + sqrt(1 - a^2) s Z_k, Z_k ~ N(0, 1) independent, a = exp(-60s / 600s),
    and s^2 = ln(1 + noise^2). So every F_k is lognormal with mean exactly 1 and standard
    deviation exactly `noise` (the rate's relative standard deviation, 0.2 = ±20%), and the
    log-rate's correlation between minutes j and k is a^|j - k| (it forgets over ~10 min).
    noise=0 gives F = 1: a plain (non-homogeneous) Poisson process.
    """
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise WorkloadError(f"workload duration: must be > 0 seconds (got {duration!r})")
    if os.path.isfile(spec):
        return _load_csv(spec, duration)
    generator = _parse_generator(spec)
    horizon = generator.duration if duration is None else duration
    arrivals = _generate(generator, horizon, seed)
    details = [f"seed {seed}"]
    if duration is not None:
        details.append(f"duration {_format_seconds(duration)}")
    details.append(f"{len(arrivals):,} tasks")
    return Workload(
        arrivals=arrivals,
        durations=array("d", [math.nan]) * len(arrivals),
        start=generator.start,
        horizon=horizon,
        description=f"{spec.strip()} ({', '.join(details)})",
    )


def with_durations(workload: Workload, service_time: Distribution, seed: int) -> Workload:
    """`workload` with every missing (NaN) duration drawn from `service_time`.

    Durations the workload already has (from a CSV) are kept. Draws are made in arrival order,
    one per missing duration, so the result depends only on the workload, the distribution and
    the seed.
    """
    rng = _rng(seed, "durations")
    sample = service_time.sample
    isnan = math.isnan
    durations = array("d", workload.durations)
    for index, value in enumerate(durations):
        if isnan(value):
            durations[index] = sample(rng)
    return replace(workload, durations=durations)


def rate_at(spec: str, t: float) -> float:
    """The generator's rate in tasks/s at t seconds from its start, without noise."""
    return _parse_generator(spec).rate_at(t)


# --- generators ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Steady:
    rate: float
    noise: float
    duration: float
    start: float

    def rate_at(self, t: float) -> float:
        return self.rate

    def pieces(self, horizon: float) -> Iterator[Piece]:
        yield (0.0, horizon, self.rate)


@dataclass(frozen=True)
class _Diurnal:
    base: float
    peak: float
    period: float
    peak_at: float
    noise: float
    duration: float
    start: float

    def rate_at(self, t: float) -> float:
        phase = 2 * math.pi * (t - self.peak_at) / self.period
        return self.base + (self.peak - self.base) * (1 + math.cos(phase)) / 2

    def pieces(self, horizon: float) -> Iterator[Piece]:
        # One piece a second: the midpoint rate integrates the cosine to within a part in
        # ~10^8 for any period of a minute or more, and a day is only 86,400 pieces.
        for second in range(math.ceil(horizon)):
            end = min(second + 1.0, horizon)
            yield (float(second), end, self.rate_at((second + end) / 2))


@dataclass(frozen=True)
class _Burst:
    base: float
    peak: float
    every: float
    length: float
    offset: float
    duration: float
    start: float
    noise: float = 0.0

    def _window(self, k: int) -> float:
        # Multiplied, not accumulated, so the thousandth window starts exactly on time.
        return self.offset + k * self.every

    def rate_at(self, t: float) -> float:
        if t < self.offset:
            return self.base
        opened = self._window(math.floor((t - self.offset) / self.every))
        return self.peak if opened <= t < opened + self.length else self.base

    def pieces(self, horizon: float) -> Iterator[Piece]:
        now = 0.0
        k = 0
        while now < horizon:
            opens = min(self._window(k), horizon)
            closes = min(self._window(k) + self.length, horizon)
            if opens > now:
                yield (now, opens, self.base)
            if closes > opens:
                yield (opens, closes, self.peak)
            now = max(now, closes)
            k += 1


_Generator = _Steady | _Diurnal | _Burst


def _parse_generator(spec: str) -> _Generator:
    text = spec.strip()
    name, colon, rest = text.partition(":")
    if name not in _GENERATORS:
        if not colon:
            raise WorkloadError(
                f"workload {_show(spec)}: no such file, and not a generator like "
                f"steady:rate=5/s (accepted: steady, diurnal, burst)"
            )
        raise WorkloadError(
            f"workload {_show(spec)}: unknown generator {_show(name)} "
            f"(accepted: steady, diurnal, burst, or a path to a CSV file)"
        )
    where = f"workload {name}"
    if name == "steady":
        params = _params(rest, where, ("rate", "noise", "duration", "start"), ("rate",))
        return _Steady(
            rate=_rate(params["rate"], where, "rate"),
            noise=_number(params.get("noise", "0.2"), where, "noise"),
            duration=_duration(params.get("duration", "1h"), where, "duration", positive=True),
            start=_start(params, where),
        )
    if name == "diurnal":
        accepted = ("base", "peak", "period", "peak_at", "noise", "duration", "start")
        params = _params(rest, where, accepted, ("base", "peak"))
        period = _duration(params.get("period", "24h"), where, "period", positive=True)
        return _Diurnal(
            base=_rate(params["base"], where, "base"),
            peak=_rate(params["peak"], where, "peak"),
            period=period,
            peak_at=_duration(params.get("peak_at", "14h"), where, "peak_at", minimum=0.0),
            noise=_number(params.get("noise", "0.1"), where, "noise"),
            duration=(
                _duration(params["duration"], where, "duration", positive=True)
                if "duration" in params
                else period
            ),
            start=_start(params, where),
        )
    accepted = ("base", "peak", "every", "length", "offset", "duration", "start")
    params = _params(rest, where, accepted, ("base", "peak", "every", "length"))
    every = _duration(params["every"], where, "every", positive=True)
    length = _duration(params["length"], where, "length", positive=True)
    if length >= every:
        raise WorkloadError(
            f"{where}: length: must be shorter than every "
            f"(got length={params['length']}, every={params['every']})"
        )
    return _Burst(
        base=_rate(params["base"], where, "base"),
        peak=_rate(params["peak"], where, "peak"),
        every=every,
        length=length,
        offset=(
            _duration(params["offset"], where, "offset", minimum=0.0)
            if "offset" in params
            else every / 2
        ),
        duration=_duration(params.get("duration", "1h"), where, "duration", positive=True),
        start=_start(params, where),
    )


def _generate(generator: _Generator, horizon: float, seed: int) -> array[float]:
    pieces: Iterable[Piece] = generator.pieces(horizon)
    if generator.noise > 0:
        pieces = _with_noise(pieces, _noise_factors(generator.noise, _rng(seed, "noise")))
    return _poisson_arrivals(pieces, horizon, _rng(seed, "arrivals"))


def _rng(seed: int, stream: str) -> random.Random:
    # A separate stream per purpose: with one Random(seed) for both, exponential service times
    # would replay the arrival gaps, correlating each task's duration with its arrival.
    return random.Random(f"{stream}:{seed}")


def _noise_factors(noise: float, rng: random.Random) -> Iterator[float]:
    """F_0, F_1, ...: the per-minute rate factors described in `load_workload`."""
    sigma = math.sqrt(math.log1p(noise * noise))
    keep = math.exp(-_NOISE_STEP / _NOISE_CORRELATION)
    innovation = sigma * math.sqrt(1 - keep * keep)
    shift = sigma * sigma / 2
    # Started from the stationary distribution, so the first minutes are as noisy as the rest.
    level = rng.normalvariate(0.0, sigma)
    while True:
        yield math.exp(level - shift)
        level = keep * level + rng.normalvariate(0.0, innovation)


def _with_noise(pieces: Iterable[Piece], factors: Iterator[float]) -> Iterator[Piece]:
    """`pieces` cut at minute boundaries, each rate multiplied by its minute's factor."""
    minute = 0
    factor = next(factors)
    for begin, end, rate in pieces:
        while begin < end:
            index = int(begin // _NOISE_STEP)
            while minute < index:
                factor = next(factors)
                minute += 1
            stop = min(end, (index + 1) * _NOISE_STEP)
            yield (begin, stop, rate * factor)
            begin = stop


def _poisson_arrivals(pieces: Iterable[Piece], horizon: float, rng: random.Random) -> array[float]:
    """Arrivals of a Poisson process whose rate is constant on each piece.

    By time change: a unit-rate Poisson process has Exp(1) gaps, and mapping its points through
    the inverse of the cumulative rate gives the process with that rate. That is exact for any
    piecewise-constant rate, needs one draw per arrival, and yields arrivals already sorted.
    """
    arrivals: array[float] = array("d")
    append = arrivals.append
    draw = rng.expovariate
    owed = draw(1.0)  # cumulative rate still to cover before the next arrival
    for begin, end, rate in pieces:
        if rate <= 0:
            continue
        mass = (end - begin) * rate
        used = 0.0
        while used + owed < mass:
            used += owed
            append(begin + used / rate)
            owed = draw(1.0)
        owed -= mass - used
    # Rounding in begin + used / rate can land exactly on the horizon.
    while arrivals and arrivals[-1] >= horizon:
        arrivals.pop()
    return arrivals


# --- CSV ----------------------------------------------------------------------------------


def _load_csv(path: str, duration: float | None) -> Workload:
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark before the header.
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            try:
                stamps, durations, duration_column = _read_rows(path, reader)
            except csv.Error as error:
                raise WorkloadError(f"{path} line {reader.line_num}: {error}") from None
    except UnicodeDecodeError:
        raise WorkloadError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise WorkloadError(f"{path}: cannot read: {error.strerror or error}") from None

    if not all(a <= b for a, b in pairwise(stamps)):
        # Stable, so rows with equal timestamps keep their file order.
        order = sorted(range(len(stamps)), key=stamps.__getitem__)
        stamps = array("d", (stamps[i] for i in order))
        durations = array("d", (durations[i] for i in order))
    start = stamps[0]
    arrivals = array("d", (stamp - start for stamp in stamps))
    if duration is None:
        horizon = float(math.ceil(arrivals[-1] + 1.0))
    else:
        horizon = duration
        kept = bisect_left(arrivals, duration)
        arrivals, durations = arrivals[:kept], durations[:kept]

    details = [f"{len(arrivals):,} tasks"]
    if duration_column is not None:
        given = sum(1 for value in durations if not math.isnan(value))
        details.append(f"{given:,} with {duration_column}")
    if duration is not None:
        details.append(f"first {_format_seconds(duration)}")
    return Workload(
        arrivals=arrivals,
        durations=durations,
        start=start,
        horizon=horizon,
        description=f"{path} ({', '.join(details)})",
    )


class _Rows(Protocol):
    """What `_read_rows` needs of a csv.reader."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


def _read_rows(path: str, reader: _Rows) -> tuple[array[float], array[float], str | None]:
    """Epoch timestamps and durations (NaN if none) in file order, and the duration column."""
    header = next((row for row in reader if not _blank(row)), None)
    if header is None:
        raise WorkloadError(
            f"{path}: empty file (expected a header row, e.g. timestamp,duration_seconds, "
            f"then one row per task)"
        )
    line = reader.line_num
    if _parse_timestamp(header[0]) is not None:
        raise WorkloadError(
            f"{path} line {line}: expected a header row first, e.g. timestamp,duration_seconds "
            f"(got {_show(header[0])})"
        )
    time_column = header[0].strip() or "column 1"
    duration_index = next(
        (
            index
            for index, name in enumerate(header)
            if index > 0 and name.strip().lower() == "duration_seconds"
        ),
        None,
    )
    duration_column = None if duration_index is None else header[duration_index].strip()

    stamps: array[float] = array("d")
    durations: array[float] = array("d")
    for row in reader:
        if _blank(row):
            continue
        line = reader.line_num
        stamp = _parse_timestamp(row[0])
        if stamp is None:
            raise WorkloadError(
                f"{path} line {line}: {time_column}: not ISO 8601 or epoch seconds "
                f"(got {_show(row[0])})"
            )
        seconds = math.nan
        if duration_index is not None and duration_index < len(row):
            cell = row[duration_index]
            if cell.strip():
                value = _plain_number(cell)
                if value is None or not math.isfinite(value) or value < 0:
                    raise WorkloadError(
                        f"{path} line {line}: {duration_column}: must be a number of seconds "
                        f">= 0 (got {_show(cell)})"
                    )
                seconds = value
        stamps.append(stamp)
        durations.append(seconds)
    if not stamps:
        raise WorkloadError(f"{path}: no tasks (only a header row)")
    return stamps, durations, duration_column


def _blank(row: list[str]) -> bool:
    return not any(cell.strip() for cell in row)


# --- values -------------------------------------------------------------------------------


def _parse_timestamp(text: str) -> float | None:
    """Epoch seconds from epoch seconds or ISO 8601 (naive = UTC); None if neither."""
    text = text.strip()
    number = _plain_number(text)
    if number is not None:
        return number if math.isfinite(number) else None
    return parse_eta(text)  # the exporter's ISO 8601 reading: a naive time is UTC


def _params(
    text: str, where: str, accepted: tuple[str, ...], required: tuple[str, ...]
) -> dict[str, str]:
    keys = f"accepted keys: {', '.join(accepted)}"
    params: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue  # tolerate `rate=5,` and the empty parameter list of `steady:`
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise WorkloadError(f"{where}: {_show(item.strip())} is not key=value ({keys})")
        if key not in accepted:
            raise WorkloadError(f"{where}: unknown key {_show(key)} ({keys})")
        if key in params:
            raise WorkloadError(f"{where}: {key}: given twice")
        params[key] = value.strip()
    missing = [key for key in required if key not in params]
    if missing:
        raise WorkloadError(f"{where}: missing {', '.join(missing)} ({keys})")
    return params


def _plain_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _rate(text: str, where: str, key: str) -> float:
    value = _plain_number(text)
    if value is None:
        try:
            value = parse_rate(text)
        except ValueError as error:
            raise WorkloadError(f"{where}: {key}: {error}") from None
    if not (math.isfinite(value) and value >= 0):
        raise WorkloadError(f"{where}: {key}: must be a rate >= 0 (got {_show(text)})")
    return value


def _duration(
    text: str, where: str, key: str, *, minimum: float = 0.0, positive: bool = False
) -> float:
    value = _plain_number(text)
    if value is None:
        try:
            value = parse_duration(text)
        except ValueError as error:
            raise WorkloadError(f"{_prefix(where, key)}{error}") from None
    return _checked(value, where, key, text, minimum=minimum, positive=positive)


def _checked(
    value: float, where: str, key: str, text: str, *, minimum: float, positive: bool = False
) -> float:
    if not math.isfinite(value):
        raise WorkloadError(f"{_prefix(where, key)}must be finite (got {_show(text)})")
    if positive and value <= 0:
        raise WorkloadError(f"{_prefix(where, key)}must be > 0 (got {_show(text)})")
    if value < minimum:
        raise WorkloadError(f"{_prefix(where, key)}must be >= {minimum:g} (got {_show(text)})")
    return value


def _number(text: str, where: str, key: str) -> float:
    value = _plain_number(text)
    if value is None or not math.isfinite(value) or value < 0:
        raise WorkloadError(f"{where}: {key}: must be a number >= 0 (got {_show(text)})")
    return value


def _start(params: dict[str, str], where: str) -> float:
    if "start" not in params:
        return DEFAULT_START
    value = _parse_timestamp(params["start"])
    if value is None:
        raise WorkloadError(
            f"{where}: start: not ISO 8601 or epoch seconds (got {_show(params['start'])})"
        )
    return value


def _prefix(where: str, key: str) -> str:
    return f"{where}: {key}: " if key else f"{where}: "


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _format_seconds(seconds: float) -> str:
    """`2s`, `1.5s`, `500ms`, `2m`, `24h`: the shortest form that parse_duration reads back."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if 0 < seconds < 1 and abs(seconds * 1000 - round(seconds * 1000)) < 1e-9:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"
