"""deploy/ecs/: the task definitions pass the ECS API's own validation, the IAM policies are
well formed and least-privilege, and every command and variable in them is one the real
CLIs understand. Placeholders (`<NAME>`) are filled with sample values first."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from moto import mock_aws
from prometheus_client import CollectorRegistry

from exporter import server as http_server
from exporter.config import ENV_PREFIX, build_parser, parse_config
from scaler.config import load_config
from scaler.config import parse_config as parse_scaler_config
from scaler.evaluate import queries_of
from scaler.lease import DynamoDbLease, LeaseConfig, dynamodb_client
from tests.promql_names import unknown_names

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "ecs"
IAM = DEPLOY / "iam"
SCALER_SERVICE = DEPLOY / "scaler-service.json"
README = DEPLOY / "README.md"
TASK_DEFINITIONS = {
    "exporter": DEPLOY / "exporter-task-definition.json",
    "scaler": DEPLOY / "scaler-task-definition.json",
    "worker": DEPLOY / "worker-task-definition.json",
}
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")
# Values of the right shape for each API: moto and botocore reject a malformed ARN or image.
SAMPLE = {
    "ACCOUNT_ID": "123456789012",
    "REGION": "eu-west-1",
    "CLUSTER": "production",
    "ECR_REPO": "taskqueue-autoscaler",
    "EXPORTER_TAG": "0.1.0",
    "SCALER_TAG": "0.1.0-config-1",
    "WORKER_ECR_REPO": "myapp",
    "WORKER_TAG": "2024-06-01.1",
    "CELERY_APP": "myapp",
    "QUEUE": "default",
    "BROKER_SECRET_ARN":
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:taskqueue/broker-url-AbCdEf",
}
# user:password@ in a URL: a broker password written into a file instead of a secret.
PASSWORD_IN_URL = re.compile(r"://[^@/\s]*:[^@/\s]*@")
# Fargate's valid task sizes for the CPU values used here (CPU units -> MiB).
FARGATE_MEMORY = {"256": {512, 1024, 2048}, "512": {1024, 2048, 3072, 4096},
                  "1024": set(range(2048, 8193, 1024))}
FARGATE_MAX_STOP_TIMEOUT = 120
PORTS = {"exporter": 9808, "scaler": 9809}
SCALER_CONFIG_IN_IMAGE = "/etc/taskqueue/scaler.yml"
ROLES = {"execution": "taskqueue-execution", "scaler": "taskqueue-scaler-task",
         "worker": "celery-worker-task"}


def render(text: str, values: dict[str, str] = SAMPLE) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def load(path: Path) -> Any:
    return json.loads(render(path.read_text()))


def container(name: str) -> dict[str, Any]:
    (only,) = load(TASK_DEFINITIONS[name])["containerDefinitions"]
    return only


def statements(path: Path) -> list[dict[str, Any]]:
    return load(path)["Statement"]


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def json_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.json"))


@pytest.fixture
def ecs_api(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ecs", region_name=SAMPLE["REGION"])


# --- every file ------------------------------------------------------------------------


def test_the_directory_has_every_file_the_issue_names():
    names = {str(p.relative_to(DEPLOY)) for p in json_files()}
    assert names >= {
        "exporter-task-definition.json", "scaler-task-definition.json",
        "worker-task-definition.json", "iam/scaler-task-role-policy.json",
        "iam/worker-task-role-policy.json", "iam/task-execution-role-policy.json",
        "iam/ecs-tasks-trust-policy.json",
    }


@pytest.mark.parametrize("path", json_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_json_file_parses_before_and_after_filling_the_placeholders(path: Path):
    json.loads(path.read_text())
    json.loads(render(path.read_text()))


def test_every_placeholder_is_documented_in_the_readme_and_nothing_else_is():
    # One convention, `<NAME>`, everywhere: the README's table lists exactly those used.
    used = {name for p in deploy_files() if p != README
            for name in PLACEHOLDER.findall(p.read_text())}
    documented = set(re.findall(r"^\| `<([A-Z][A-Z0-9_]*)>` \|", README.read_text(), re.M))
    assert used == documented == set(SAMPLE)
    # The README's prose names the convention itself, `<NAME>`, and no other placeholder.
    assert set(PLACEHOLDER.findall(README.read_text())) == set(SAMPLE) | {"NAME"}
    # The README's render() fills each one.
    for name in SAMPLE:
        assert f"s|<{name}>|" in README.read_text(), name


def test_no_password_in_any_file():
    for path in deploy_files():
        if path != README:
            assert not PASSWORD_IN_URL.search(render(path.read_text())), path
    # The README shows the URL only as what goes into the secret, through a file.
    shown = PASSWORD_IN_URL.findall(README.read_text())
    assert len(shown) == 1


def test_the_readme_refers_only_to_files_that_exist():
    for ref in set(re.findall(r"deploy/ecs/[\w./-]+", README.read_text())):
        assert (ROOT / ref.rstrip(".")).exists(), ref
    for ref in set(re.findall(r"\]\(([\w./-]+)\)", README.read_text())):
        assert (DEPLOY / ref).exists(), ref


# --- task definitions --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TASK_DEFINITIONS))
def test_the_task_definition_registers_through_the_ecs_api(name: str, ecs_api: Any):
    # botocore validates every key and type against ECS's API model before moto sees the
    # request: an unknown key or a string where a number belongs fails here.
    definition = load(TASK_DEFINITIONS[name])
    registered = ecs_api.register_task_definition(**definition)["taskDefinition"]
    assert registered["family"] == definition["family"]
    assert registered["revision"] == 1


@pytest.mark.parametrize("name", sorted(TASK_DEFINITIONS))
def test_the_task_definition_is_a_small_fargate_task(name: str):
    definition = load(TASK_DEFINITIONS[name])
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["networkMode"] == "awsvpc"
    assert int(definition["memory"]) in FARGATE_MEMORY[definition["cpu"]]
    assert definition["executionRoleArn"].endswith(f":role/{ROLES['execution']}")
    spec = container(name)
    assert spec["essential"] is True
    assert 0 < spec["stopTimeout"] <= FARGATE_MAX_STOP_TIMEOUT


@pytest.mark.parametrize("name", sorted(TASK_DEFINITIONS))
def test_containers_log_to_their_log_group(name: str):
    logging = container(name)["logConfiguration"]
    assert logging["logDriver"] == "awslogs"
    options = logging["options"]
    assert options["awslogs-region"] == SAMPLE["REGION"]
    assert options["awslogs-stream-prefix"]
    # The execution role may write exactly there, and the README creates the group.
    granted = {r for s in statements(IAM / "task-execution-role-policy.json")
               for r in as_list(s["Resource"]) if ":logs:" in r}
    assert (f"arn:aws:logs:{SAMPLE['REGION']}:{SAMPLE['ACCOUNT_ID']}:log-group:"
            f"{options['awslogs-group']}:*") in granted
    assert options["awslogs-group"] in README.read_text()


@pytest.mark.parametrize("name", sorted(TASK_DEFINITIONS))
def test_no_plain_text_password_in_the_environment(name: str):
    for variable in container(name).get("environment", []):
        assert not PASSWORD_IN_URL.search(variable["value"]), variable["name"]
        assert "BROKER_URL" not in variable["name"], "the broker URL belongs in secrets"


@pytest.mark.parametrize(("name", "variable"), [("exporter", "TASKQUEUE_EXPORTER_BROKER_URL"),
                                                ("worker", "CELERY_BROKER_URL")])
def test_the_broker_url_comes_from_the_secret_the_execution_role_may_read(
        name: str, variable: str):
    secrets = {s["name"]: s["valueFrom"] for s in container(name)["secrets"]}
    assert secrets[variable] == SAMPLE["BROKER_SECRET_ARN"]
    readable = {r for s in statements(IAM / "task-execution-role-policy.json")
                if "secretsmanager:GetSecretValue" in as_list(s["Action"])
                for r in as_list(s["Resource"])}
    assert readable == {SAMPLE["BROKER_SECRET_ARN"]}


@pytest.mark.parametrize("name", sorted(PORTS))
def test_port_and_health_check_use_the_endpoint_of_the_process(name: str):
    spec = container(name)
    assert spec["portMappings"] == [{"containerPort": PORTS[name], "protocol": "tcp"}]
    check = spec["healthCheck"]
    # python:3.11-slim has no curl: the image's Python makes the request.
    assert check["command"][:3] == ["CMD", "python", "-c"]
    assert f"http://127.0.0.1:{PORTS[name]}/healthz" in check["command"][3]
    assert check["startPeriod"] > 0 and check["timeout"] < check["interval"]


@pytest.mark.parametrize("name", sorted(PORTS))
def test_the_health_check_command_fails_on_503_and_passes_on_200(name: str):
    # Run the exact script against the real /healthz handler on a free port.
    problem: list[str | None] = [None]
    httpd = http_server.bind("127.0.0.1", 0, CollectorRegistry(), health=lambda: problem[0])
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        script = container(name)["healthCheck"]["command"][3].replace(
            f":{PORTS[name]}/", f":{httpd.server_port}/")

        def check() -> int:
            return subprocess.run([sys.executable, "-c", script], capture_output=True,
                                  timeout=30).returncode

        assert check() == 0
        problem[0] = "the last evaluation cycle finished 200s ago"
        assert check() != 0
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_exporter_environment_is_flags_the_exporter_knows(tmp_path: Path):
    spec = container("exporter")
    assert spec["entryPoint"] == ["taskqueue-exporter"]
    assert console_scripts()["taskqueue-exporter"] == "exporter.cli:main"
    known = {ENV_PREFIX + a.dest.upper() for a in build_parser()._actions if a.option_strings}
    names = [v["name"] for v in spec["environment"]] + [s["name"] for s in spec["secrets"]]
    assert set(names) <= known
    # The same parsing the exporter does at start-up, with a password-free stand-in URL.
    environ = {v["name"]: v["value"] for v in spec["environment"]}
    environ["TASKQUEUE_EXPORTER_BROKER_URL"] = "rediss://redis.example:6379/0"
    config = parse_config([], environ)
    assert config.port == PORTS["exporter"]
    # Every queue the scaler scales is exported even while empty.
    scaled = {s.backend.service.removeprefix("celery-worker-")
              for s in scaler_config(tmp_path).services}
    assert set(config.celery_queues) == scaled


def test_the_scaler_command_is_one_the_scaler_cli_accepts():
    spec = container("scaler")
    assert spec["entryPoint"] == ["taskqueue-scaler"]
    assert console_scripts()["taskqueue-scaler"] == "scaler.cli:main"
    command = spec["command"]
    assert command[0] == "run"
    help_text = subprocess.run([sys.executable, "-m", "scaler.cli", "run", "--help"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    flags = [word for word in command if word.startswith("-")]
    assert flags == ["--config"]
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", help_text), flag
    assert command[command.index("--config") + 1] == SCALER_CONFIG_IN_IMAGE
    assert f"COPY scaler.yml {SCALER_CONFIG_IN_IMAGE}" in (DEPLOY / "scaler.Dockerfile").read_text()
    # The README's dry run uses flags that exist too.
    for flag in ("--dry-run", "--once", "--log-level"):
        assert flag in README.read_text() and re.search(rf"{flag}\b", help_text), flag


def test_the_scaler_uses_its_own_task_role_and_the_worker_its_own():
    assert load(TASK_DEFINITIONS["scaler"])["taskRoleArn"].endswith(f":role/{ROLES['scaler']}")
    assert load(TASK_DEFINITIONS["worker"])["taskRoleArn"].endswith(f":role/{ROLES['worker']}")
    # The exporter reads Redis only: no AWS API, no task role.
    assert "taskRoleArn" not in load(TASK_DEFINITIONS["exporter"])
    # The README creates each role under that name.
    for role in ROLES.values():
        assert f"--role-name {role}" in README.read_text(), role


def test_the_worker_sends_events_prefetches_one_and_finishes_its_tasks_on_stop():
    spec = container("worker")
    command = spec["command"]
    assert command[:3] == ["celery", "-A", SAMPLE["CELERY_APP"]]
    assert command[3] == "worker"
    assert "-E" in command
    assert command[command.index("-Q") + 1] == SAMPLE["QUEUE"]
    assert command[command.index("--prefetch-multiplier") + 1] == "1"
    assert spec["stopTimeout"] == FARGATE_MAX_STOP_TIMEOUT
    # Every flag is one this Celery's worker accepts.
    help_text = subprocess.run([sys.executable, "-m", "celery", "worker", "--help"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    for flag in (w for w in command[4:] if w.startswith("-")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", help_text), flag


def test_the_baked_scaler_config_is_valid_and_names_only_permitted_services(tmp_path: Path):
    config = scaler_config(tmp_path)
    assert config.port == PORTS["scaler"]
    permitted = {r for s in statements(IAM / "scaler-task-role-policy.json")
                 for r in as_list(s["Resource"])}
    for service in config.services:
        backend = service.backend
        assert backend.region == SAMPLE["REGION"] and backend.cluster == SAMPLE["CLUSTER"]
        assert (f"arn:aws:ecs:{SAMPLE['REGION']}:{SAMPLE['ACCOUNT_ID']}:service/"
                f"{backend.cluster}/{backend.service}") in permitted
    for service in config.services:
        for query in queries_of(service):
            assert unknown_names(query) == set(), (service.name, query)


# --- the scaler's service -------------------------------------------------------------


def readme_commands() -> list[list[str]]:
    """Every command of the README's sh blocks, continuation lines joined, as argv."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quoted string goes on over the next line
                continue
            if words:
                commands.append(words)
            pending = ""
    return commands


