"""Simulated samples into a Prometheus through its remote-write receiver.

The simulator's samples carry simulated timestamps (past or future), so they cannot be
scraped: they are pushed with Prometheus's remote-write protocol (a protobuf
WriteRequest, snappy-compressed, POSTed to /api/v1/write) instead. The protobuf encoding
of the four messages involved and the snappy block framing are written out here, so the
simulator needs neither a protobuf nor a snappy library.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate

import requests

# (labels including __name__, [(timestamp in ms, value), ...] in increasing time order);
# a value of None is a staleness marker: the series ends there, as when a scrape no
# longer has it.
Series = tuple[Mapping[str, str], Sequence[tuple[int, float | None]]]

# Prometheus reads a remote write whole into memory; the simulator keeps each POST
# below this many bytes of (uncompressed) protobuf by splitting a large write.
MAX_REQUEST_BYTES = 8 * 1024 * 1024

_MESSAGE_IN_ERROR = 200
_UINT64 = 1 << 64

# Any NaN is written as Prometheus's own NaN (value.NormalNaN, Go's math.NaN():
# 0x7ff8000000000001). Passing a NaN's bits on could write 0x7ff0000000000002,
# Prometheus's staleness marker, which would end the series instead of holding a NaN.
_NAN = struct.pack("<Q", 0x7FF8000000000001)
_STALE = struct.pack("<Q", 0x7FF0000000000002)

# Field tags: (field number << 3) | wire type, wire type 2 = length-delimited,
# 1 = 64-bit, 0 = varint.
_TIMESERIES = b"\x0a"  # WriteRequest.timeseries = 1
_LABEL = b"\x0a"  # TimeSeries.labels = 1
_SAMPLE = 0x12  # TimeSeries.samples = 2
_LABEL_NAME = b"\x0a"  # Label.name = 1
_LABEL_VALUE = b"\x12"  # Label.value = 2
_SAMPLE_VALUE = 0x09  # Sample.value = 1 (double)
_SAMPLE_TIMESTAMP = 0x10  # Sample.timestamp = 2 (int64)
# A sample's tag, length, value tag, double and timestamp tag; the timestamp's varint
# follows. A sample is at most 20 bytes, so its length fits one varint byte.
_SAMPLE_HEAD = struct.Struct("<BBBdB")
_SAMPLE_HEAD_NAN = struct.Struct("<BBB8sB")


class RemoteWriteError(RuntimeError):
    """A remote write Prometheus refused or that did not reach it (one line)."""


def varint(number: int) -> bytes:
    """Protobuf varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    if number < 0:
        number += _UINT64
    if number < 0x80:
        return bytes((number,))
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _labels(labels: Mapping[str, str]) -> bytes:
    """A series' labels, sorted by name as Prometheus requires (__name__ included)."""
    return b"".join(
        _length_delimited(
            _LABEL,
            _length_delimited(_LABEL_NAME, name.encode())
            + _length_delimited(_LABEL_VALUE, str(value).encode()),
        )
        for name, value in sorted(labels.items())
    )


def _samples(samples: Iterable[tuple[int, float | None]], stamps: dict[int, bytes]) -> list[bytes]:
    """Each sample as a TimeSeries.samples field. `stamps` caches timestamps' varints:
    the simulator writes many series at the same timestamps."""
    pack = _SAMPLE_HEAD.pack
    pack_nan = _SAMPLE_HEAD_NAN.pack
    out = []
    append = out.append
    for timestamp, value in samples:
        stamp = stamps.get(timestamp)
        if stamp is None:
            stamp = stamps[timestamp] = varint(int(timestamp))
        if value is None:
            head = pack_nan(_SAMPLE, 10 + len(stamp), _SAMPLE_VALUE, _STALE, _SAMPLE_TIMESTAMP)
        elif value == value:
            head = pack(_SAMPLE, 10 + len(stamp), _SAMPLE_VALUE, value, _SAMPLE_TIMESTAMP)
        else:
            head = pack_nan(_SAMPLE, 10 + len(stamp), _SAMPLE_VALUE, _NAN, _SAMPLE_TIMESTAMP)
        append(head + stamp)
    return out


def _timeseries(labels: bytes, samples: list[bytes]) -> bytes:
    body_length = len(labels) + sum(map(len, samples))
    return b"".join([_TIMESERIES, varint(body_length), labels, *samples])


def encode_write_request(series: Iterable[Series]) -> bytes:
    """The protobuf WriteRequest for `series`, uncompressed."""
    stamps: dict[int, bytes] = {}
    return b"".join(
        _timeseries(_labels(labels), _samples(samples, stamps)) for labels, samples in series
    )


