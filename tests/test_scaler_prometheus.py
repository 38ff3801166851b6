"""The scaler's Prometheus client: mocked HTTP for every failure, a real prometheus for the API.

Instant queries (query, query_samples) and range queries (query_range) share the transport
and error handling, so the failure table runs against both."""

from __future__ import annotations

import itertools
import json
import math
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import responses
from responses import matchers
from urllib3.exceptions import (
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)

from scaler.prometheus import (
    MAX_POINTS_PER_QUERY,
    PrometheusClient,
    PrometheusSettings,
    QueryError,
    RangeSeries,
    Sample,
)
from tests.services import MetricsTarget, PrometheusServer, free_port, wait_for

URL = "http://prometheus.test:9090"
ENDPOINT = f"{URL}/api/v1/query"
RANGE_ENDPOINT = f"{URL}/api/v1/query_range"
TOKEN = "tok-5ecret-b3arer"
HEADERS = {"X-Scope-OrgID": "tenant-0rg-7", "X-Api-Key": "hdr-5ecret-k3y"}
SECRETS = (TOKEN, *HEADERS.values())
QUERY = "sum(x)"


def settings(**overrides: Any) -> PrometheusSettings:
    fields: dict[str, Any] = {
        "url": URL, "timeout": 2.5, "headers": HEADERS, "bearer_token": TOKEN,
    }
    return PrometheusSettings(**{**fields, **overrides})


def vector(*values: str) -> dict[str, Any]:
    result = [
        {"metric": {"queue": f"q{i}"}, "value": [1700000000.123, value]}
        for i, value in enumerate(values)
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def success(result_type: str, result: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": result_type, "result": result}}


def prometheus_error(error_type: str, error: str) -> dict[str, Any]:
    return {"status": "error", "errorType": error_type, "error": error}


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def client() -> Iterator[PrometheusClient]:
    with PrometheusClient(settings()) as prometheus:
        yield prometheus


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error)):
        for secret in SECRETS:
            assert secret not in text
    assert "\n" not in str(error)


# --- values -----------------------------------------------------------------------------


def test_vector_values_are_floats_in_prometheus_order(mocked, client):
    mocked.post(
        ENDPOINT,
        json=vector("3", "1.5e3", "0.25", "-2"),
        match=[matchers.urlencoded_params_matcher({"query": QUERY})],
    )
    assert client.query(QUERY) == [3.0, 1500.0, 0.25, -2.0]
    assert len(mocked.calls) == 1


def test_samples_carry_their_labels(mocked, client):
    mocked.post(ENDPOINT, json=vector("3", "4"))
    assert client.query_samples(QUERY) == [Sample({"queue": "q0"}, 3.0),
                                           Sample({"queue": "q1"}, 4.0)]
    mocked.post(ENDPOINT, json=success("scalar", [1700000000.5, "2"]))
    assert client.query_samples(QUERY) == [Sample({}, 2.0)]


def test_nan_and_infinities_are_returned_as_floats(mocked, client):
    mocked.post(ENDPOINT, json=vector("NaN", "+Inf", "-Inf"))
    nan, plus, minus = client.query(QUERY)
    assert math.isnan(nan)
    assert plus == math.inf
    assert minus == -math.inf


def test_warnings_do_not_change_the_values(mocked, client):
    mocked.post(ENDPOINT, json={**vector("1"), "warnings": ["results truncated"]})
    assert client.query(QUERY) == [1.0]


def test_empty_vector_is_an_empty_list(mocked, client):
    mocked.post(ENDPOINT, json=vector())
    assert client.query(QUERY) == []


def test_scalar_is_a_list_of_one(mocked, client):
    mocked.post(ENDPOINT, json=success("scalar", [1700000000.5, "2"]))
    assert client.query("scalar(vector(2))") == [2.0]


