"""ECS cluster and service names and ARNs: which are valid, and which name one service.

A service may be given by name or by ARN, old (`service/name`) or new
(`service/cluster/name`) format, and its cluster by name or ARN: all of them name the
same service when endpoint, region, cluster name and service name agree (no endpoint and
ECS's own for the region are one endpoint). Two services of a config doing so would
fight over its desired count.

Every pattern matches the whole text (fullmatch): with `$`, "name\n" would pass.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_NAME = r"[A-Za-z0-9_-]{1,255}"
NAME = re.compile(_NAME)
_ARN = r"arn:aws[a-z-]*:ecs:(?P<region>[a-z0-9-]+):\d{12}:"
CLUSTER_ARN = re.compile(rf"{_ARN}cluster/(?P<cluster>{_NAME})")
SERVICE_ARN = re.compile(rf"{_ARN}service/(?:(?P<cluster>{_NAME})/)?(?P<service>{_NAME})")


# What boto3 accepts as a region (a DNS label, not all digits): anything else fails when
# the client is made.
REGION = re.compile(r"(?![0-9]+\Z)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")
# An endpoint URL: http(s), a host, no space or control character...
ENDPOINT = re.compile(r"https?://[^/\s\x00-\x1f\x7f]+(/[^\s\x00-\x1f\x7f]*)?", re.IGNORECASE)
# ...whose host botocore takes: DNS labels (or an IPv6 address).
_HOST = re.compile(r"((?!-)[A-Z0-9-]{1,63}(?<!-)\.)*(?!-)[A-Z0-9-]{1,63}(?<!-)", re.IGNORECASE)


def region(text: str) -> bool:
    """Whether `text` is a region boto3 takes."""
    return REGION.fullmatch(text) is not None


def endpoint(text: str) -> bool:
    """Whether `text` is an endpoint URL botocore takes (http or https, any case)."""
    if ENDPOINT.fullmatch(text) is None:
        return False
    try:
        parts = urlsplit(text)
        _ = parts.port  # a port that is no number raises
    except ValueError:
        return False
    host = (parts.hostname or "").removesuffix(".")
    if ":" in host:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    return len(host) <= 255 and _HOST.fullmatch(host) is not None


@dataclass(frozen=True)
class Name:
    """A cluster or service as given: its short name, and what its ARN says, if one."""

    name: str
    region: str | None = None
    cluster: str | None = None  # a new-format service ARN's cluster


def cluster(text: str) -> Name | None:
    """The cluster `text` names, or None when it is neither a cluster name nor its ARN."""
    if NAME.fullmatch(text):
        return Name(text)
    match = CLUSTER_ARN.fullmatch(text)
    return Name(match["cluster"], match["region"]) if match else None


def service(text: str) -> Name | None:
    """The service `text` names, or None when it is neither a service name nor its ARN."""
    if NAME.fullmatch(text):
        return Name(text)
    match = SERVICE_ARN.fullmatch(text)
    return Name(match["service"], match["region"], match["cluster"]) if match else None


def target(cluster_text: str, service_text: str, region: str,
           endpoint_url: str | None) -> tuple[str, str, str, str]:
    """What tells one ECS service from another: endpoint, region, cluster and service names.

    Both texts must be valid (cluster() and service() not None).
    """
    found_cluster, found_service = cluster(cluster_text), service(service_text)
    assert found_cluster is not None and found_service is not None
    # DNS names are not case-sensitive: EU-WEST-1 is eu-west-1.
    region = region.lower()
    return (_endpoint_key(endpoint_url, region), region, found_cluster.name, found_service.name)


def _endpoint_key(url: str | None, region: str) -> str:
    """What tells one endpoint from another: "" for ECS's own in `region` (what boto3
    uses without one), else scheme, host, port and path, compared without case where
    URLs have none."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if port == {"https": 443, "http": 80}.get(scheme):
        port = None
    path = parts.path.rstrip("/")
    suffix = ".amazonaws.com.cn" if region.startswith("cn-") else ".amazonaws.com"
    if scheme == "https" and port is None and not path and host in (
            f"ecs.{region}{suffix}", f"ecs-fips.{region}{suffix}"):
        return ""
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