def _write_requests(series: Iterable[Series], limit: int) -> Iterator[bytes]:
    """`series` as one WriteRequest, or, when that would exceed `limit` bytes, as several
    that each hold every series' samples in one time window, windows in time order.

    Split by time, not by series: Prometheus takes a sample only if it is at most about
    an hour older than the newest sample of any series (its head block's range), so
    sending one series' hours after another's and then the next series from its start
    would be refused as "out of bounds". (Samples sharing one timestamp are never
    split, so they go together even if they alone exceed the limit.)
    """
    stamps: dict[int, bytes] = {}
    prepared = []
    for labels, samples in series:
        times = [timestamp for timestamp, _ in samples]
        prepared.append((_labels(labels), times, _samples(samples, stamps)))
    bodies = [len(labels) + sum(map(len, encoded)) for labels, _, encoded in prepared]
    if sum(1 + len(varint(body)) + body for body in bodies) <= limit:
        if prepared:
            yield b"".join(_timeseries(labels, encoded) for labels, _, encoded in prepared)
        return
    # A series costs its labels and its TimeSeries' tag and length (at most 11 bytes)
    # in each request it appears in, and its samples' bytes (cumulated here).
    overheads = [len(labels) + 11 for labels, _, _ in prepared]
    cumulated = [[0, *accumulate(map(len, encoded))] for _, _, encoded in prepared]
    times_of = [times for _, times, _ in prepared]
    instants = sorted(set().union(*times_of))
    positions = [0] * len(prepared)

    def stops(end: int) -> list[int]:
        """Where each series' samples before instants[end] end (all of them at the end)."""
        if end == len(instants):
            return [len(times) for times in times_of]
        return [bisect_left(times, instants[end]) for times in times_of]

    def size(end: int) -> int:
        return sum(
            cumulated[index][stop] - cumulated[index][positions[index]] + overheads[index]
            for index, stop in enumerate(stops(end))
            if stop > positions[index]
        )

    start = 0
    first = True
    while start < len(instants):
        # The longest window from instants[start] that fits (at least one instant).
        low, high = start + 1, len(instants)
        while low < high:
            middle = (low + high + 1) // 2
            if size(middle) <= limit:
                low = middle
            else:
                high = middle - 1
        parts = []
        for index, stop in enumerate(stops(low)):
            # A series without samples goes once, in the first request.
            if stop > positions[index] or (first and not times_of[index]):
                labels, _, encoded = prepared[index]
                parts.append(_timeseries(labels, encoded[positions[index] : stop]))
            positions[index] = stop
        yield b"".join(parts)
        start, first = low, False


def snappy_literal(data: bytes) -> bytes:
    """`data` as a valid snappy block that compresses nothing: only literal chunks.

    Snappy's block format is the uncompressed length (a varint) followed by elements,
    each a literal (bytes copied as they are) or a back-reference; a decoder takes a
    block made of literals alone. Remote write requires snappy, not compression, and
    these requests only travel over loopback to a Prometheus of our own, where the
    size does not matter: this framing needs no compression library, costs one copy,
    and adds 3 bytes per 64 KiB (and the length up front) to the data.
    """
    out = [varint(len(data))]
    view = memoryview(data)
    for start in range(0, len(data), 65536):
        chunk = view[start : start + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(bytes((n << 2,)))
        elif n < 0x100:
            out.append(bytes((60 << 2, n)))
        else:
            out.append(struct.pack("<BH", 61 << 2, n))
        out.append(chunk.tobytes())
    return b"".join(out)


class RemoteWriter:
    """POSTs series to the remote-write receiver of the Prometheus at `url` (its base
    URL: the one started with --web.enable-remote-write-receiver)."""

    def __init__(
        self,
        url: str,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/write"
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes
        self._own_session = session is None
        self.session = requests.Session() if session is None else session

    def write(self, series: Iterable[Series]) -> None:
        """Write every sample of `series`: one POST, or, when that would exceed
        max_request_bytes, several, each a time window of all the series, in time order.

        Prometheus refuses (RemoteWriteError) a sample not later than the last one its
        series holds ("out of order sample", "duplicate sample for timestamp"), and one
        more than about an hour older than the newest sample of any series ("out of
        bounds"): write in time order, in slices of time across all series.
        """
        for request in _write_requests(series, self.max_request_bytes):
            self._post(request)

    def _post(self, request: bytes) -> None:
        try:
            response = self.session.post(
                self.url,
                data=snappy_literal(request),
                headers={
                    "Content-Encoding": "snappy",
                    "Content-Type": "application/x-protobuf",
                    "X-Prometheus-Remote-Write-Version": "0.1.0",
                },
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            raise RemoteWriteError(
                f"remote write to {self.url} failed: {_one_line(str(error))}"
            ) from None
        if not 200 <= response.status_code < 300:
            raise RemoteWriteError(
                f"remote write to {self.url} failed with HTTP {response.status_code}: "
                f"{_one_line(response.text)}"
            )

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> RemoteWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > _MESSAGE_IN_ERROR:
        line = line[:_MESSAGE_IN_ERROR] + "…"
    return line or "(no message)"


__all__ = [
    "MAX_REQUEST_BYTES",
    "RemoteWriteError",
    "RemoteWriter",
    "Series",
    "encode_write_request",
    "snappy_literal",
    "varint",
]