def test_one_post_per_query_with_token_headers_timeout_and_tls_setting(mocked):
    long_query = "sum(" + " + ".join(f'x{{queue="{i}"}}' for i in range(500)) + ")"
    for verify in (True, False):
        mocked.post(
            ENDPOINT,
            json=vector("1"),
            match=[
                matchers.urlencoded_params_matcher({"query": long_query}),
                matchers.header_matcher({"Authorization": f"Bearer {TOKEN}", **HEADERS}),
                matchers.request_kwargs_matcher({"timeout": 2.5}),
            ],
        )
        with PrometheusClient(settings(verify_tls=verify)) as prometheus:
            assert prometheus.query(long_query) == [1.0]
    assert [call.request.method for call in mocked.calls] == ["POST", "POST"]
    assert [call.request.url for call in mocked.calls] == [ENDPOINT, ENDPOINT]
    # requests swaps True for $REQUESTS_CA_BUNDLE when that is set, so True is "not False".
    verified, unverified = (call.request.req_kwargs["verify"] for call in mocked.calls)
    assert verified not in (False, None)
    assert unverified is False


def test_no_authorization_header_without_a_token(mocked):
    mocked.post(ENDPOINT, json=vector("1"))
    with PrometheusClient(settings(bearer_token=None, headers={})) as prometheus:
        prometheus.query(QUERY)
    assert "Authorization" not in mocked.calls[0].request.headers


def test_url_path_prefix_is_kept(mocked):
    mocked.post("http://proxy.test/prometheus/api/v1/query", json=vector("1"))
    with PrometheusClient(settings(url="http://proxy.test/prometheus/")) as prometheus:
        assert prometheus.query(QUERY) == [1.0]


def test_an_injected_session_is_used_and_left_open(mocked):
    class Session(requests.Session):
        closed = 0
        sent = 0

        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            Session.sent += 1
            return super().send(request, **kwargs)

        def close(self) -> None:
            Session.closed += 1
            super().close()

    mocked.post(ENDPOINT, json=vector("1"))
    session = Session()
    with PrometheusClient(settings(), session=session) as prometheus:
        prometheus.query(QUERY)
    assert (Session.sent, Session.closed) == (1, 0)
    session.close()


# --- failures ---------------------------------------------------------------------------

Q = f"for query '{QUERY}'"
BAD = f"prometheus returned a bad response {Q}: "


def _connection_error(wrapper: Exception, os_error: OSError) -> requests.ConnectionError:
    """Shaped as requests raises it: ConnectionError(MaxRetryError(wrapper from os_error))."""
    wrapper.__cause__ = os_error
    return requests.ConnectionError(MaxRetryError(None, "/api/v1/query", wrapper))


def _refused() -> requests.ConnectionError:
    return _connection_error(
        NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused"),
        ConnectionRefusedError(111, "Connection refused"),
    )


def _dns() -> requests.ConnectionError:
    gaierror = socket.gaierror(-2, "Name or service not known")
    return _connection_error(NameResolutionError("prometheus.test", None, gaierror), gaierror)


