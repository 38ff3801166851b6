"""docker-compose.yml and everything it mounts, checked without a Docker engine.

`docker-compose config` (Debian's docker-compose 1.29, which make test installs) parses
and validates the file against the Compose schema and prints it normalized: paths made
absolute, ports and volumes spelled out. The tests read that normalized form, so they
check what Compose itself understood, not what the YAML looks like. The configs the
containers load are checked with the tools that load them (promtool, amtool,
taskqueue-scaler), and compose/moto-init.py runs against a real moto server.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from moto.server import ThreadedMotoServer

from scaler.config import load_config
from tests.services import free_port, require

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCALER = Path(sys.executable).parent / "taskqueue-scaler"
MOTO_INIT = ROOT / "compose" / "moto-init.py"

# What the issue asks for, and the README's table of the stack.
SERVICES = {"redis", "producer", "worker-images", "worker-emails", "exporter", "prometheus",
            "alertmanager", "grafana", "moto", "moto-init", "scaler"}
PUBLISHED = {"redis": [6379], "exporter": [9808], "scaler": [9809], "prometheus": [9090],
             "alertmanager": [9093], "grafana": [3000], "moto": [5000]}
OUR_IMAGE = {"producer", "worker-images", "worker-emails", "exporter", "moto-init", "scaler"}


PORT_VARIABLES = {"redis": "REDIS_PORT", "exporter": "EXPORTER_PORT", "scaler": "SCALER_PORT",
                  "prometheus": "PROMETHEUS_PORT", "alertmanager": "ALERTMANAGER_PORT",
                  "grafana": "GRAFANA_PORT", "moto": "MOTO_PORT"}


def _compose(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    # Variables that would point docker-compose at another file or project, or move a
    # published port, are dropped: the defaults are under test.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and k not in PORT_VARIABLES.values()}
    env.update(variables)
    return subprocess.run([require("docker-compose"), "-f", str(COMPOSE_FILE), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as docker-compose normalized it."""
    quiet = _compose("config", "-q")
    assert quiet.returncode == 0, quiet.stderr
    normalized = _compose("config")
    assert normalized.returncode == 0, normalized.stderr
    return yaml.safe_load(normalized.stdout)


