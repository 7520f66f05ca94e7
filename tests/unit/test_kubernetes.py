"""deploy/k8s: every manifest is valid against the Kubernetes API schemas (offline), and the
pieces agree: replicas follow the partitions, probes hit the worker's health paths on its
metrics port, the config parses as the worker's settings, secrets come only from a Secret.

deploy/k8s-cluster, the overlay for the clustered topology: it builds (with kustomize where the
host has it, else with the strategic merge below, checked against kustomize where both exist),
its manifests are valid, Qdrant runs as three peers in distributed mode, and the workers' config
parses as the cluster's settings."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
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


def assert_secrets_only_from_the_secret(docs: list[dict[str, Any]]) -> None:
    secret_names = ("PASSWORD", "API_KEY", "TOKEN", "SECRET")
    for doc in docs:
        assert doc["kind"] != "Secret", "ship no Secret: operators create it (README)"
        if doc["kind"] == "ConfigMap":
            for text in doc["data"].values():
                assert "password" not in text.lower() and "api_key" not in text.lower()
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


def test_secrets_come_from_a_secret_never_from_args_or_literal_env() -> None:
    assert_secrets_only_from_the_secret(manifests())
    toml = one("ConfigMap", "sagestream")["data"]["sagestream.toml"].lower()
    assert "password" not in toml and "api_key" not in toml


# ---------------------------------------------------------------------------------------------
# deploy/k8s-cluster: the clustered topology's overlay

CLUSTER = REPO / "deploy" / "k8s-cluster"


def kustomization() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())
    return found


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# The list fields the overlay's patches touch, by their strategic merge key (the Kubernetes
# API's patchMergeKey); any other list is replaced whole, as kustomize does.
MERGE_KEYS = {"containers": "name", "env": "name", "ports": "containerPort"}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        patched = {item[key]: item for item in patch}
        kept = [
            strategic_merge(i, patched.pop(i[key]), "") if i[key] in patched else i for i in base
        ]
        return [*patched.values(), *kept]
    return patch


def build_offline() -> list[dict[str, Any]]:
    """The overlay built here: the base's manifests and the overlay's own, then its patches
    (namespace and labels, which kustomize also sets, are left out: nothing below reads them)."""
    docs: list[dict[str, Any]] = []
    for resource in kustomization()["resources"]:
        if (CLUSTER / resource).resolve() == K8S:
            docs.extend(manifests())
        else:
            docs.extend(load_docs(CLUSTER / resource))
    for patch in kustomization()["patches"]:
        for change in load_docs(CLUSTER / patch["path"]):
            (i,) = [
                i
                for i, d in enumerate(docs)
                if (d["kind"], d["metadata"]["name"])
                == (change["kind"], change["metadata"]["name"])
            ]
            docs[i] = strategic_merge(docs[i], change)
    return docs


def kustomize() -> list[str] | None:
    """The host's kustomize: its own binary, else kubectl's; None where it has neither."""
    if binary := shutil.which("kustomize"):
        return [binary, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    return None


@functools.cache
def _kustomized(command: tuple[str, ...]) -> str:
    done = subprocess.run([*command, str(CLUSTER)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def build_with_kustomize(command: list[str]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_kustomized(tuple(command))) if d]


def overlay() -> list[dict[str, Any]]:
    command = kustomize()
    return build_offline() if command is None else build_with_kustomize(command)


def overlay_one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in overlay() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def overlay_config() -> str:
    text: str = overlay_one("ConfigMap", "sagestream")["data"]["sagestream.toml"]
    return text


def comparable(value: Any) -> Any:
    """A manifest with its named lists in name order: kustomize orders merged lists its own way."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [comparable(v) for v in value]
        if items and all(isinstance(v, dict) for v in items):
            for key in ("name", "containerPort"):
                if all(key in v for v in items):
                    return sorted(items, key=lambda v: str(v[key]))
        return items
    return value