FAILURES: list[tuple[str, dict[str, Any], str, int | None, str]] = [
    ("http-500", {"status": 500, "body": "internal"}, "http", 500,
     f"prometheus returned HTTP 500 {Q}"),
    ("http-503-html",
     {"status": 503, "content_type": "text/html",
      "body": "<html><body><h1>503 Service Unavailable</h1>\nNo server is available</body></html>"},
     "http", 503, f"prometheus returned HTTP 503 {Q}"),
    ("http-503-prometheus-timeout",
     {"status": 503, "json": prometheus_error("timeout", "query timed out in query execution")},
     "http", 503,
     f"prometheus returned HTTP 503 {Q} (timeout): query timed out in query execution"),
    ("http-400-not-prometheus", {"status": 400, "body": "Bad Request"}, "http", 400,
     f"prometheus returned HTTP 400 {Q}"),
    ("http-401", {"status": 401, "body": "Unauthorized"}, "http", 401,
     f"prometheus returned HTTP 401 {Q}"),
    ("http-302-redirect",
     {"status": 302, "headers": {"Location": "http://u:p@prometheus.test:9090/prom/api/v1/query"}},
     "http", 302,
     f"prometheus returned HTTP 302 {Q}: redirected to "
     "http://prometheus.test:9090/prom/api/v1/query; set the url it names"),
    ("query-bad-data",
     {"status": 400, "json": prometheus_error(
         "bad_data", 'invalid parameter "query": 1:5: parse error: unclosed left parenthesis')},
     "query", 400,
     f"prometheus rejected query '{QUERY}' (bad_data): "
     'invalid parameter "query": 1:5: parse error: unclosed left parenthesis'),
    ("query-execution-422",
     {"status": 422, "json": prometheus_error(
         "execution", "many-to-many matching not allowed: matching labels must be unique")},
     "query", 422,
     f"prometheus rejected query '{QUERY}' (execution): "
     "many-to-many matching not allowed: matching labels must be unique"),
    ("query-error-long-multiline",
     {"status": 400, "json": prometheus_error("bad_data", "first line\nsecond " + "x" * 400)},
     "query", 400,
     f"prometheus rejected query '{QUERY}' (bad_data): "
     + ("first line second " + "x" * 400)[:199] + "…"),
    ("error-with-http-200", {"status": 200, "json": prometheus_error("bad_data", "odd proxy")},
     "query", 200, f"prometheus rejected query '{QUERY}' (bad_data): odd proxy"),
    ("garbage-json", {"status": 200, "body": '{"status": "success", "data": '}, "bad_response",
     200, BAD + "body is not JSON"),
    ("empty-body", {"status": 200, "body": ""}, "bad_response", 200, BAD + "body is not JSON"),
    ("json-null", {"status": 200, "body": "null"}, "bad_response", 200,
     BAD + 'expected a JSON object with "status": "success"'),
    ("json-list", {"status": 200, "json": []}, "bad_response", 200,
     BAD + 'expected a JSON object with "status": "success"'),
    ("no-data", {"status": 200, "json": {"status": "success"}}, "bad_response", 200,
     BAD + 'no "data" object'),
    ("result-not-list", {"status": 200, "json": success("vector", {})}, "bad_response", 200,
     BAD + '"result" of a vector is not a list'),
    ("sample-without-value",  # a native histogram sample has "histogram" instead
     {"status": 200, "json": success("vector", [{"metric": {}, "histogram": [1, {}]}])},
     "bad_response", 200, BAD + 'sample 0 is not a [timestamp, "value"] pair'),
    ("value-not-a-string",
     {"status": 200, "json": success("vector", [{"metric": {}, "value": [1, 3]}])},
     "bad_response", 200, BAD + 'sample 0 is not a [timestamp, "value"] pair'),
    ("labels-not-a-map",
     {"status": 200, "json": success("vector", [{"metric": ["q"], "value": [1, "3"]}])},
     "bad_response", 200, BAD + 'sample 0: "metric" is not a map of label names to strings'),
    ("value-not-a-number", {"status": 200, "json": vector("1", "lots")}, "bad_response", 200,
     BAD + "sample 1 value 'lots' is not a number"),
    ("scalar-wrong-shape", {"status": 200, "json": success("scalar", "2")}, "bad_response", 200,
     BAD + 'scalar is not a [timestamp, "value"] pair'),
    ("matrix", {"status": 200, "json": success("matrix", [])}, "bad_response", 200,
     BAD + 'result type "matrix" is not supported; '
     "write the query to return an instant vector or a scalar"),
    ("string", {"status": 200, "json": success("string", [1, "abc"])}, "bad_response", 200,
     BAD + 'result type "string" is not supported; '
     "write the query to return an instant vector or a scalar"),
    ("unknown-type", {"status": 200, "json": success("histogram", [])}, "bad_response", 200,
     BAD + "unknown result type 'histogram'"),
    ("read-timeout", {"body": requests.exceptions.ReadTimeout()}, "timeout", None,
     f"prometheus at {URL} did not answer query '{QUERY}' within 2.5s"),
    ("connect-timeout", {"body": requests.exceptions.ConnectTimeout()}, "timeout", None,
     f"prometheus at {URL} did not answer query '{QUERY}' within 2.5s"),
    ("timeout-reading-body",  # requests raises ConnectionError for this one
     {"body": requests.ConnectionError(ReadTimeoutError(None, "/", "Read timed out."))},
     "timeout", None, f"prometheus at {URL} did not answer query '{QUERY}' within 2.5s"),
    ("connection-refused", {"body": _refused()}, "unreachable", None,
     f"cannot reach prometheus at {URL} {Q}: Connection refused"),
    ("dns", {"body": _dns()}, "unreachable", None,
     f"cannot reach prometheus at {URL} {Q}: Name or service not known"),
    ("connection-error-plain", {"body": requests.ConnectionError("network is down")},
     "unreachable", None, f"cannot reach prometheus at {URL} {Q}: network is down"),
    ("chunked-encoding", {"body": requests.exceptions.ChunkedEncodingError("broken chunk")},
     "bad_response", None, BAD + "broken chunk"),
    # Nothing should echo our secrets, but if something does they are masked.
    ("secrets-echoed-in-prometheus-error",
     {"status": 400, "json": prometheus_error(
         "bad_data",
         f"bad header Authorization: Bearer {TOKEN}, X-Api-Key: {HEADERS['X-Api-Key']}")},
     "query", 400,
     f"prometheus rejected query '{QUERY}' (bad_data): "
     "bad header Authorization: Bearer ***, X-Api-Key: ***"),
    ("secrets-echoed-in-connection-error",
     {"body": requests.ConnectionError(f"proxy said no to Bearer {TOKEN}")}, "unreachable", None,
     f"cannot reach prometheus at {URL} {Q}: proxy said no to Bearer ***"),
]


