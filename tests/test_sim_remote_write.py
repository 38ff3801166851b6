"""Remote write for the simulator: the protobuf and snappy encodings as tables (checked
with small decoders written here), then real writes into a real Prometheus, read back
through its HTTP API at simulated times."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import requests

from scaler.simulation.prometheus_process import LocalPrometheus, free_port
from scaler.simulation.remote_write import (
    MAX_REQUEST_BYTES,
    RemoteWriteError,
    RemoteWriter,
    Series,
    encode_write_request,
    snappy_literal,
    varint,
)
from tests.services import require

# 2026-01-01T00:00:00Z, in ms.
T0 = 1_767_225_600_000
STALE_NAN = 0x7FF0000000000002
PROMETHEUS_NAN = 0x7FF8000000000001


# --- Decoders, to check the encoders by round trip -------------------------------------


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    number = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        number |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return number, pos


def fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: bytes for wire type 2,
    the raw 64 bits for wire type 1, the (unsigned) number for wire type 0."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
        elif wire == 1:
            (value,) = struct.unpack_from("<Q", data, pos)
            pos += 8
        elif wire == 2:
            length, pos = read_varint(data, pos)
            value = data[pos : pos + length]
            assert len(value) == length, "truncated field"
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        yield number, wire, value
    assert pos == len(data), "message overruns its end"


def int64(unsigned: int) -> int:
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def decode_write_request(data: bytes) -> list[tuple[list[tuple[str, str]], list[tuple[int, int]]]]:
    """[(labels in written order, [(timestamp, value's 64 bits), ...]), ...]"""
    result = []
    for number, wire, series in fields(data):
        assert (number, wire) == (1, 2)
        labels, samples = [], []
        for field, kind, value in fields(series):
            assert kind == 2
            inner = {n: v for n, _, v in fields(value)}
            if field == 1:
                labels.append((inner[1].decode(), inner[2].decode()))
            else:
                assert field == 2
                samples.append((int64(inner.get(2, 0)), inner.get(1, 0)))
        result.append((labels, samples))
    return result


def bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def snappy_decode(block: bytes) -> bytes:
    """A snappy block decoder for literals (copies are not expected here)."""
    length, pos = read_varint(block, 0)
    out = bytearray()
    while pos < len(block):
        tag = block[pos]
        pos += 1
        assert tag & 3 == 0, f"not a literal: tag {tag:#x}"
        size = tag >> 2
        if size >= 60:
            extra = size - 59
            size = int.from_bytes(block[pos : pos + extra], "little")
            pos += extra
        size += 1
        assert pos + size <= len(block), "literal overruns the block"
        out += block[pos : pos + size]
        pos += size
    assert len(out) == length, f"decoded {len(out)} bytes, header says {length}"
    return bytes(out)


# --- Encoding tables --------------------------------------------------------------------


def test_a_tiny_request_is_exactly_these_bytes():
    encoded = encode_write_request([({"__name__": "m"}, [(1, 1.0)])])
    label = (
        b"\x0a\x08__name__"  # Label.name (field 1, wire type 2), 8 bytes
        b"\x12\x01m"  # Label.value (field 2, wire type 2), 1 byte
    )  # 13 bytes
    sample = (
        b"\x09" + bytes.fromhex("000000000000f03f")  # Sample.value (1, 64-bit): 1.0 LE
        + b"\x10\x01"  # Sample.timestamp (2, varint): 1
    )  # 11 bytes
    series = b"\x0a\x0d" + label + b"\x12\x0b" + sample  # TimeSeries.labels, .samples: 28
    assert encoded == b"\x0a\x1c" + series  # WriteRequest.timeseries (1, wire type 2)
    assert len(encoded) == 30


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (T0, "80d0eab6b733"),
        (2**63 - 1, "ffffffffffffffff7f"),
        # Negative int64: two's complement over 64 bits, always 10 bytes.
        (-1, "ffffffffffffffffff01"),
        (-2, "feffffffffffffffff01"),
        (-T0, "80b095c9c8ccffffff01"),
        (-(2**63), "80808080808080808001"),
    ],
)
def test_varints(number, expected):
    assert varint(number).hex() == expected
    assert int64(read_varint(varint(number), 0)[0]) == number


def test_series_round_trip_with_sorted_labels_negative_times_and_one_nan():
    series: list[Series] = [
        (
            # Sorted by bytes: upper case before "__name__", which sorts before lower case.
            {"zone": "eu", "__name__": "queue_length", "Region": "x", "queue": "é" * 100},
            [(-T0, 1.5), (-1, -0.0), (0, 0.0), (T0, math.inf), (T0 + 5000, -math.inf)],
        ),
        ({"__name__": "nan", "a": ""}, [(T0, float("nan")), (T0 + 1, -float("nan"))]),
        ({"__name__": "empty"}, []),
    ]
    decoded = decode_write_request(encode_write_request(series))
    assert decoded[0][0] == [
        ("Region", "x"), ("__name__", "queue_length"), ("queue", "é" * 100), ("zone", "eu"),
    ]
    assert decoded[0][1] == [(t, bits(v)) for t, v in series[0][1]]
    assert decoded[1] == (
        [("__name__", "nan"), ("a", "")], [(T0, PROMETHEUS_NAN), (T0 + 1, PROMETHEUS_NAN)]
    )
    assert decoded[2] == ([("__name__", "empty")], [])


def test_no_nan_is_ever_written_as_a_staleness_marker():
    stale = struct.unpack("<d", struct.pack("<Q", STALE_NAN))[0]
    other = struct.unpack("<d", struct.pack("<Q", 0xFFF0000000000123))[0]
    assert math.isnan(stale) and math.isnan(other)
    request = encode_write_request([({"__name__": "s"}, [(1, stale), (2, other)])])
    decoded = decode_write_request(request)
    assert [value for _, value in decoded[0][1]] == [PROMETHEUS_NAN, PROMETHEUS_NAN]


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, "00"),
        (1, "01" "00"),
        (59, "3b" "e8"),  # tag (len - 1) << 2 inside the byte up to 60 bytes
        (60, "3c" "ec"),
        (61, "3d" "f03c"),  # then 60 << 2 and one byte of len - 1
        (255, "ff01" "f0fe"),
        (256, "8002" "f0ff"),
        (257, "8102" "f40001"),  # then 61 << 2 and two bytes of len - 1, little-endian
        (65535, "ffff03" "f4feff"),
        (65536, "808004" "f4ffff"),  # one full chunk
        (65537, "818004" "f4ffff"),  # a full chunk, then a 1-byte one
        (2 * 65536 + 300, "ac8208" "f4ffff"),
    ],
)
def test_snappy_literal_framing(size, header):
    data = bytes(i * 7 % 251 for i in range(size))
    block = snappy_literal(data)
    assert block.hex().startswith(header)
    assert snappy_decode(block) == data
    chunks = [min(65536, size - start) for start in range(0, size, 65536)]
    tag_bytes = sum(1 if n <= 60 else 2 if n <= 256 else 3 for n in chunks)
    assert len(block) == len(varint(size)) + tag_bytes + size