def test_the_scaler_service_runs_one_task_and_never_two_during_a_deploy(aws_env: None):
    service = load(SCALER_SERVICE)
    assert service["desiredCount"] == 1
    # ECS's rolling deployments honour these two; CODE_DEPLOY or EXTERNAL would not.
    assert service["deploymentController"] == {"type": "ECS"}
    assert service["deploymentConfiguration"] == {"maximumPercent": 100,
                                                  "minimumHealthyPercent": 0}
    assert service["taskDefinition"] == load(TASK_DEFINITIONS["scaler"])["family"]
    sent: list[dict[str, Any]] = []
    with mock_aws():
        region = SAMPLE["REGION"]
        ec2 = boto3.client("ec2", region_name=region)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="tasks", Description="tasks",
                                          VpcId=vpc)["GroupId"]
        ecs = boto3.client("ecs", region_name=region)
        ecs.create_cluster(clusterName=SAMPLE["CLUSTER"])
        ecs.register_task_definition(**load(TASK_DEFINITIONS["scaler"]))
        ecs.meta.events.register("before-send.ecs.CreateService",
                                 lambda request, **_: sent.append(json.loads(request.body)))
        # As the README's command: the file, plus the network of the README's $NETWORK.
        # botocore validates every key and type against ECS's API model before sending.
        ecs.create_service(**service, networkConfiguration={"awsvpcConfiguration": {
            "subnets": [subnet], "securityGroups": [group], "assignPublicIp": "DISABLED"}})
        (created,) = ecs.describe_services(cluster=SAMPLE["CLUSTER"],
                                           services=[service["serviceName"]])["services"]
    assert created["desiredCount"] == 1 and created["launchType"] == "FARGATE"
    # moto does not keep deploymentConfiguration: what ECS receives is checked on the wire.
    (request,) = sent
    assert request["deploymentConfiguration"] == {"maximumPercent": 100,
                                                  "minimumHealthyPercent": 0}
    assert request["desiredCount"] == 1