@pytest.mark.parametrize(
    ("reply", "kind", "status", "message"),
    [failure[1:] for failure in FAILURES],
    ids=[failure[0] for failure in FAILURES],
)
def test_failures_have_a_kind_and_one_line_without_secrets(
    mocked, client, reply, kind, status, message
):
    mocked.post(ENDPOINT, **reply)
    with pytest.raises(QueryError) as caught:
        client.query(QUERY)
    error = caught.value
    assert (error.kind, error.status, str(error)) == (kind, status, message)
    assert error.query == QUERY
    assert_no_secret(error)
    assert len(mocked.calls) == 1


def test_a_long_multiline_query_is_shown_on_one_line_and_cut(mocked, client):
    query = "sum by (queue) (\n  taskqueue_queue_depth{system='celery'}\n)\n" + " + 0" * 100
    mocked.post(ENDPOINT, status=500)
    with pytest.raises(QueryError) as caught:
        client.query(query)
    shown = " ".join(query.split())[:119] + "…"
    assert str(caught.value) == f"prometheus returned HTTP 500 for query '{shown}'"
    assert caught.value.query == query


def test_the_url_password_is_never_shown(mocked):
    url = "http://admin:pa55w0rd@prometheus.test:9090"
    mocked.post(f"{url}/api/v1/query", body=requests.exceptions.ReadTimeout())
    mocked.post(f"{url}/api/v1/query", body=requests.ConnectionError(f"no route to {url}"))
    with PrometheusClient(settings(url=url)) as prometheus:
        with pytest.raises(QueryError) as timeout:
            prometheus.query(QUERY)
        with pytest.raises(QueryError) as unreachable:
            prometheus.query(QUERY)
    assert str(timeout.value) == f"prometheus at {URL} did not answer query '{QUERY}' within 2.5s"
    assert str(unreachable.value) == (
        f"cannot reach prometheus at {URL} for query '{QUERY}': "
        "no route to http://admin:***@prometheus.test:9090"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"url": "prometheus:9090"}, "url must be http"),
        ({"url": "ftp://prometheus.test"}, "url must be http"),
        ({"url": "http://prometheus.test:90x"}, "bad port"),
        ({"url": f"{URL}?x=1"}, "query string"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": math.inf}, "timeout must be a positive number"),
        ({"bearer_token": ""}, "bearer_token is empty"),
        ({"bearer_token": TOKEN + "\n"}, "bearer_token has leading whitespace or a line break"),
        ({"bearer_token": " " + TOKEN}, "bearer_token has leading whitespace or a line break"),
        ({"headers": {"authorization": "Basic eA=="}}, "either bearer_token or an Authorization"),
        ({"headers": {"X-Api-Key": HEADERS["X-Api-Key"] + "\r\n"}}, "'X-Api-Key': value must"),
    ],
)
def test_bad_settings_fail_at_construction_without_quoting_secrets(overrides, message):
    with pytest.raises(ValueError, match=message) as caught:
        settings(**overrides)
    for secret in SECRETS:
        assert secret not in str(caught.value)


