"""The Kubernetes manifests: probes, resources, security and settings that agree."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.cli import build_parser
from relay.settings import Settings
from tests.deploy.promql import ROOT
from workers.runtime import CANCEL_WAIT_S

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SECRET_NAME = "modelgates-relay"
# Variables whose values belong in the Secret, never in a manifest.
SECRET_VARIABLES = {
    "REDIS_URL",
    "RELAY_API_TOKEN",
    "RELAY_SIGNING_SECRET",
    "RELAY_SIGNING_SECRET_PREVIOUS",
    "MODELGATES_API_KEY",
}
# After the grace a worker waits up to CANCEL_WAIT_S for cancelled work, then
# releases its claims and closes its clients. That took about 0.1 s in
# tests/e2e/test_shutdown.py.
RELEASE_AND_CLOSE_S = 3


class RecordingEnviron(Mapping[str, str]):
    """An empty environment that records every variable read from it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def settings_variables() -> set[str]:
    """Return the names of every variable that Settings.from_env reads."""
    environ = RecordingEnviron()
    Settings.from_env(environ)
    return environ.read


def manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    return found


def workloads() -> list[dict[str, Any]]:
    return of_kind("Deployment") + of_kind("Job")


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def config_map() -> dict[str, str]:
    data: dict[str, str] = named("ConfigMap", "modelgates-relay")["data"]
    return data


def dockerfile_uid() -> int:
    match = re.search(r"--uid (\d+)", DOCKERFILE.read_text())
    assert match, "deploy/Dockerfile creates no user with --uid"
    return int(match.group(1))


def test_manifests_have_kind_and_name() -> None:
    for doc in manifests():
        assert doc["apiVersion"]
        assert doc["kind"]
        assert doc["metadata"]["name"].startswith("modelgates-relay")


def test_kustomization_lists_every_manifest() -> None:
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization()["resources"]) == files


def test_manifests_contain_expected_objects() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in manifests())

    assert kinds == [
        ("ConfigMap", "modelgates-relay"),
        ("Deployment", "modelgates-relay-api"),
        ("Deployment", "modelgates-relay-worker"),
        ("Job", "modelgates-relay-migrate"),
        ("PodDisruptionBudget", "modelgates-relay-api"),
        ("PodDisruptionBudget", "modelgates-relay-worker"),
        ("Service", "modelgates-relay-api"),
    ]


def test_no_secret_values_in_manifests() -> None:
    assert of_kind("Secret") == []
    assert not set(config_map()) & SECRET_VARIABLES
    for workload in workloads():
        for container in containers(workload):
            for variable in container.get("env", []):
                assert variable["name"] not in SECRET_VARIABLES or (
                    "value" not in variable
                ), variable["name"]
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] == SECRET_NAME
                    assert reference["key"] == variable["name"]


def test_deployment_containers_have_probes_and_resources() -> None:
    for deployment in of_kind("Deployment"):
        for container in containers(deployment):
            name = f"{deployment['metadata']['name']}/{container['name']}"
            assert "livenessProbe" in container, name
            assert "readinessProbe" in container, name
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, name


def test_job_containers_have_resources() -> None:
    for job in of_kind("Job"):
        for container in containers(job):
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}


def test_pods_run_as_image_user() -> None:
    uid = dockerfile_uid()

    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name


def test_env_names_exist_in_settings() -> None:
    known = settings_variables()

    assert set(config_map()) <= known, sorted(set(config_map()) - known)
    for workload in workloads():
        for container in containers(workload):
            names = {variable["name"] for variable in container.get("env", [])}
            assert names <= known, sorted(names - known)


def test_config_map_settings_are_valid() -> None:
    settings = Settings.from_env(config_map())

    assert settings.worker_heartbeat_file.startswith("/")


@pytest.mark.parametrize(
    ("deployment", "command"),
    [
        ("modelgates-relay-api", "api"),
        ("modelgates-relay-worker", "worker"),
    ],
)
def test_deployments_run_relay_commands(deployment: str, command: str) -> None:
    [container] = containers(named("Deployment", deployment))

    assert container["args"] == [command]
    assert build_parser().parse_args(container["args"]).command == command


def test_migrate_job_runs_migrate() -> None:
    [container] = containers(named("Job", "modelgates-relay-migrate"))

    assert container["args"] == ["migrate"]
    assert build_parser().parse_args(container["args"]).command == "migrate"


def test_images_match_kustomization() -> None:
    [image] = kustomization()["images"]

    for workload in workloads():
        for container in containers(workload):
            assert container["image"] == image["name"]


def test_worker_grace_exceeds_shutdown_grace() -> None:
    grace_s = float(config_map()["RELAY_SHUTDOWN_GRACE_S"])
    pod = named("Deployment", "modelgates-relay-worker")["spec"]["template"]["spec"]

    assert grace_s == Settings().shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] >= (
        grace_s + CANCEL_WAIT_S + RELEASE_AND_CLOSE_S
    )


def test_api_grace_exceeds_pre_stop_sleep() -> None:
    pod = named("Deployment", "modelgates-relay-api")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]

    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1])


def test_api_probes_use_health_routes() -> None:
    [container] = containers(named("Deployment", "modelgates-relay-api"))
    ports = {port["name"] for port in container["ports"]}

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert container["ports"][0]["containerPort"] == int(config_map()["RELAY_API_PORT"])


def test_worker_probes_read_heartbeat_file() -> None:
    [container] = containers(named("Deployment", "modelgates-relay-worker"))
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    heartbeat_dir = str(Path(config_map()["RELAY_WORKER_HEARTBEAT_FILE"]).parent)

    assert heartbeat_dir in mounts
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command == ["python", "-m", "relay.liveness"]
    assert importlib.util.find_spec("relay.liveness") is not None


def test_service_selects_api_pods() -> None:
    service = named("Service", "modelgates-relay-api")
    api = named("Deployment", "modelgates-relay-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    [container] = containers(api)
    port_names = {port["name"] for port in container["ports"]}

    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names


@pytest.mark.parametrize("component", ["api", "worker"])
def test_disruption_budget_selects_deployment(component: str) -> None:
    budget = named("PodDisruptionBudget", f"modelgates-relay-{component}")
    deployment = named("Deployment", f"modelgates-relay-{component}")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = budget["spec"]["selector"]["matchLabels"]

    assert selector.items() <= pod_labels.items()
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    if "minAvailable" in budget["spec"]:
        assert deployment["spec"]["replicas"] > budget["spec"]["minAvailable"]
