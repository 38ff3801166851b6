"""Instant and range queries against Prometheus's HTTP API, with failures sorted into a
few kinds.

The client only fetches samples (labels and a number, or labels and points over time for
a range query): which series a rule reads, and what NaN, an empty result or several
series mean for a scaling decision, is decided elsewhere, by a pure function over the
samples returned here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

# requests is imported by the client, where queries are made: reading a config
# (check-config, PrometheusSettings) needs none of it, and it takes 50 ms to import.
if TYPE_CHECKING:
    import requests

QueryErrorKind = Literal["unreachable", "timeout", "http", "bad_response", "query"]

# What requests itself accepts as a header value; checked up front because requests'
# own error for a bad value quotes the value, which may be a secret.
# (fullmatch: with `$` requests lets a trailing newline through, and http.client then
# rejects the header quoting its value.)
_VALID_HEADER_VALUE = re.compile(r"(\S[^\r\n]*)?")
_NOT_JSON = object()
_QUERY_IN_MESSAGE = 120
_TEXT_IN_MESSAGE = 200
# Prometheus refuses a range query of more than 11,000 points per series
# ("exceeded maximum resolution"); longer ranges are asked for in chunks of this many.
MAX_POINTS_PER_QUERY = 11_000


@dataclass(frozen=True)
class PrometheusSettings:
    url: str
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token: str | None = None
    verify_tls: bool = True

    def __post_init__(self) -> None:
        # Caught here rather than at the first query, so a bad config fails at start-up
        # instead of looking like an outage on every cycle.
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = show_url(self.url)
            raise ValueError(f"prometheus url must be http(s)://host[:port][/path], got {shown!r}")
        if parts.query or parts.fragment:
            raise ValueError("prometheus url must not have a query string or fragment")
        try:
            _ = parts.port  # raises on a port that is not a number
        except ValueError:
            raise ValueError(f"prometheus url has a bad port: {show_url(self.url)!r}") from None
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"prometheus timeout must be a positive number, got {self.timeout}")
        if self.bearer_token is not None:
            if not self.bearer_token:
                raise ValueError("prometheus bearer_token is empty (unset variable?)")
            if not _valid_header_value(self.bearer_token):
                raise ValueError(
                    "prometheus bearer_token has leading whitespace or a line break "
                    "(read from a file with a trailing newline?)"
                )
            if any(name.lower() == "authorization" for name in self.headers):
                raise ValueError(
                    "prometheus: set either bearer_token or an Authorization header, not both"
                )
        for name, value in self.headers.items():
            if not _valid_header_value(value):
                raise ValueError(
                    f"prometheus header {name!r}: value must be one line of text, no leading space"
                )


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector (or a scalar, with no labels) and its value."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: its labels and its (epoch seconds, value) points, in
    time order. A step where the series had no sample has no point (not a NaN)."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


class QueryError(Exception):
    """A query that gave no usable values; `kind` says which part of the trip failed."""

    def __init__(
        self, kind: QueryErrorKind, message: str, *, query: str, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind: QueryErrorKind = kind
        self.query = query
        self.status = status


class PrometheusClient:
    def __init__(
        self, settings: PrometheusSettings, session: requests.Session | None = None
    ) -> None:
        self.settings = settings
        self._endpoint = settings.url.rstrip("/") + "/api/v1/query"
        self._range_endpoint = self._endpoint + "_range"
        self._shown_url = show_url(settings.url)
        headers = dict(settings.headers)
        if settings.bearer_token is not None:
            headers["Authorization"] = f"Bearer {settings.bearer_token}"
        self._headers = headers
        secrets = [settings.bearer_token or "", urlsplit(settings.url).password or ""]
        secrets += settings.headers.values()
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._owns_session = session is None
        # One Session for every query and thread: it keeps connections alive, and
        # concurrent requests through it are safe in practice because urllib3's pool is
        # thread-safe and nothing here mutates the session (headers go with each request,
        # and Prometheus sets no cookies). Past the adapter's pool size (10 threads) extra
        # connections still work but are closed after use, with a urllib3 warning.
        import requests

        self._session = session if session is not None else requests.Session()

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def query(self, promql: str, at: float | None = None) -> list[float]:
        """Values of an instant query, in Prometheus's order: one per sample, or one scalar."""
        return [sample.value for sample in self.query_samples(promql, at)]

    def query_samples(self, promql: str, at: float | None = None) -> list[Sample]:
        """The samples of an instant query, in Prometheus's order; a scalar has no labels.

        `at` (epoch seconds) evaluates the query at that instant instead of now: the
        simulator's clock is not the wall clock.
        """
        shown = _show_query(promql)
        form = {"query": promql}
        if at is not None:
            form["time"] = repr(float(at))
        response = self._post(self._endpoint, form, promql, shown)
        return self._samples(promql, shown, response)

    def metric_names(self) -> frozenset[str]:
        """Every metric name Prometheus holds a series of (its `__name__` label values):
        a name missing here was never scraped or recorded."""
        import requests

        shown = "'label __name__ values'"
        try:
            response = self._session.get(
                self.settings.url.rstrip("/") + "/api/v1/label/__name__/values",
                headers=self._headers, timeout=self.settings.timeout,
                verify=self.settings.verify_tls, allow_redirects=False)
        except requests.RequestException as error:
            raise QueryError("unreachable", f"cannot list metric names at {self._shown_url}: "
                                            f"{self._reason(error)}", query=shown) from error
        data = self._data("__name__", shown, response, list)
        if not all(isinstance(n, str) for n in data):
            raise self._bad("__name__", shown, response.status_code)("names are not a list")
        return frozenset(data)

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[RangeSeries]:
        """The series of a range query over [start, end] (epoch seconds) every `step` seconds.

        Evaluated at start, start + step, ... up to end, as Prometheus does. A range longer
        than Prometheus's 11,000 points per series is asked for in consecutive chunks on
        the same grid, and each series' points are joined in time order; series keep the
        order in which they first appear. A failure of any chunk fails the whole query,
        with the same kinds and messages as `query_samples`.
        """
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step must be a positive number of seconds, got {step}")
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"range must have start <= end, got {start} .. {end}")
        shown = _show_query(promql)
        # Milliseconds, Prometheus's own resolution: chunk edges then land exactly on
        # the grid, with no float drift between one chunk and the next.
        start_ms, end_ms = round(start * 1000), round(end * 1000)
        step_ms = max(1, round(step * 1000))
        chunk_ms = (MAX_POINTS_PER_QUERY - 1) * step_ms
        merged: dict[frozenset[tuple[str, str]],
                     tuple[Mapping[str, str], list[tuple[float, float]]]] = {}
        chunk_start = start_ms
        while chunk_start <= end_ms:
            chunk_end = min(end_ms, chunk_start + chunk_ms)
            form = {"query": promql, "start": _seconds(chunk_start), "end": _seconds(chunk_end),
                    "step": _seconds(step_ms)}
            response = self._post(self._range_endpoint, form, promql, shown)
            for series in self._matrix(promql, shown, response):
                key = frozenset(series.labels.items())
                merged.setdefault(key, (series.labels, []))[1].extend(series.points)
            chunk_start = chunk_end + step_ms
        return [RangeSeries(labels, tuple(points)) for labels, points in merged.values()]

    def _post(self, endpoint: str, form: Mapping[str, str], promql: str,
              shown: str) -> requests.Response:
        """The response to one API call; a failure to get one is a QueryError."""
        import requests
        from urllib3.exceptions import ReadTimeoutError

        try:
            # POST form, so a long query never meets a URL length limit. Redirects are not
            # followed: requests would turn a POST into a body-less GET (Prometheus then
            # reports "no expression found") and would carry our headers to another host.
            return self._session.post(
                endpoint,
                data=form,
                headers=self._headers,
                timeout=self.settings.timeout,
                verify=self.settings.verify_tls,
                allow_redirects=False,
            )
        except requests.Timeout as error:
            raise self._timeout(promql, shown) from error
        except requests.ConnectionError as error:
            # requests reports a timeout while reading the body as a ConnectionError.
            if any(isinstance(e, ReadTimeoutError | TimeoutError) for e in _chain(error)):
                raise self._timeout(promql, shown) from error
            raise QueryError(
                "unreachable",
                f"cannot reach prometheus at {self._shown_url} for query {shown}: "
                f"{self._reason(error)}",
                query=promql,
            ) from error
        except requests.RequestException as error:
            raise QueryError(
                "bad_response",
                f"prometheus returned a bad response for query {shown}: {self._reason(error)}",
                query=promql,
            ) from error

    def _bad(self, promql: str, shown: str, status: int) -> Callable[[str], QueryError]:
        def bad(detail: str) -> QueryError:
            return QueryError(
                "bad_response",
                f"prometheus returned a bad response for query {shown}: {detail}",
                query=promql,
                status=status,
            )

        return bad

    def _data(self, promql: str, shown: str, response: requests.Response,
              expect: type = dict) -> Any:
        """The `data` object of a successful answer; any other answer is a QueryError."""
        status = response.status_code
        bad = self._bad(promql, shown, status)
        try:
            body: Any = json.loads(response.content)
        except (ValueError, RecursionError):
            body = _NOT_JSON
        error_text = self._error_text(body)

        if not 200 <= status < 300:
            if status in (400, 422) and error_text is not None:
                raise QueryError(
                    "query",
                    f"prometheus rejected query {shown} {error_text}",
                    query=promql,
                    status=status,
                )
            message = f"prometheus returned HTTP {status} for query {shown}"
            if error_text is not None:
                message += f" {error_text}"
            elif 300 <= status < 400:
                location = self._clean(show_url(response.headers.get("Location", "")))
                message += f": redirected to {location or '(no Location)'}; set the url it names"
            raise QueryError("http", message, query=promql, status=status)

        if body is _NOT_JSON:
            raise bad("body is not JSON")
        if error_text is not None:
            raise QueryError(
                "query",
                f"prometheus rejected query {shown} {error_text}",
                query=promql,
                status=status,
            )
        if not isinstance(body, dict) or body.get("status") != "success":
            raise bad('expected a JSON object with "status": "success"')
        data = body.get("data")
        if not isinstance(data, expect):
            raise bad(f'no "data" {"object" if expect is dict else "list"}')
        return data

    def _samples(self, promql: str, shown: str, response: requests.Response) -> list[Sample]:
        data = self._data(promql, shown, response)
        bad = self._bad(promql, shown, response.status_code)
        result_type = data.get("resultType")
        result = data.get("result")
        if result_type == "vector":
            if not isinstance(result, list):
                raise bad('"result" of a vector is not a list')
            samples = []
            for index, sample in enumerate(result):
                pair = sample.get("value") if isinstance(sample, dict) else None
                value = self._number(pair, f"sample {index}", bad)
                labels = sample.get("metric", {})
                if not _is_labels(labels):
                    raise bad(f'sample {index}: "metric" is not a map of label names to strings')
                samples.append(Sample(labels, value))
            return samples
        if result_type == "scalar":
            return [Sample({}, self._number(result, "scalar", bad))]
        if result_type in ("matrix", "string"):
            raise bad(
                f'result type "{result_type}" is not supported; '
                "write the query to return an instant vector or a scalar"
            )
        raise bad(f"unknown result type {self._clean(str(result_type))!r}")

    def _matrix(self, promql: str, shown: str, response: requests.Response) -> list[RangeSeries]:
        data = self._data(promql, shown, response)
        bad = self._bad(promql, shown, response.status_code)
        result_type = data.get("resultType")
        result = data.get("result")
        if result_type != "matrix":
            # A range query of a scalar expression comes back as a matrix too.
            raise bad(f"range query result type {self._clean(str(result_type))!r} "
                      'is not "matrix"')
        if not isinstance(result, list):
            raise bad('"result" of a matrix is not a list')
        found = []
        for index, series in enumerate(result):
            values = series.get("values") if isinstance(series, dict) else None
            if not isinstance(values, list):
                # A native histogram series has "histograms" instead: not a number.
                raise bad(f'series {index} has no "values" list')
            labels = series.get("metric", {})
            if not _is_labels(labels):
                raise bad(f'series {index}: "metric" is not a map of label names to strings')
            points = []
            for pair in values:
                value = self._number(pair, f"series {index} point", bad)
                stamp = pair[0]
                if isinstance(stamp, bool) or not isinstance(stamp, int | float):
                    raise bad(f"series {index} point timestamp "
                              f"{self._clean(repr(stamp))} is not a number")
                points.append((float(stamp), value))
            found.append(RangeSeries(labels, tuple(points)))
        return found

    def _number(self, pair: object, what: str, bad: Callable[[str], QueryError]) -> float:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str)):
            raise bad(f'{what} is not a [timestamp, "value"] pair')
        try:
            return float(pair[1])
        except ValueError:
            raise bad(f"{what} value {self._clean(pair[1])!r} is not a number") from None

    def _error_text(self, body: Any) -> str | None:
        """`(errorType): error` of a Prometheus error body, one line, secrets hidden."""
        if not (isinstance(body, dict) and body.get("status") == "error"):
            return None
        error = body.get("error")
        error_type = body.get("errorType")
        text = self._clean(error if isinstance(error, str) else "no error text")
        if isinstance(error_type, str) and error_type:
            return f"({self._clean(error_type, 40)}): {text}"
        return f": {text}"

    def _timeout(self, promql: str, shown: str) -> QueryError:
        return QueryError(
            "timeout",
            f"prometheus at {self._shown_url} did not answer query {shown} "
            f"within {self.settings.timeout:g}s",
            query=promql,
        )

    def _reason(self, error: BaseException) -> str:
        # The OS's words ("Connection refused", "Name or service not known") say more than
        # urllib3's wrappers around them, which repeat host, port and object reprs.
        chain = list(_chain(error))
        for exc in chain:
            if isinstance(exc, OSError) and exc.strerror:
                return self._clean(exc.strerror)
        deepest = chain[-1]
        return self._clean(str(deepest) or type(deepest).__name__)

    def _clean(self, text: str, limit: int = _TEXT_IN_MESSAGE) -> str:
        """One line, at most `limit` characters, with no secret of ours in it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _one_line(text, limit)


def _is_labels(labels: object) -> bool:
    return isinstance(labels, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


def _seconds(milliseconds: int) -> str:
    """Epoch milliseconds as the decimal seconds Prometheus's API reads, exactly."""
    sign = "-" if milliseconds < 0 else ""
    whole, fraction = divmod(abs(milliseconds), 1000)
    return f"{sign}{whole}.{fraction:03d}"


def _valid_header_value(value: object) -> bool:
    return isinstance(value, str) and _VALID_HEADER_VALUE.fullmatch(value) is not None


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The exception, then what it wraps (causes, urllib3 `reason`s, exceptions in args)."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        inner = [exc.__cause__, getattr(exc, "reason", None), *exc.args, exc.__context__]
        stack.extend(e for e in reversed(inner) if isinstance(e, BaseException))


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _show_query(promql: str) -> str:
    return f"'{_one_line(promql, _QUERY_IN_MESSAGE)}'"


def show_url(url: str) -> str:
    """The URL without user, password, query string or fragment (they may hold secrets)."""
    try:
        parts = urlsplit(url)
        # All before the last "@" may be a user and password, even where urlsplit reads
        # part of it as the path (a password with a "/": `http://user:pa/ss@host`).
        host, path = parts.netloc, parts.path
        if "@" in path:
            host, slash, path = (host + path).rpartition("@")[2].partition("/")
            path = slash + path
        prefix = f"{parts.scheme}:" if parts.scheme else ""
        if parts.netloc or url[len(prefix):].startswith("//"):
            prefix += "//"
        return _one_line(prefix + host.rpartition("@")[2] + path, 200)
    except ValueError:
        return "(unparsable url)"