# --- a real prometheus ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus")).start()
    yield server
    server.stop()


@pytest.fixture
def real(prometheus: PrometheusServer) -> Iterator[PrometheusClient]:
    # Prometheus ignores an Authorization header it does not ask for, so the token is sent.
    with PrometheusClient(settings(url=prometheus.url)) as client:
        yield client


@pytest.mark.integration
def test_real_vector_and_scalar(real):
    assert real.query("vector(3)") == [3.0]
    assert real.query("scalar(vector(2))") == [2.0]
    assert real.query("1.5e3") == [1500.0]
    assert real.query("absent_metric_of_this_test") == []


@pytest.mark.integration
def test_real_special_values_and_order(real):
    nan, inf = real.query('vector(0) / 0 or label_replace(vector(1) / 0, "x", "y", "", "")')
    assert math.isnan(nan) and inf == math.inf
    two = 'label_replace(vector(1), "q", "a", "", "") or label_replace(vector(2), "q", "b", "", "")'
    assert real.query(f"sort({two})") == [1.0, 2.0]
    assert real.query(f"sort_desc({two})") == [2.0, 1.0]


@pytest.mark.integration
def test_real_syntax_error_is_a_query_error_with_prometheus_text(real):
    with pytest.raises(QueryError) as caught:
        real.query("sum(")
    error = caught.value
    assert (error.kind, error.status) == ("query", 400)
    # Prometheus 2.42 words it 'invalid parameter "query": 1:5: parse error: ...'.
    assert str(error).startswith("prometheus rejected query 'sum(' (bad_data): ")
    assert str(error).endswith("unclosed left parenthesis")
    assert_no_secret(error)


@pytest.mark.integration
def test_real_evaluation_error_is_a_query_error(real):
    with pytest.raises(QueryError) as caught:
        real.query('label_replace(vector(1), "a", "b", "c", "(")')
    assert (caught.value.kind, caught.value.status) == ("query", 422)
    assert str(caught.value).startswith(
        "prometheus rejected query 'label_replace(vector(1), \"a\", \"b\", \"c\", \"(\")' "
        "(execution): "
    )


@pytest.mark.integration
def test_real_range_vector_is_a_bad_response(real):
    with pytest.raises(QueryError) as caught:
        real.query("up[1m]")
    assert caught.value.kind == "bad_response"
    assert 'result type "matrix" is not supported' in str(caught.value)


@pytest.mark.integration
def test_real_query_longer_than_a_url_may_be(prometheus):
    query = "vector(1)" + " + vector(0)" * 3000  # 36 kB, past Prometheus's URL limits
    # Parsing 3,000 binary operations takes Prometheus a second or more on a
    # loaded machine; what is tested is that the POST gets through.
    with PrometheusClient(settings(url=prometheus.url, timeout=20.0)) as client:
        assert client.query(query) == [1.0]


@pytest.mark.integration
def test_real_connection_is_kept_alive_and_shared_by_threads(prometheus):
    session = requests.Session()
    with PrometheusClient(settings(url=prometheus.url), session=session) as client:
        for i in range(5):
            assert client.query(f"vector({i})") == [float(i)]
        pools = session.get_adapter(prometheus.url).poolmanager.pools
        # urllib3's pool container refuses plain iteration; keys() is its way.
        assert sum(pools[key].num_connections for key in pools.keys()) == 1  # noqa: SIM118
        with ThreadPoolExecutor(max_workers=8) as executor:
            results = list(executor.map(lambda i: client.query(f"vector({i})"), range(64)))
        assert results == [[float(i)] for i in range(64)]
    session.close()


@pytest.fixture
def metrics_target() -> Iterator[MetricsTarget]:
    target = MetricsTarget()
    yield target
    target.close()


