"""ECS cluster and service names and ARNs: which are valid, and which name one service.

A service may be given by name or by ARN, old (`service/name`) or new
(`service/cluster/name`) format, and its cluster by name or ARN: all of them name the
same service when region, cluster name and service name agree. Two services of a
config doing so would fight over its desired count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9_-]{1,255}"
NAME = re.compile(rf"^{_NAME}$")
_ARN = r"^arn:aws[a-z-]*:ecs:(?P<region>[a-z0-9-]+):\d{12}:"
CLUSTER_ARN = re.compile(rf"{_ARN}cluster/(?P<cluster>{_NAME})$")
SERVICE_ARN = re.compile(rf"{_ARN}service/(?:(?P<cluster>{_NAME})/)?(?P<service>{_NAME})$")


# What boto3 accepts as a region (a DNS label, not all digits): anything else fails when
# the client is made.
REGION = re.compile(r"^(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Name:
    """A cluster or service as given: its short name, and what its ARN says, if one."""

    name: str
    region: str | None = None
    cluster: str | None = None  # a new-format service ARN's cluster


def cluster(text: str) -> Name | None:
    """The cluster `text` names, or None when it is neither a cluster name nor its ARN."""
    if NAME.match(text):
        return Name(text)
    match = CLUSTER_ARN.match(text)
    return Name(match["cluster"], match["region"]) if match else None


def service(text: str) -> Name | None:
    """The service `text` names, or None when it is neither a service name nor its ARN."""
    if NAME.match(text):
        return Name(text)
    match = SERVICE_ARN.match(text)
    return Name(match["service"], match["region"], match["cluster"]) if match else None


def target(cluster_text: str, service_text: str, region: str,
           endpoint_url: str | None) -> tuple[str, str, str, str]:
    """What tells one ECS service from another: endpoint, region, cluster and service names.

    Both texts must be valid (cluster() and service() not None).
    """
    found_cluster, found_service = cluster(cluster_text), service(service_text)
    assert found_cluster is not None and found_service is not None
    return ((endpoint_url or "").rstrip("/"), region, found_cluster.name, found_service.name)
