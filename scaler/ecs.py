"""The scaler's ECS backend: read a service's task counts and set its desired count.

Every failure reaches the caller as a BackendError whose `kind` says what to do about it
(back off, fix permissions, fix the config, wait for the network), so the scaling loop
never has to know botocore's exception zoo.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

# boto3 is imported where a client is made: reading a config (check-config) needs none,
# and boto3 takes a tenth of a second to import.
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

Kind = Literal["throttled", "denied", "no_credentials", "not_found", "unreachable", "other"]

# An ECS service tag that takes the service out of the scaler's hands: "true" holds it
# where it is, a whole number holds it at that count (as KEDA's paused-replicas).
PAUSE_TAG: Final = "taskqueue-autoscaler:paused"

# DescribeServices rejects more than 10 services in one call.
DESCRIBE_BATCH: Final = 10

_THROTTLED_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
# Bad, expired or missing credentials are grouped with refused permissions: either way
# retrying will not help until someone changes the IAM setup.
_DENIED_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationToken",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
# ServiceNotActiveException is what real ECS answers when UpdateService hits a deleted
# (INACTIVE) or DRAINING service.
_NOT_FOUND_CODES: Final = frozenset(
    {
        "ServiceNotFoundException",
        "ClusterNotFoundException",
        "ServiceNotActiveException",
        "ResourceNotFoundException",
    }
)

# Error messages are echoed into logs and alerts. Some AWS messages (SignatureDoesNotMatch)
# carry the canonical request on later lines, and that includes the session token header.
# Only the first line is kept; the patterns below are a second guard for the first one.
_ACCESS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
# Session tokens are hundreds of base64 characters, far longer than any ARN segment run.
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=]{100,}")
_URL_USERINFO = re.compile(r"(//)[^/@\s]+@")
_MAX_DETAIL = 300


def _scrub(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = _URL_USERINFO.sub(r"\1***@", line)
    line = _ACCESS_KEY_ID.sub("***", line)
    line = _LONG_TOKEN.sub("***", line)
    if len(line) > _MAX_DETAIL:
        line = line[: _MAX_DETAIL - 3] + "..."
    return line or "no detail given"


class BackendError(Exception):
    """A failed ECS call for one service.

    `kind` is one of "throttled", "denied", "no_credentials", "not_found", "unreachable",
    "other"; `code` is
    the AWS error code or botocore exception name, for logs and metrics labels.
    """

    def __init__(self, kind: Kind, service: str, detail: str, code: str = "") -> None:
        self.kind: Kind = kind
        self.service = service
        self.detail = _scrub(detail)
        self.code = code
        super().__init__(f"{service}: {self.detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce passes only str(self) back to __init__, which needs four args.
        return (self.__class__, (self.kind, self.service, self.detail, self.code))


@dataclass(frozen=True)
class ServiceCounts:
    desired: int
    running: int
    pending: int
    # The value of the service's PAUSE_TAG, None without one.
    pause: str | None = None


def ecs_client(
    region: str,
    endpoint_url: str | None = None,
    *,
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
) -> Any:
    """A new boto3 ECS client; the caller keeps one per (region, endpoint_url).

    `max_attempts` counts every attempt, the first included. Timeouts are short because a
    scaling round that hangs on one region would delay decisions for every other service;
    a missed round is retried on the next tick anyway.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        # Not "max_attempts": in a botocore Config that key counts retries only, so 3 there
        # means 4 calls, unlike AWS_MAX_ATTEMPTS and the AWS docs' standard mode.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    # A session of its own: boto3's default session is module state and not thread-safe.
    return boto3.session.Session().client(
        "ecs", region_name=region, endpoint_url=endpoint_url, config=config
    )


def client_error(error: BotoCoreError, service: str) -> BackendError:
    """What a failure to make a client (credentials that cannot be loaded) means for one
    service."""
    return _translate(error, service, "creating the ECS client")


def _kind_of_client_error(error: ClientError) -> tuple[Kind, str]:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _THROTTLED_CODES or status == 429:
        return "throttled", code
    if code in _DENIED_CODES:
        return "denied", code
    if code in _NOT_FOUND_CODES:
        return "not_found", code
    return "other", code


def _translate(error: Exception, service: str, action: str) -> BackendError:
    if isinstance(error, ClientError):
        kind, code = _kind_of_client_error(error)
        message = str(error.response.get("Error", {}).get("Message", "")) or code
        return BackendError(kind, service, f"{action} failed: {code}: {message}", code)
    code = type(error).__name__
    kind: Kind
    if isinstance(error, BotoConnectionError | HTTPClientError):
        kind = "unreachable"
    elif isinstance(error, NoCredentialsError | PartialCredentialsError
                    | CredentialRetrievalError):
        found = ("AWS credentials could not be loaded" if isinstance(
            error, CredentialRetrievalError) else "no AWS credentials found")
        return BackendError(
            "no_credentials", service,
            f"{action} failed: {found} ({code}): give the scaler's ECS task a task role, or "
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            code)
    else:
        kind = "other"
    return BackendError(kind, service, f"{action} failed: {code}: {error}", code)


_T = TypeVar("_T")