def test_a_large_request_round_trips():
    series = [
        ({"__name__": "taskqueue_queue_length", "queue": f"q{k}", "service": "images"},
         [(T0 + i * 5000, float(i % 97)) for i in range(5000)])
        for k in range(20)
    ]  # 100k samples
    # (Its speed, about 2 M samples/s here, is not a test's business: no timed tests.)
    body = snappy_literal(encode_write_request(series))
    assert sum(len(s) for _, s in decode_write_request(snappy_decode(body))) == 100_000


class Recording(requests.Session):
    """Answers every POST with 204 and keeps the decoded requests."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.headers_seen: list[dict[str, str]] = []

    def post(self, url: str, data: Any = None, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.bodies.append(snappy_decode(data))
        self.headers_seen.append(kwargs["headers"])
        response = requests.Response()
        response.status_code = 204
        return response


def test_a_large_write_is_split_into_time_windows_across_all_series():
    series: list[Series] = [
        ({"__name__": "a", "k": "1"}, [(T0 + i, float(i)) for i in range(50)]),
        ({"__name__": "b"}, []),
        ({"__name__": "c", "k": "2"}, [(T0 + i * 20, -float(i)) for i in range(3)]),
        ({"__name__": "d"}, [(T0 - 10 + i, 0.5) for i in range(120)]),
    ]
    session = Recording()
    RemoteWriter("http://x", session, max_request_bytes=300).write(series)
    assert len(session.bodies) > 5
    assert all(len(body) <= 300 for body in session.bodies)
    assert session.headers_seen[0] == {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    joined: dict[str, list[tuple[int, int]]] = {}
    windows = []
    for body in session.bodies:
        request = decode_write_request(body)
        names = [dict(labels)["__name__"] for labels, _ in request]
        assert len(names) == len(set(names)), "a series twice in one request"
        for labels, samples in request:
            joined.setdefault(dict(labels)["__name__"], []).extend(samples)
        times = [t for _, samples in request for t, _ in samples]
        windows.append((min(times), max(times)))
    assert joined == {
        labels["__name__"]: [(t, bits(v)) for t, v in samples] for labels, samples in series
    }
    # Each request is a window of time after the one before it, whatever the series.
    assert all(before[1] < after[0] for before, after in pairwise(windows))
    # The same in one request under the default limit, and nothing sent for nothing.
    session = Recording()
    writer = RemoteWriter("http://x", session)
    writer.write(series)
    writer.write([])
    assert session.bodies == [encode_write_request(series)]


def test_samples_at_one_timestamp_go_together_even_over_the_limit():
    labels = {"__name__": "huge", "payload": "x" * 400}
    session = Recording()
    RemoteWriter("http://x", session, max_request_bytes=300).write(
        [({"__name__": "small"}, [(1, 1.0)]), (labels, [(1, 1.0), (2, 2.0)])]
    )
    requests_sent = [decode_write_request(body) for body in session.bodies]
    assert [[(dict(lb)["__name__"], len(s)) for lb, s in r] for r in requests_sent] == [
        [("small", 1), ("huge", 1)],
        [("huge", 1)],
    ]


# --- Against a real Prometheus ----------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrometheus]:
    server = LocalPrometheus(require("prometheus"), tmp_path_factory.mktemp("prometheus"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def writer(prometheus: LocalPrometheus) -> Iterator[RemoteWriter]:
    with RemoteWriter(prometheus.url) as remote:
        yield remote


def query(prometheus: LocalPrometheus, promql: str, at_ms: int) -> list[dict[str, Any]]:
    response = requests.get(
        f"{prometheus.url}/api/v1/query",
        params={"query": promql, "time": f"{at_ms / 1000:.3f}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


def values(prometheus: LocalPrometheus, promql: str, at_ms: int) -> list[str]:
    return [sample["value"][1] for sample in query(prometheus, promql, at_ms)]


def test_written_samples_are_queried_at_simulated_times(prometheus, writer):
    many = {f"label_{i:02d}": f"value {i}" for i in range(30, 0, -1)}
    many |= {"__name__": "sim_many", "Zone": "upper case sorts first", "queue": "ünïcode"}
    writer.write([
        # A counter going up 5 every 5 s: rate 1/s.
        ({"__name__": "sim_counter", "queue": "images"},
         [(T0 + i * 5000, i * 5.0) for i in range(40)]),
        ({"__name__": "sim_gauge"}, [(T0, 3.25), (T0 + 5000, math.nan), (T0 + 10000, 7.0)]),
        (many, [(T0 + i * 5000, float(i)) for i in range(4)]),
    ])
    assert values(prometheus, "rate(sim_counter[1m])", T0 + 120_000) == ["1"]
    assert values(prometheus, 'increase(sim_counter{queue="images"}[2m])', T0 + 180_000) == ["120"]
    # Between samples an instant query sees the last one before it.
    assert values(prometheus, "sim_counter", T0 + 62_500) == ["60"]
    assert values(prometheus, "sim_gauge", T0 + 2_000) == ["3.25"]
    assert values(prometheus, "sim_gauge", T0 + 5_000) == ["NaN"]
    assert values(prometheus, "sim_gauge", T0 + 12_000) == ["7"]
    # Nothing before the first sample (the simulated past is empty).
    assert values(prometheus, "sim_gauge", T0 - 1_000) == []
    [sample] = query(prometheus, "sim_many", T0 + 15_000)
    assert sample["metric"] == many
    assert sample["value"][1] == "3"


def test_none_is_a_staleness_marker_that_ends_the_series(prometheus, writer):
    writer.write([({"__name__": "sim_vanishing"}, [(T0, 1.0), (T0 + 15_000, None)])])
    assert values(prometheus, "sim_vanishing", T0 + 10_000) == ["1"]
    # Without the marker the 1 would be seen for 5 minutes (the lookback).
    assert values(prometheus, "sim_vanishing", T0 + 16_000) == []


def test_an_out_of_order_sample_is_a_one_line_error_with_prometheus_reason(prometheus, writer):
    series = {"__name__": "sim_ordered"}
    writer.write([(series, [(T0, 1.0), (T0 + 10_000, 2.0)])])
    with pytest.raises(RemoteWriteError) as raised:
        writer.write([(series, [(T0 + 5_000, 3.0)])])
    message = str(raised.value)
    assert "\n" not in message
    assert "HTTP 400" in message and "out of order sample" in message
    assert values(prometheus, "sim_ordered", T0 + 10_000) == ["2"]


def test_an_unreachable_prometheus_is_a_one_line_error():
    remote = RemoteWriter(f"http://127.0.0.1:{free_port()}", timeout=2)
    with remote, pytest.raises(RemoteWriteError) as raised:
        remote.write([({"__name__": "x"}, [(T0, 1.0)])])
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("remote write to http://127.0.0.1:")


class Counting(requests.Session):
    """A real session that keeps the size of each body it POSTs."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def post(self, url: str, data: Any = None, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sizes.append(len(data))
        return super().post(url, data=data, **kwargs)


