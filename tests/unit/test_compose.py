"""docker-compose.yml: the services a Docker host gets, with health checks and volumes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from state.vectors import MIN_SERVER_VERSION

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_services_have_health_checks_and_durable_volumes() -> None:
    services = load()["services"]
    assert {"kafka", "redis", "qdrant", "worker"} <= services.keys()
    for name in ("kafka", "redis", "qdrant"):
        assert "healthcheck" in services[name], name
        assert services[name]["volumes"], name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "--appendonly" in services["redis"]["command"]


def test_worker_waits_for_healthy_dependencies_and_exposes_metrics() -> None:
    worker = load()["services"]["worker"]
    assert worker["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("kafka", "redis", "qdrant")
    }
    env = worker["environment"]
    assert env["SAGESTREAM_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["SAGESTREAM_METRICS__PORT"] == "9464"
    assert (COMPOSE.parent / worker["build"]["dockerfile"]).exists()


def test_retrainer_runs_every_six_hours_on_the_workers_image_and_registry() -> None:
    services = load()["services"]
    worker, retrainer = services["worker"], services["retrainer"]
    worker_build = worker["build"]
    assert {k: v for k, v in retrainer["build"].items() if k != "args"} == worker_build
    assert retrainer["build"]["args"]["EXTRAS"] == "[train]"  # torch, for training
    assert retrainer["command"] == ["sagestream", "retrain", "--every", "6h"]
    assert "kafka" in retrainer["depends_on"]
    for name in ("SAGESTREAM_KAFKA__BOOTSTRAP_SERVERS", "SAGESTREAM_MODELS__REGISTRY"):
        assert retrainer["environment"][name] == worker["environment"][name], name
    registry = worker["environment"]["SAGESTREAM_MODELS__REGISTRY"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert registry in mounts and f"{mounts[registry]}:{registry}" in retrainer["volumes"]


def test_prometheus_scrapes_every_worker_replica_and_loads_the_rules() -> None:
    prometheus = load()["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_dir = COMPOSE.parent / mounted["/etc/prometheus"]
    scrape = yaml.safe_load((config_dir / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    (dns,) = job["dns_sd_configs"]
    port = load()["services"]["worker"]["environment"]["SAGESTREAM_METRICS__PORT"]
    assert (dns["names"], dns["port"]) == (["worker"], int(port))
    assert [str(p.relative_to(config_dir)) for p in config_dir.glob(scrape["rule_files"][0])] == [
        "rules/sagestream.yml"
    ]


def test_compose_client_accepts_the_file_where_one_exists() -> None:
    """`docker compose config` validates the file fully; hosts without the plugin parse it above."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        assert load()["services"]  # no compose client here: the parse checks above are the test
        return
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()


def test_qdrant_needs_an_api_key_that_the_worker_sends() -> None:
    services = load()["services"]
    key = services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]
    assert key.startswith("${QDRANT_API_KEY:?")  # compose refuses to start without one
    assert services["worker"]["environment"]["SAGESTREAM_QDRANT__API_KEY"] == key
    version = services["qdrant"]["image"].rsplit(":v", 1)[1]
    assert tuple(int(p) for p in version.split(".")) >= MIN_SERVER_VERSION
