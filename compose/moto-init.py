"""Creates, in moto_server, the ECS cluster and worker services the compose stack's scaler scales.

    python compose/moto-init.py [--endpoint-url URL] [--region REGION] [--cluster NAME]
                                [--service NAME ...] [--timeout S]

Waits for moto_server to answer, creates the cluster, registers one task definition per
service and creates each service with desiredCount 1. Idempotent: whatever exists already
is left as it is (including a desired count the scaler has changed since), so running it
again, or restarting the stack against a moto that kept its state, changes nothing.
It needs AWS credentials, which moto accepts whatever they are (docker-compose.yml sets
dummy ones).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

DEFAULT_SERVICES = ("demo-images", "demo-emails")


def _client(endpoint_url: str, region: str) -> Any:
    # Short timeouts and no retries: the wait loop below is the retry, with its own deadline.
    config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                    connect_timeout=2, read_timeout=5)
    return boto3.session.Session().client("ecs", region_name=region,
                                          endpoint_url=endpoint_url, config=config)


def wait_for_moto(client: Any, timeout: float) -> None:
    """Poll until moto answers an ECS call; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_clusters()
            return
        except BotoCoreError as error:  # not listening yet, or closing connections
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"moto_server did not answer within {timeout:g}s: {error}") from None
            time.sleep(0.5)


def ensure_cluster(client: Any, cluster: str) -> bool:
    """Create the cluster unless it is there; True if it was created."""
    found = client.describe_clusters(clusters=[cluster])["clusters"]
    if any(c["clusterName"] == cluster and c["status"] == "ACTIVE" for c in found):
        return False
    client.create_cluster(clusterName=cluster)
    return True


def _queue(service: str) -> str:
    # demo-images consumes the queue `images`: the names the scaler config uses.
    return service.removeprefix("demo-")


def ensure_task_definition(client: Any, family: str, queue: str) -> bool:
    """Register `family` unless a revision exists; True if one was registered.

    Registering again would add a revision each run; the definition only documents
    what the worker would run, since moto starts nothing.
    """
    try:
        client.describe_task_definition(taskDefinition=family)
        return False
    except ClientError:
        pass
    client.register_task_definition(
        family=family,
        containerDefinitions=[{
            "name": "worker",
            "image": "taskqueue-autoscaler",
            "memory": 512,
            "essential": True,
            "entryPoint": ["celery"],
            "command": ["-A", "demo.app", "worker", "-Q", queue, "-c", "4", "-P", "threads",
                        "-E", "--without-gossip", "--without-mingle"],
            "environment": [{"name": "DEMO_BROKER_URL", "value": "redis://redis:6379/0"}],
        }],
    )
    return True


def ensure_services(client: Any, cluster: str, services: Sequence[str]) -> dict[str, int]:
    """Create each missing service with desiredCount 1; return every service's desired count."""
    described = client.describe_services(cluster=cluster, services=list(services))["services"]
    # A deleted service stays described as INACTIVE for a while; it can be created again.
    active = {s["serviceName"]: int(s["desiredCount"]) for s in described
              if s["status"] == "ACTIVE"}
    counts: dict[str, int] = {}
    for name in services:
        if name in active:
            counts[name] = active[name]
            print(f"service {cluster}/{name} exists (desiredCount {active[name]}): left as it is")
            continue
        if ensure_task_definition(client, name, _queue(name)):
            print(f"registered task definition {name}")
        client.create_service(cluster=cluster, serviceName=name, taskDefinition=name,
                              desiredCount=1)
        counts[name] = 1
        print(f"created service {cluster}/{name} (desiredCount 1)")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moto-init.py", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint-url",
                        default=os.environ.get("MOTO_ENDPOINT_URL", "http://moto:5000"))
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--cluster", default="demo")
    parser.add_argument("--service", action="append", dest="services",
                        help=f"a service to create (repeatable; default: {DEFAULT_SERVICES})")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for moto_server to answer")
    args = parser.parse_args(argv)
    client = _client(args.endpoint_url, args.region)
    try:
        wait_for_moto(client, args.timeout)
        if ensure_cluster(client, args.cluster):
            print(f"created cluster {args.cluster}")
        ensure_services(client, args.cluster, args.services or DEFAULT_SERVICES)
    except (TimeoutError, BotoCoreError, ClientError) as error:
        print(f"moto-init: {args.endpoint_url}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