def test_the_readme_creates_the_scaler_service_from_the_file_without_overriding_it():
    rendered = f'render deploy/ecs/{SCALER_SERVICE.name} > "$OUT/{SCALER_SERVICE.name}"'
    assert rendered in README.read_text()
    (command,) = [c for c in readme_commands()
                  if c[:3] == ["aws", "ecs", "create-service"]
                  and f"file://$OUT/{SCALER_SERVICE.name}" in c]
    options = {word for word in command if word.startswith("--")}
    # The network and Cloud Map only: a --desired-count or --deployment-configuration here
    # would override the file's.
    assert options == {"--cli-input-json", "--network-configuration", "--service-registries"}
    # No other command creates a service named like the scaler's.
    for other in readme_commands():
        if other[:3] == ["aws", "ecs", "create-service"] and other is not command:
            assert "taskqueue-scaler" not in other, other


# --- IAM --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(IAM.glob("*.json")), ids=lambda p: p.name)
def test_policy_grammar(path: Path):
    document = load(path)
    assert document["Version"] == "2012-10-17"
    assert isinstance(document["Statement"], list) and document["Statement"]
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert statement["Action"]
        # A trust policy names a Principal instead of a Resource.
        trust = path.name.endswith("trust-policy.json")
        assert ("Principal" if trust else "Resource") in statement


