"""deploy/k8s: every manifest is valid against the Kubernetes API schemas (offline), and the
pieces agree: replicas follow the partitions, probes hit the worker's health paths on its
metrics port, the config parses as the worker's settings, secrets come only from a Secret."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES = "1.33"  # the oldest release still maintained upstream when this was written


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_of(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    template = (
        spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    )
    pod: dict[str, Any] = template["spec"]
    return pod


def config() -> dict[str, Any]:
    return tomllib.loads(one("ConfigMap", "sagestream")["data"]["sagestream.toml"])


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_api_schemas(version: str) -> None:
    for doc in manifests():
        kubernetes_validate.validate(doc, desired_version=version, strict=True)


def test_kustomize_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_config_is_the_workers_settings(tmp_path: Path) -> None:
    path = tmp_path / "sagestream.toml"
    path.write_text(one("ConfigMap", "sagestream")["data"]["sagestream.toml"])
    settings = Settings.load(path)  # unknown keys and bad values are refused here
    assert settings.metrics.host == "0.0.0.0"
    assert str(settings.models.registry) == "/models"


def test_workers_follow_the_partitions_with_probes_a_budget_and_requests() -> None:
    worker = one("Deployment", "sagestream-worker")
    assert worker["spec"]["replicas"] == config()["topics"]["partitions"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert worker["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = one("PodDisruptionBudget", "sagestream-worker")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1

    (container,) = pod_of(worker)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == config()["metrics"]["port"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]


def test_the_retrainer_shares_the_registry_volume_and_the_config() -> None:
    worker, retrainer = (
        one("Deployment", "sagestream-worker"),
        one("CronJob", "sagestream-retrainer"),
    )
    claims = []
    for workload in (worker, retrainer):
        pod = pod_of(workload)
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        models = mounts[config()["models"]["registry"]]
        claims.append(volumes[models["name"]]["persistentVolumeClaim"]["claimName"])
        env = {e["name"]: e for e in container["env"]}
        config_dir = str(Path(env["SAGESTREAM_CONFIG_FILE"]["value"]).parent)
        assert volumes[mounts[config_dir]["name"]]["configMap"]["name"] == "sagestream"
    assert claims[0] == claims[1] == one("PersistentVolumeClaim", claims[0])["metadata"]["name"]
    assert "ReadWriteMany" in one("PersistentVolumeClaim", claims[0])["spec"]["accessModes"]
    assert retrainer["spec"]["concurrencyPolicy"] == "Forbid"


def test_secrets_come_from_a_secret_never_from_args_or_literal_env() -> None:
    secret_names = ("PASSWORD", "API_KEY", "TOKEN", "SECRET")
    for doc in manifests():
        assert doc["kind"] != "Secret", "ship no Secret: operators create it (README)"
        if doc["kind"] not in ("Deployment", "StatefulSet", "CronJob"):
            continue
        for container in pod_of(doc)["containers"]:
            assert not any(
                word in " ".join(container.get("args", [])).upper() for word in secret_names
            )
            for env in container.get("env", []):
                if any(word in env["name"] for word in secret_names):
                    assert "value" not in env, env["name"]
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "sagestream"
    toml = one("ConfigMap", "sagestream")["data"]["sagestream.toml"].lower()
    assert "password" not in toml and "api_key" not in toml
