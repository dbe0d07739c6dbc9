"""deploy/k8s rendered offline (kubectl's built-in kustomize) and validated against the
Kubernetes schemas that kubernetes-validate bundles; the Prometheus Operator resources, the
worker's probes and limits, secrets only referenced; the Dockerfile multi-stage and non-root."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.k8s.prometheusrule import TARGET, prometheus_rule, rendered
from reach.settings import REPO_ROOT, Settings

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES = "1.32"

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl renders the kustomization"
)


def render(path: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone", str(K8S / path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return render("overlays/example")


@needs_kubectl
def test_every_builtin_resource_passes_the_kubernetes_schema(example: list[dict[str, Any]]) -> None:
    builtin = [d for d in example if not d["apiVersion"].startswith("monitoring.coreos.com")]
    assert {d["kind"] for d in builtin} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Namespace",
    }  # fmt: skip
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_refuses_a_wrong_manifest() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": "http"}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


@needs_kubectl
def test_the_worker_scales_to_the_partitions_probes_and_stops_gracefully(
    example: list[dict[str, Any]],
) -> None:
    worker = by_kind(example, "Deployment", "reach-worker")
    settings = by_kind(example, "ConfigMap", "reach-settings")["data"]
    assert 1 <= worker["spec"]["replicas"] <= int(settings["REACH_PARTITIONS"])
    pod = worker["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = container["ports"][0]["containerPort"]
    assert port == Settings().worker_metrics_port and settings["REACH_WORKER_METRICS_HOST"] == "0.0.0.0"


@needs_kubectl
def test_rules_come_from_a_configmap_mounted_as_a_directory_under_a_stable_name(
    example: list[dict[str, Any]],
) -> None:
    rules = by_kind(example, "ConfigMap", "reach-rules")
    assert rules["metadata"]["name"] == "reach-rules"  # no hash suffix: updated in place, hot reload
    assert set(rules["data"]) == {p.name for p in (REPO_ROOT / "rules" / "examples").glob("*.yaml")}
    worker = by_kind(example, "Deployment", "reach-worker")["spec"]["template"]["spec"]
    mount = next(m for m in worker["containers"][0]["volumeMounts"] if m["name"] == "rules")
    settings = by_kind(example, "ConfigMap", "reach-settings")["data"]
    assert mount["mountPath"] == settings["REACH_RULES_DIR"] and "subPath" not in mount
    assert by_kind(example, "ConfigMap", "reach-channels")["metadata"]["name"] != "reach-channels"


@needs_kubectl
def test_secrets_are_referenced_never_inlined(example: list[dict[str, Any]]) -> None:
    assert not [d for d in example if d["kind"] == "Secret"]
    for doc in example:
        if doc["kind"] == "Deployment":
            for env in doc["spec"]["template"]["spec"]["containers"][0].get("env", []):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    settings = by_kind(example, "ConfigMap", "reach-settings")["data"]
    assert not [k for k in settings if re.search("PASSWORD|SECRET|TOKEN|REDIS_URL", k)]


@needs_kubectl
def test_the_api_has_a_service_an_hpa_and_a_pdb(example: list[dict[str, Any]]) -> None:
    hpa = by_kind(example, "HorizontalPodAutoscaler", "reach-api")
    pdb = by_kind(example, "PodDisruptionBudget", "reach-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "reach-api" and hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "reach-api"}
    assert (
        by_kind(example, "Service", "reach-api")["spec"]["selector"] == pdb["spec"]["selector"]["matchLabels"]
    )


@needs_kubectl
def test_the_operator_resources_scrape_every_process_with_the_rules_jobs(
    example: list[dict[str, Any]],
) -> None:
    monitor = by_kind(example, "ServiceMonitor", "reach")
    scraped = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    services = {d["metadata"]["name"] for d in example if d["kind"] == "Service"}
    assert scraped == services == {"reach-worker", "reach-api", "reach-exporter"}  # the alerts' job names
    rule = by_kind(example, "PrometheusRule", "reach")
    assert rule["spec"] == prometheus_rule()["spec"]


def test_the_prometheusrule_is_generated_from_the_rule_files() -> None:
    assert TARGET.read_text() == rendered(), "run python -m deploy.k8s.prometheusrule"


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages and line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_the_dockerfile_is_multi_stage_non_root_and_copies_every_package() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    assert "COPY --from=build /wheels /wheels" in runtime
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    packages = [p.rstrip("*") for p in config["options.packages.find"]["include"].split()]
    for package in packages:
        assert f"COPY {package} {package}" in stages[0], package
    assert not re.search(r"(?i)(password|secret|token)=", (REPO_ROOT / "Dockerfile").read_text())