def _published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) pairs; docker-compose 1.29 prints either form."""
    pairs = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.append((int(port["published"]), int(port["target"])))
        else:  # "127.0.0.1:9808:9808/tcp"
            *_, host, container = port.split("/")[0].split(":")
            pairs.append((int(host), int(container)))
    return pairs


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount, in either normalized form."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((Path(volume["source"]), volume["target"]))
        else:  # "/abs/host:/container:ro"; a named volume has no slash before the colon
            source, target = volume.split(":")[:2]
            if source.startswith(("/", ".")):
                mounts.append((Path(source), target))
    return mounts


def test_every_service_of_the_issue_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_builds_point_at_a_dockerfile_in_the_repo(compose: dict[str, Any]) -> None:
    built = {}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        build = service["build"]
        context = Path(build["context"] if isinstance(build, dict) else build)
        dockerfile = context / (build.get("dockerfile", "Dockerfile")
                                if isinstance(build, dict) else "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        assert context.resolve().is_relative_to(ROOT), f"{name}: {context}"
        built[name] = service["image"]
    # One image, built once under one name, for every service of ours.
    assert set(built) == OUR_IMAGE
    assert set(built.values()) == {"taskqueue-autoscaler:dev"}


def test_other_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in OUR_IMAGE:
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)*", image), f"{name}: {image} is not pinned"


def test_bind_mounts_exist_in_the_repo(compose: dict[str, Any]) -> None:
    mounted = {}
    for name, service in compose["services"].items():
        for host, target in _bind_mounts(service):
            assert host.resolve().is_relative_to(ROOT), f"{name}: {host} is outside the repo"
            assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"
            mounted[(name, target)] = host.relative_to(ROOT).as_posix()
    assert mounted == {
        ("prometheus", "/etc/prometheus/prometheus.yml"): "compose/prometheus.yml",
        ("prometheus", "/etc/prometheus/alerts"): "alerts",
        ("alertmanager", "/etc/alertmanager/alertmanager.yml"): "compose/alertmanager.yml",
        ("grafana", "/etc/grafana/provisioning"): "grafana/provisioning",
        ("grafana", "/var/lib/grafana/dashboards"): "grafana/dashboards",
        ("moto-init", "/etc/taskqueue/moto-init.py"): "compose/moto-init.py",
        ("scaler", "/etc/taskqueue/scaler.yml"): "compose/scaler.yml",
    }


def test_published_ports_are_the_documented_ones(compose: dict[str, Any]) -> None:
    published = {name: [host for host, _ in _published(service)]
                 for name, service in compose["services"].items() if _published(service)}
    assert published == PUBLISHED
    # Each is published on the port the container listens on, so the URLs in the README
    # are also the ones the services use among themselves.
    for name, service in compose["services"].items():
        for host, container in _published(service):
            assert host == container, name
    hosts = [port for ports in published.values() for port in ports]
    assert len(hosts) == len(set(hosts))


def test_every_published_port_can_be_moved_with_a_variable() -> None:
    # A Redis or Prometheus already on the host must not stop the stack from starting.
    moved = {variable: str(20000 + i) for i, variable in enumerate(PORT_VARIABLES.values())}
    result = _compose("config", **moved)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name, variable in PORT_VARIABLES.items():
        assert _published(services[name]) == [(int(moved[variable]), PUBLISHED[name][0])], name


def test_the_readme_documents_every_service_and_port() -> None:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## The docker-compose stack\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "README.md has no section '## The docker-compose stack'"
    section = match.group(1)
    for name in SERVICES:
        assert f"`{name}`" in section, name
    for ports in PUBLISHED.values():
        for port in ports:
            assert str(port) in section, port


def test_depends_on_conditions_can_be_met(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            condition = how["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"
            elif condition == "service_completed_successfully":
                # A one-shot: restarting it would keep the dependent waiting.
                assert services[dependency].get("restart", "no") == "no", dependency
    scaler = services["scaler"]["depends_on"]
    assert scaler["moto-init"] == {"condition": "service_completed_successfully"}
    assert scaler["prometheus"] == {"condition": "service_healthy"}


def test_our_services_run_the_right_programs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["exporter"]["entrypoint"] == ["taskqueue-exporter"]
    assert services["exporter"]["environment"]["TASKQUEUE_EXPORTER_BROKER_URL"] == \
        "redis://redis:6379/0"
    assert services["exporter"]["environment"]["TASKQUEUE_EXPORTER_QUEUE"].split() == \
        ["images", "emails"]
    assert services["scaler"]["entrypoint"] == ["taskqueue-scaler"]
    assert services["scaler"]["command"] == ["run", "--config", "/etc/taskqueue/scaler.yml"]
    assert services["producer"]["entrypoint"] == ["python", "-m", "demo.load"]
    for queue in ("images", "emails"):
        worker = services[f"worker-{queue}"]
        command = worker["entrypoint"] + worker["command"]
        assert command[:11] == ["celery", "-A", "demo.app", "worker", "-Q", queue, "-c", "4",
                                "-P", "threads", "-E"]
        assert {"--without-gossip", "--without-mingle"} <= set(command)
    for name in ("producer", "worker-images", "worker-emails"):
        assert services[name]["environment"]["DEMO_BROKER_URL"] == "redis://redis:6379/0"
    for name in ("moto-init", "scaler"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"] == "testing"
        assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    grafana = services["grafana"]["environment"]
    assert grafana["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# --- the configs the containers load ---------------------------------------------------


def _listens_on(compose: dict[str, Any], target: str) -> None:
    """`host:port` names a compose service whose container publishes or listens on port."""
    host, port = target.rsplit(":", 1)
    assert host in compose["services"], target
    containers = [container for _, container in _published(compose["services"][host])]
    assert int(port) in containers, target


def test_prometheus_scrapes_the_compose_services(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "compose" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s"
    targets = {job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
               for job in config["scrape_configs"]}
    # The alert rules in alerts/ tell the two apart by these job names.
    assert targets == {"taskqueue-exporter": ["exporter:9808"],
                       "taskqueue-scaler": ["scaler:9809"]}
    alertmanagers = [t for am in config["alerting"]["alertmanagers"]
                     for static in am["static_configs"] for t in static["targets"]]
    assert alertmanagers == ["alertmanager:9093"]
    for target in [*targets["taskqueue-exporter"], *targets["taskqueue-scaler"], *alertmanagers]:
        _listens_on(compose, target)
    # Rule files are read from where compose mounts ./alerts, and exist there.
    mounts = dict((target, host) for host, target in
                  _bind_mounts(compose["services"]["prometheus"]))
    assert config["rule_files"] == ["/etc/prometheus/alerts/recording.yml",
                                    "/etc/prometheus/alerts/alerts.yml"]
    for rule_file in config["rule_files"]:
        host = mounts["/etc/prometheus/alerts"] / Path(rule_file).name
        assert host.is_file(), f"{rule_file}: {host} does not exist"
    assert "--config.file=/etc/prometheus/prometheus.yml" in \
        compose["services"]["prometheus"]["command"]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # The rule_files paths exist only in the container: check a copy that names the
    # repository's files instead (promtool then checks those rules too).
    config = yaml.safe_load((ROOT / "compose" / "prometheus.yml").read_text())
    config["rule_files"] = [str(ROOT / "alerts" / Path(p).name) for p in config["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = subprocess.run([require("promtool"), "check", "config", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_amtool_accepts_the_alertmanager_config(compose: dict[str, Any]) -> None:
    path = ROOT / "compose" / "alertmanager.yml"
    result = subprocess.run([require("amtool"), "check-config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in \
        compose["services"]["alertmanager"]["command"]


def test_the_scaler_config_is_valid_and_points_at_moto(compose: dict[str, Any]) -> None:
    path = ROOT / "compose" / "scaler.yml"
    result = subprocess.run([str(SCALER), "check-config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok, 2 services: demo-images, demo-emails"

    config = load_config(str(path), {})
    assert config.prometheus.url == "http://prometheus:9090"
    assert config.port == 9809
    _listens_on(compose, f"scaler:{config.port}")
    _listens_on(compose, "prometheus:9090")
    for service, queue in zip(config.services, ("images", "emails"), strict=True):
        backend = service.backend
        assert (backend.cluster, backend.service, backend.endpoint_url, backend.region) == \
            ("demo", f"demo-{queue}", "http://moto:5000", "us-east-1")
        assert service.limits.min == 1
        assert [rule.match_labels for rule in service.rules] == [(("queue", queue),)] * 3
    _listens_on(compose, "moto:5000")
    # Grouped: both services send the same three queries.
    assert len({rule.query for s in config.services for rule in s.rules}) == 3


# --- the image -----------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns used here: the last matching pattern wins, and a
    pattern matches a path when it matches the path or one of its parent directories."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negated
    return ignored


def test_the_dockerfile_copies_what_exists_and_is_not_ignored() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    instructions = _dockerfile_instructions()
    sources = []
    for keyword, rest in instructions:
        if keyword in ("COPY", "ADD"):
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            sources += args[:-1]
    assert sources == ["pyproject.toml", "README.md", "exporter", "scaler", "demo"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignored(source, patterns), f"{source} is in .dockerignore"
    for left_out in ("tests", "bench", ".venv", ".git", "exporter/__pycache__"):
        assert _dockerignored(left_out, patterns), left_out
    assert ("USER", "nobody") in instructions
    assert ("ENV", "PYTHONPATH=/app") in instructions
    assert ("ENTRYPOINT", '["taskqueue-exporter"]') in instructions


# --- compose/moto-init.py --------------------------------------------------------------


@pytest.fixture
def moto(aws_env: None) -> Iterator[tuple[int, Callable[[], None]]]:
    """A free port, and a function that starts a moto server on it (stopped afterwards)."""
    port = free_port()
    servers: list[ThreadedMotoServer] = []

    def start() -> None:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        servers.append(server)

    yield port, start
    for server in servers:
        # The server's backends are this process's global moto state: leave none behind.
        requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=5)
        server.stop()


def _moto_init(port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(MOTO_INIT), "--endpoint-url", f"http://127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_moto_init_waits_for_moto_then_creates_the_services(
        moto: tuple[int, Callable[[], None]]) -> None:
    port, start_moto = moto
    # Started before the server: it must wait for it, not fail.
    first = _moto_init(port, "--timeout", "60")
    start_moto()
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 0, output
    assert "created cluster demo" in output
    assert "created service demo/demo-images (desiredCount 1)" in output
    assert "created service demo/demo-emails (desiredCount 1)" in output

    ecs = boto3.session.Session().client(
        "ecs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
    clusters = ecs.describe_clusters(clusters=["demo"])["clusters"]
    assert [(c["clusterName"], c["status"]) for c in clusters] == [("demo", "ACTIVE")]

    def services() -> dict[str, tuple[str, int]]:
        described = ecs.describe_services(
            cluster="demo", services=["demo-images", "demo-emails"])["services"]
        return {s["serviceName"]: (s["status"], s["desiredCount"]) for s in described}

    assert services() == {"demo-images": ("ACTIVE", 1), "demo-emails": ("ACTIVE", 1)}
    definition = ecs.describe_task_definition(taskDefinition="demo-emails")
    command = definition["taskDefinition"]["containerDefinitions"][0]["command"]
    assert command[:5] == ["-A", "demo.app", "worker", "-Q", "emails"]

    # Again, after the scaler has moved one service: nothing changes.
    ecs.update_service(cluster="demo", service="demo-images", desiredCount=3)
    second = _moto_init(port)
    output, _ = second.communicate(timeout=60)
    assert second.returncode == 0, output
    assert "created" not in output and "registered" not in output
    assert "service demo/demo-images exists (desiredCount 3): left as it is" in output
    assert "service demo/demo-emails exists (desiredCount 1): left as it is" in output
    assert services() == {"demo-images": ("ACTIVE", 3), "demo-emails": ("ACTIVE", 1)}
    for family in ("demo-images", "demo-emails"):
        revisions = ecs.list_task_definitions(familyPrefix=family)["taskDefinitionArns"]
        assert len(revisions) == 1, revisions


def test_moto_init_gives_up_when_moto_never_answers(
        moto: tuple[int, Callable[[], None]]) -> None:
    port, _ = moto  # never started
    process = _moto_init(port, "--timeout", "1")
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert output.startswith(
        f"moto-init: http://127.0.0.1:{port}: moto_server did not answer within 1s: ")