@pytest.mark.parametrize("path", sorted(IAM.glob("*-policy.json")), ids=lambda p: p.name)
def test_every_action_is_a_real_api_operation(path: Path):
    session = botocore.session.get_session()
    for statement in statements(path):
        for action in as_list(statement["Action"]):
            service, _, operation = action.partition(":")
            assert "*" not in action, action
            assert operation in session.get_service_model(service).operation_names, action


def test_the_policies_pass_iam_validation(aws_env: None):
    # moto applies IAM's document validation (grammar, action and ARN shape).
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        trust = render((IAM / "ecs-tasks-trust-policy.json").read_text())
        for path in sorted(IAM.glob("*-role-policy.json")):
            role = path.name.removesuffix("-policy.json")
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
            iam.put_role_policy(RoleName=role, PolicyName=role,
                                PolicyDocument=render(path.read_text()))
            iam.create_policy(PolicyName=role, PolicyDocument=render(path.read_text()))


def test_the_trust_policy_lets_only_this_accounts_ecs_tasks_assume_the_roles():
    (statement,) = statements(IAM / "ecs-tasks-trust-policy.json")
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": SAMPLE["ACCOUNT_ID"]}}


def test_the_scaler_may_only_describe_and_update_named_services():
    actions = {a for s in statements(IAM / "scaler-task-role-policy.json")
               for a in as_list(s["Action"])}
    # ListTagsForResource: the pause tag, read with DescribeServices' include=TAGS.
    assert actions == {"ecs:DescribeServices", "ecs:ListTagsForResource", "ecs:UpdateService"}
    service_arn = re.compile(
        rf"arn:aws:ecs:{SAMPLE['REGION']}:{SAMPLE['ACCOUNT_ID']}:service/"
        rf"{SAMPLE['CLUSTER']}/[A-Za-z0-9_-]+")
    for statement in statements(IAM / "scaler-task-role-policy.json"):
        assert "Condition" not in statement and "NotResource" not in statement
        for resource in as_list(statement["Resource"]):
            assert "*" not in resource, resource
            assert service_arn.fullmatch(resource), resource