@pytest.mark.integration
def test_real_scraped_series(make_prometheus, metrics_target):
    metrics_target.text = (
        "# TYPE taskqueue_queue_depth gauge\n"
        'taskqueue_queue_depth{queue="a",system="celery"} 42\n'
        'taskqueue_queue_depth{queue="b",system="celery"} 7\n'
    )
    prometheus = make_prometheus(targets=[metrics_target.address], scrape_interval="1s")
    with PrometheusClient(settings(url=prometheus.url)) as client:
        # Prometheus 2.42 hands new targets to its scrapers only every 5 s, so the first
        # scrape comes about 5 s after start-up whatever the scrape interval.
        assert wait_for(
            lambda: client.query('taskqueue_queue_depth{queue="a"}') == [42.0],
            timeout=20,
            what="the first scrape",
        )
        assert client.query("sort_desc(taskqueue_queue_depth)") == [42.0, 7.0]
        # One query for every queue; each service picks its own series by label.
        assert client.query_samples("sort(sum by (queue) (taskqueue_queue_depth))") == [
            Sample({"queue": "b"}, 7.0), Sample({"queue": "a"}, 42.0)]
    assert prometheus.wait_for_value('up{job="targets"}', lambda values: values == [1.0]) == [1.0]


@pytest.mark.integration
def test_real_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    with PrometheusClient(settings(url=url)) as client, pytest.raises(QueryError) as caught:
        client.query("vector(1)")
    assert caught.value.kind == "unreachable"
    assert str(caught.value) == (
        f"cannot reach prometheus at {url} for query 'vector(1)': Connection refused"
    )
    assert_no_secret(caught.value)