def test_the_cluster_overlay_builds_over_the_base() -> None:
    assert (CLUSTER / kustomization()["resources"][0]).resolve() == K8S
    assert (
        kustomization()["namespace"]
        == yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    )
    offline = build_offline()
    command = kustomize()
    if command is None:  # no kustomize here: the offline build is the test
        assert {d["kind"] for d in offline} >= {"StatefulSet", "ConfigMap", "Service"}
        return
    built = build_with_kustomize(command)
    assert all(
        d["metadata"].get("namespace") == "sagestream" for d in built if d["kind"] != "Namespace"
    )
    ids = [(d["kind"], d["metadata"]["name"]) for d in built]
    assert sorted(ids) == sorted((d["kind"], d["metadata"]["name"]) for d in offline)
    for doc in offline:  # the strategic merge above is kustomize's, for what the patches touch
        (twin,) = [
            d
            for d in built
            if (d["kind"], d["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
        ]
        for part in ("spec", "data"):
            if part in doc and doc["kind"] not in ("Deployment", "CronJob"):  # images renamed
                assert comparable(twin[part]) == comparable(doc[part]), (doc["kind"], part)


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
def test_every_cluster_manifest_is_valid_against_the_api_schemas(version: str) -> None:
    for doc in overlay():
        kubernetes_validate.validate(doc, desired_version=version, strict=True)


def test_qdrant_runs_as_three_peers_in_distributed_mode_each_with_its_volume() -> None:
    qdrant = overlay_one("StatefulSet", "qdrant")
    spec = qdrant["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"  # a full restart must not wait for pod 0
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

    peers = overlay_one("Service", spec["serviceName"])["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert peers["selector"].items() <= labels.items()
    assert {p["name"]: p["port"] for p in peers["ports"]}["p2p"] == 6335

    (container,) = pod_of(qdrant)["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["p2p"] == 6335
    env = {e["name"]: e for e in container["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"]["value"] == "true"
    assert env["QDRANT__CLUSTER__P2P__PORT"]["value"] == "6335"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["QDRANT__SERVICE__API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "sagestream"
    assert (
        container["image"]
        == one("StatefulSet", "qdrant")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    budget = overlay_one("PodDisruptionBudget", "qdrant")["spec"]
    assert (
        budget["maxUnavailable"] == 1
        and budget["selector"]["matchLabels"].items() <= labels.items()
    )


def start_args(tmp_path: Path, pod: str) -> list[str]:
    """What the Qdrant container's start script runs in pod `pod`: the image's entrypoint is
    replaced by one that prints its arguments."""
    (container,) = pod_of(overlay_one("StatefulSet", "qdrant"))["containers"]
    entrypoint = tmp_path / "entrypoint.sh"
    entrypoint.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    entrypoint.chmod(0o755)
    command = [*container["command"], *container["args"]]
    assert command[0] == "bash"
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run(
        [bash, *command[1:]],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "POD_NAME": pod},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_pod_0_starts_the_qdrant_cluster_and_the_others_join_it(tmp_path: Path) -> None:
    service = overlay_one("StatefulSet", "qdrant")["spec"]["serviceName"]
    assert start_args(tmp_path, "qdrant-0") == ["--uri", f"http://qdrant-0.{service}:6335"]
    for pod in ("qdrant-1", "qdrant-2"):
        assert start_args(tmp_path, pod) == [
            "--bootstrap",
            f"http://qdrant-0.{service}:6335",
            "--uri",
            f"http://{pod}.{service}:6335",
        ]


def test_the_cluster_config_is_the_workers_settings_for_the_cluster(tmp_path: Path) -> None:
    path = tmp_path / "sagestream.toml"
    path.write_text(overlay_config())
    settings = Settings.load(path)  # unknown keys and bad values are refused here

    assert len(settings.kafka.bootstrap_servers.split(",")) == 3
    assert (settings.topics.replication_factor, settings.topics.min_insync_replicas) == (3, 2)
    assert len(settings.redis.cluster_nodes) == 6
    assert settings.redis.wait_replicas == 1
    qdrant = overlay_one("StatefulSet", "qdrant")["spec"]
    peers = [f"http://qdrant-{i}.{qdrant['serviceName']}:6333" for i in range(qdrant["replicas"])]
    assert settings.qdrant.url is not None and settings.qdrant.url.split(",") == peers
    q = settings.qdrant
    assert (q.shard_number, q.replication_factor, q.write_consistency_factor) == (3, 2, 1)
    assert q.replication_factor is not None and q.replication_factor <= qdrant["replicas"]

    worker = overlay_one("Deployment", "sagestream-worker")
    assert worker["spec"]["replicas"] == settings.topics.partitions


def test_the_cluster_config_changes_only_the_addresses_and_the_copies() -> None:
    base, cluster = config(), tomllib.loads(overlay_config())
    moved = {("kafka", "bootstrap_servers"), ("redis", "url"), ("qdrant", "url")}
    for section, values in base.items():
        if not isinstance(values, dict):
            assert cluster[section] == values, section
            continue
        for key, value in values.items():
            if (section, key) not in moved:
                assert cluster[section][key] == value, (section, key)


def test_the_cluster_overlay_takes_secrets_only_from_the_secret() -> None:
    assert_secrets_only_from_the_secret(overlay())