def test_the_lease_table_policy_and_config_fit_what_the_lease_does(aws_env: None):
    # scaler.yml carries the lease commented out; uncommented, it must be valid as it is.
    text = render((DEPLOY / "scaler.yml").read_text())
    block = re.search(r"^# lease:\n(?:#   .*\n)+", text, re.M)
    assert block is not None
    enabled = text.replace(block.group(0), re.sub(r"^# ?", "", block.group(0), flags=re.M))
    lease = parse_scaler_config(enabled, {}).lease
    table = load(DEPLOY / "scaler-lease-table.json")
    assert lease == LeaseConfig(kind="dynamodb", ttl=45.0, table=table["TableName"],
                                region=SAMPLE["REGION"])
    assert table["KeySchema"] == [{"AttributeName": lease.key_attribute, "KeyType": "HASH"}]
    called: set[str] = set()
    with mock_aws():
        client = dynamodb_client(SAMPLE["REGION"])
        arn = client.create_table(**table)["TableDescription"]["TableArn"]
        client.meta.events.register("before-call.dynamodb.*",
                                    lambda model, **_: called.add(f"dynamodb:{model.name}"))
        a, b = (DynamoDbLease(client, lease.table, lease.name, lease.ttl, identity)
                for identity in ("a", "b"))
        assert a.hold(time.time()).held
        assert b.hold(time.time()).holder == "a"
        a.release()
        assert b.hold(time.time()).held
    # The policy allows exactly the calls the lease makes, on that table's one item.
    (statement,) = statements(IAM / "scaler-lease-role-policy.json")
    assert set(statement["Action"]) == called == {
        "dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem"}
    assert statement["Resource"] == arn
    assert statement["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [lease.name]}}


def test_the_worker_may_protect_tasks_of_its_cluster_only():
    (statement,) = statements(IAM / "worker-task-role-policy.json")
    assert "ecs:UpdateTaskProtection" in as_list(statement["Action"])
    assert set(as_list(statement["Action"])) <= {"ecs:UpdateTaskProtection",
                                                 "ecs:GetTaskProtection"}
    assert as_list(statement["Resource"]) == [
        f"arn:aws:ecs:{SAMPLE['REGION']}:{SAMPLE['ACCOUNT_ID']}:task/{SAMPLE['CLUSTER']}/*"]


def test_the_execution_role_uses_a_star_only_where_iam_requires_one():
    images = {container(n)["image"] for n in TASK_DEFINITIONS}
    for statement in statements(IAM / "task-execution-role-policy.json"):
        resources = as_list(statement["Resource"])
        if "*" in resources:
            # ecr:GetAuthorizationToken has no resource type: "*" is the only form.
            assert as_list(statement["Action"]) == ["ecr:GetAuthorizationToken"]
        if "ecr:BatchGetImage" in as_list(statement["Action"]):
            repositories = {r.rpartition(":repository/")[2] for r in resources}
            pulled = {image.split("/", 1)[1].rpartition(":")[0] for image in images}
            assert repositories == pulled


# --- helpers over the real project --------------------------------------------------------


def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def scaler_config(tmp_path: Path) -> Any:
    path = tmp_path / "scaler.yml"
    path.write_text(render((DEPLOY / "scaler.yml").read_text()))
    return load_config(str(path), {})