@contextmanager
def stalling_server(reply: bytes) -> Iterator[str]:
    """Accepts one request, sends `reply` (maybe nothing), then says nothing more."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(reply)
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        + json.dumps(vector("1")).encode()[:20],
    ],
    ids=["no-answer", "body-stalls"],
)
def test_real_timeouts(reply):
    with (
        stalling_server(reply) as url,
        PrometheusClient(settings(url=url, timeout=0.2)) as client,
        pytest.raises(QueryError) as caught,
    ):
        client.query("vector(1)")
    assert caught.value.kind == "timeout"
    assert str(caught.value) == f"prometheus at {url} did not answer query 'vector(1)' within 0.2s"


# --- range queries ----------------------------------------------------------------------

START = 1700000000.0


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> dict[str, Any]:
    return success("matrix", [{"metric": labels, "values": [list(p) for p in points]}
                              for labels, points in series])


def test_range_series_carry_labels_and_points_in_time_order(mocked, client):
    mocked.post(
        RANGE_ENDPOINT,
        json=matrix(({"queue": "a"}, [(START, "1"), (START + 15, "NaN"), (START + 30, "+Inf")]),
                    ({"queue": "b"}, [(START + 30, "2.5")])),
        match=[matchers.urlencoded_params_matcher({
            "query": QUERY, "start": "1700000000.000", "end": "1700000030.000",
            "step": "15.000"})],
    )
    a, b = client.query_range(QUERY, START, START + 30, 15)
    assert a.labels == {"queue": "a"}
    assert [t for t, _ in a.points] == [START, START + 15, START + 30]
    assert a.points[0][1] == 1.0 and math.isnan(a.points[1][1]) and a.points[2][1] == math.inf
    assert b == RangeSeries({"queue": "b"}, ((START + 30, 2.5),))
    assert mocked.calls[0].request.url == RANGE_ENDPOINT


def test_range_times_are_sent_in_milliseconds(mocked, client):
    mocked.post(RANGE_ENDPOINT, json=matrix(), match=[matchers.urlencoded_params_matcher({
        "query": QUERY, "start": "1700000000.123", "end": "1700000060.124", "step": "0.500"})])
    assert client.query_range(QUERY, START + 0.1234, START + 60.1236, 0.5) == []


def test_range_sends_token_headers_timeout_and_tls_setting(mocked):
    mocked.post(RANGE_ENDPOINT, json=matrix(), match=[
        matchers.header_matcher({"Authorization": f"Bearer {TOKEN}", **HEADERS}),
        matchers.request_kwargs_matcher({"timeout": 2.5, "verify": False}),
    ])
    with PrometheusClient(settings(verify_tls=False)) as prometheus:
        assert prometheus.query_range(QUERY, START, START + 60, 15) == []


@pytest.mark.parametrize(("step", "end"), [(0, START + 1), (-1, START + 1), (math.nan, START + 1),
                                           (15, START - 1), (15, math.inf)])
def test_range_refuses_a_bad_step_or_range_before_asking(client, step, end):
    with pytest.raises(ValueError):
        client.query_range(QUERY, START, end, step)


def _chunked_matrix(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
    """A matrix for the requested range: series "a" at every step, "b" only after 2000 s
    past START, values = the timestamps."""
    form = dict(pair.split("=") for pair in str(request.body).split("&"))
    start, end, step = (float(form[k]) for k in ("start", "end", "step"))
    count = round((end - start) / step) + 1
    times = [start + k * step for k in range(count)]
    series = [({"s": "a"}, [(t, str(t)) for t in times])]
    later = [(t, str(t)) for t in times if t >= START + 2000]
    if later:
        series.append(({"s": "b"}, later))
    return 200, {}, json.dumps(matrix(*series))


@pytest.mark.parametrize(("points", "requests_made"), [
    (MAX_POINTS_PER_QUERY, 1),
    (MAX_POINTS_PER_QUERY + 1, 2),
    (2 * MAX_POINTS_PER_QUERY + 5, 3),
])
def test_long_ranges_are_asked_for_in_chunks_and_joined(mocked, client, points, requests_made):
    mocked.add_callback(responses.POST, RANGE_ENDPOINT, callback=_chunked_matrix)
    step = 0.25
    end = START + (points - 1) * step
    a, b = client.query_range(QUERY, START, end, step)
    assert len(mocked.calls) == requests_made
    expected = [START + k * step for k in range(points)]
    # Every step once, in order, on one grid, whichever chunk it came from.
    assert a == RangeSeries({"s": "a"}, tuple((t, t) for t in expected))
    assert b.labels == {"s": "b"}
    assert [t for t, _ in b.points] == [t for t in expected if t >= START + 2000]
    forms = [dict(p.split("=") for p in str(c.request.body).split("&")) for c in mocked.calls]
    # No chunk reaches Prometheus's limit; each starts a step after the previous one ended.
    for form in forms:
        assert (float(form["end"]) - float(form["start"])) / step + 1 <= MAX_POINTS_PER_QUERY
    for before, after in itertools.pairwise(forms):
        assert float(after["start"]) == float(before["end"]) + step


def test_a_failing_chunk_fails_the_whole_range(mocked, client):
    mocked.post(RANGE_ENDPOINT, json=matrix(({}, [(START, "1")])))
    mocked.post(RANGE_ENDPOINT, status=503)
    with pytest.raises(QueryError) as caught:
        client.query_range(QUERY, START, START + MAX_POINTS_PER_QUERY, 1)
    assert (caught.value.kind, str(caught.value)) == ("http", f"prometheus returned HTTP 503 {Q}")


# The answers that fail the same way whichever API was called: transport, status, body.
_INSTANT_SHAPES = {"result-not-list", "sample-without-value", "value-not-a-string",
                   "labels-not-a-map", "value-not-a-number", "scalar-wrong-shape", "matrix",
                   "string", "unknown-type"}
RANGE_FAILURES = [f for f in FAILURES if f[0] not in _INSTANT_SHAPES] + [
    ("vector", {"status": 200, "json": vector("1")}, "bad_response", 200,
     BAD + "range query result type 'vector' is not \"matrix\""),
    ("result-not-list", {"status": 200, "json": success("matrix", {})}, "bad_response", 200,
     BAD + '"result" of a matrix is not a list'),
    ("series-not-a-map", {"status": 200, "json": success("matrix", [[1, "2"]])},
     "bad_response", 200, BAD + 'series 0 has no "values" list'),
    ("native-histogram-series",
     {"status": 200, "json": success("matrix", [{"metric": {}, "histograms": [[1, {}]]}])},
     "bad_response", 200, BAD + 'series 0 has no "values" list'),
    ("labels-not-a-map",
     {"status": 200, "json": success("matrix", [{"metric": ["q"], "values": [[1, "3"]]}])},
     "bad_response", 200, BAD + 'series 0: "metric" is not a map of label names to strings'),
    ("point-not-a-pair",
     {"status": 200, "json": success("matrix", [{"metric": {}, "values": [[1, "3"], [2]]}])},
     "bad_response", 200, BAD + 'series 0 point is not a [timestamp, "value"] pair'),
    ("point-value-not-a-number",
     {"status": 200, "json": matrix(({}, [(START, "1")]), ({}, [(START, "lots")]))},
     "bad_response", 200, BAD + "series 1 point value 'lots' is not a number"),
    ("point-time-not-a-number",
     {"status": 200, "json": success("matrix", [{"metric": {}, "values": [["then", "3"]]}])},
     "bad_response", 200, BAD + "series 0 point timestamp 'then' is not a number"),
]


@pytest.mark.parametrize(
    ("reply", "kind", "status", "message"),
    [failure[1:] for failure in RANGE_FAILURES],
    ids=[failure[0] for failure in RANGE_FAILURES],
)
def test_range_failures_have_a_kind_and_one_line_without_secrets(
    mocked, client, reply, kind, status, message
):
    mocked.post(RANGE_ENDPOINT, **reply)
    with pytest.raises(QueryError) as caught:
        client.query_range(QUERY, START, START + 60, 15)
    error = caught.value
    assert (error.kind, error.status, str(error)) == (kind, status, message)
    assert error.query == QUERY
    assert_no_secret(error)
    assert len(mocked.calls) == 1


@pytest.mark.integration
def test_real_range_of_a_scalar_and_a_labelled_vector(real):
    (clock,) = real.query_range("time()", START, START + 60, 15)
    assert clock == RangeSeries({}, tuple((START + t, START + t) for t in range(0, 61, 15)))
    two = 'label_replace(vector(1), "q", "a", "", "") or label_replace(vector(2), "q", "b", "", "")'
    a, b = sorted(real.query_range(two, START, START + 30, 15), key=lambda s: s.labels["q"])
    assert a == RangeSeries({"q": "a"}, ((START, 1.0), (START + 15, 1.0), (START + 30, 1.0)))
    assert b.labels == {"q": "b"} and {v for _, v in b.points} == {2.0}
    assert real.query_range("absent_metric_of_this_test", START, START + 60, 15) == []


@pytest.mark.integration
def test_real_range_past_prometheus_resolution_limit_is_chunked(prometheus, real):
    # 4 h at 1 s: 14,401 points, which Prometheus refuses in one request...
    form = {"query": "time()", "start": str(START), "end": str(START + 14400), "step": "1"}
    refused = requests.post(f"{prometheus.url}/api/v1/query_range", data=form, timeout=10)
    assert refused.status_code == 400
    assert "exceeded maximum resolution" in refused.json()["error"]
    # ...and the client asks for in two, joined into one series on one grid.
    (clock,) = real.query_range("time()", START, START + 14400, 1)
    assert clock.labels == {}
    assert clock.points == tuple((START + k, START + k) for k in range(14401))


@pytest.mark.integration
def test_real_range_errors_are_query_errors(real):
    with pytest.raises(QueryError) as syntax:
        real.query_range("sum(", START, START + 60, 15)
    assert (syntax.value.kind, syntax.value.status) == ("query", 400)
    assert str(syntax.value).startswith("prometheus rejected query 'sum(' (bad_data): ")
    assert str(syntax.value).endswith("unclosed left parenthesis")
    with pytest.raises(QueryError) as range_vector:
        real.query_range("up[1m]", START, START + 60, 15)
    assert (range_vector.value.kind, range_vector.value.status) == ("query", 400)
    assert 'invalid expression type "range vector" for range query' in str(range_vector.value)
    assert_no_secret(range_vector.value)


@pytest.mark.integration
def test_real_range_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    with PrometheusClient(settings(url=url)) as client, pytest.raises(QueryError) as caught:
        client.query_range("vector(1)", START, START + 60, 15)
    assert caught.value.kind == "unreachable"
    assert str(caught.value) == (
        f"cannot reach prometheus at {url} for query 'vector(1)': Connection refused"
    )