def _call(service: str, action: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except (ClientError, BotoCoreError) as exc:
        # `from None`: the original exception's text may hold what _scrub removes, and a
        # logged traceback would print it. `code` keeps what is needed to debug.
        raise _translate(exc, service, action) from None


def _counts_of(described: dict[str, Any], name: str) -> ServiceCounts:
    status = described.get("status", "")
    if status != "ACTIVE":
        # An INACTIVE (deleted) or DRAINING service still answers DescribeServices, but
        # scaling it is pointless: to the scaler it is gone.
        raise BackendError("not_found", name, f"service status is {status or 'unknown'}", status)
    tags = described.get("tags") or []
    pause = next((str(t.get("value", "")) for t in tags
                  if isinstance(t, dict) and t.get("key") == PAUSE_TAG), None)
    return ServiceCounts(
        desired=int(described.get("desiredCount", 0)),
        running=int(described.get("runningCount", 0)),
        pending=int(described.get("pendingCount", 0)),
        pause=pause,
    )


def _failure_error(failure: dict[str, Any], name: str) -> BackendError:
    reason = str(failure.get("reason", ""))
    detail = str(failure.get("detail", ""))
    text = f"DescribeServices: {reason or 'failure'}" + (f" ({detail})" if detail else "")
    kind: Kind = "not_found" if reason == "MISSING" else "other"
    return BackendError(kind, name, text, reason)


def _short_name(service_or_arn: str) -> str:
    # Services may be given as names or ARNs; ARNs end in the service name in both the old
    # (service/name) and the new (service/cluster/name) format.
    return service_or_arn.rsplit("/", 1)[-1]


class EcsService:
    """One ECS service, addressed by cluster and service (names or ARNs)."""

    def __init__(self, client: Any, cluster: str, service: str) -> None:
        self._client = client
        self.cluster = cluster
        self.service = service

    @property
    def name(self) -> str:
        return f"{self.cluster}/{self.service}"

    def __repr__(self) -> str:
        return f"EcsService({self.name!r})"

    def counts(self) -> ServiceCounts:
        """Desired, running and pending task counts, from one DescribeServices call."""
        result = describe_many(self._client, self.cluster, [self.service])[self.service]
        if isinstance(result, BackendError):
            raise result
        return result

    def set_desired(self, count: int) -> None:
        """Send UpdateService(desiredCount=count), nothing more.

        It does not read the current count first and does not skip a no-op: the caller
        already holds fresh counts, decides whether a change is due, and records it. ECS
        treats an unchanged desiredCount as a harmless no-op, but it still costs an API call
        against the UpdateService rate limit.
        """
        if count < 0:
            raise ValueError(f"{self.name}: desired count must be >= 0, got {count}")
        response = _call(
            self.name,
            "UpdateService",
            lambda: self._client.update_service(
                cluster=self.cluster, service=self.service, desiredCount=count
            ),
        )
        # Real ECS refuses a deleted service with ServiceNotActiveException; moto accepts
        # the update, so the returned status is checked to make both behave the same.
        status = response.get("service", {}).get("status", "ACTIVE")
        if status != "ACTIVE":
            raise BackendError("not_found", self.name, f"service status is {status}", status)


def describe_many(
    client: Any, cluster: str, services: Sequence[str], *, concurrency: int = 1
) -> dict[str, ServiceCounts | BackendError]:
    """Counts for many services of one cluster, in DescribeServices calls of 10.

    The result maps each requested name (as given) to its counts or to the BackendError
    for that service alone, so one missing service does not hide the others. When a whole
    call fails for a reason that would fail the next calls too (throttled, denied, cluster
    missing, unreachable), the services of calls not yet made get that error without a
    call: hammering a throttled or unreachable API only makes the next round worse.
    `concurrency` calls are in flight at once (each is a round trip of 50-150 ms to AWS).
    """
    wanted = list(dict.fromkeys(services))
    batches = [wanted[i : i + DESCRIBE_BATCH] for i in range(0, len(wanted), DESCRIBE_BATCH)]
    stopped: list[BackendError] = []  # the first whole-call failure that stops the rest

    def marked(error: BackendError, batch: list[str]) -> dict[str, ServiceCounts | BackendError]:
        return {s: BackendError(error.kind, f"{cluster}/{s}", error.detail, error.code)
                for s in batch}

    def describe(batch: list[str]) -> dict[str, ServiceCounts | BackendError]:
        if stopped:
            return marked(stopped[0], batch)
        try:
            response = _call(
                f"{cluster}/{batch[0]}",
                "DescribeServices",
                lambda: client.describe_services(cluster=cluster, services=batch,
                                                 include=["TAGS"]),
            )
        except BackendError as error:
            if error.kind != "other":
                stopped.append(error)
            return marked(error, batch)
        return _described(response, cluster, batch)

    results: dict[str, ServiceCounts | BackendError] = {}
    if concurrency <= 1 or len(batches) <= 1:
        for batch in batches:
            results.update(describe(batch))
        return results
    with ThreadPoolExecutor(min(concurrency, len(batches)),
                            thread_name_prefix="describe") as pool:
        for found in pool.map(describe, batches):
            results.update(found)
    return {s: results[s] for s in wanted}


def _described(
    response: dict[str, Any], cluster: str, batch: Sequence[str]
) -> dict[str, ServiceCounts | BackendError]:
    described = {d.get("serviceName", ""): d for d in response.get("services", [])}
    failed = {_short_name(str(f.get("arn", ""))): f for f in response.get("failures", [])}
    results: dict[str, ServiceCounts | BackendError] = {}
    for service in batch:
        name = f"{cluster}/{service}"
        short = _short_name(service)
        try:
            if short in described:
                results[service] = _counts_of(described[short], name)
            elif short in failed:
                results[service] = _failure_error(failed[short], name)
            else:
                results[service] = BackendError(
                    "other", name, "DescribeServices answered neither counts nor a failure"
                )
        except BackendError as error:
            results[service] = error
    return results