def test_a_write_over_8_mb_is_split_and_every_sample_lands(tmp_path):
    # 20 series x 24k samples at 1 s (6.7 hours): about 8.6 MB of protobuf. Split by
    # series, the second request would start hours before the first one ended, which
    # Prometheus refuses ("out of bounds", as the last write here shows).
    count = 24_000
    series: list[Series] = [
        ({"__name__": "sim_big", "queue": f"q{k:02d}"},
         [(T0 + i * 1000, float(i)) for i in range(count)])
        for k in range(20)
    ]
    assert len(encode_write_request(series)) > MAX_REQUEST_BYTES
    session = Counting()
    # A Prometheus of its own: its newest sample is hours after the other tests' ones.
    with (
        LocalPrometheus(require("prometheus"), tmp_path) as prometheus,
        RemoteWriter(prometheus.url, session) as remote,
    ):
        remote.write(series)
        end = T0 + (count - 1) * 1000
        assert len(session.sizes) == 2
        assert all(size <= MAX_REQUEST_BYTES + 1000 for size in session.sizes)
        assert values(prometheus, "sum(count_over_time(sim_big[7h]))", end) == [str(20 * count)]
        assert values(prometheus, "min(sim_big)", end) == [str(count - 1)]
        with pytest.raises(RemoteWriteError, match=r"HTTP 400: out of bounds$"):
            remote.write([({"__name__": "sim_late"}, [(end - 2 * 3600_000, 1.0)])])


def test_the_directory_holds_the_log(prometheus):
    assert prometheus.log is not None and prometheus.log.parent == Path(prometheus.directory)
    assert prometheus.log.read_text().strip()
