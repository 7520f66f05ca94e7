"""deploy/compose/cluster.yml: the clustered topology on a Docker host. Three Kafka nodes of one
quorum, a Redis Cluster of six nodes made once by an init service, three Qdrant peers, and a
worker whose environment parses as the cluster's settings; the engines' settings agree with the
native cluster topology's files (deploy/kafka, deploy/redis, deploy/qdrant)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose" / "cluster.yml"
SINGLE = REPO / "docker-compose.yml"
KAFKA = [f"kafka-{i}" for i in (1, 2, 3)]
REDIS = [f"redis-{i}" for i in range(1, 7)]
QDRANT = [f"qdrant-{i}" for i in (1, 2, 3)]
VOTERS = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"


def load(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    found: dict[str, Any] = load()["services"]
    return found


def unescape(text: str) -> str:
    """What compose hands the container: `$$` is a literal `$` (no variables in these)."""
    assert re.search(r"(?<!\$)\$\{", text) is None
    return text.replace("$$", "$")


def options(command: list[str]) -> dict[str, str]:
    """`--name value` pairs of a server's command line."""
    return {
        command[i].removeprefix("--"): command[i + 1]
        for i in range(len(command) - 1)
        if command[i].startswith("--")
    }


def test_every_stateful_node_has_a_health_check_and_a_volume_of_its_own() -> None:
    found, declared = services(), load()["volumes"]
    assert {*KAFKA, *REDIS, *QDRANT, "redis-cluster-init", "worker"} <= found.keys()
    volumes = []
    for name in (*KAFKA, *REDIS, *QDRANT):
        assert "healthcheck" in found[name], name
        (volume,) = found[name]["volumes"]
        volumes.append(volume.split(":")[0])
    assert len(set(volumes)) == len(volumes)  # no two nodes share their data
    assert set(volumes) <= declared.keys()  # named volumes, kept across `down` and `up`


def test_three_kafka_nodes_form_one_quorum_with_three_copies_of_every_topic() -> None:
    found = services()
    envs = [found[name]["environment"] for name in KAFKA]
    assert len({env["CLUSTER_ID"] for env in envs}) == 1
    for i, (name, env) in enumerate(zip(KAFKA, envs, strict=True), start=1):
        assert found[name]["image"] == load(SINGLE)["services"]["kafka"]["image"]
        assert env["KAFKA_NODE_ID"] == str(i)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == VOTERS
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert found[name]["volumes"] == [f"{name}-data:{env['KAFKA_LOG_DIRS']}"]
    # the voters are the nodes' ids on their controller port
    listeners = dict(p.split("://") for p in envs[0]["KAFKA_LISTENERS"].split(","))
    port = listeners["CONTROLLER"].lstrip(":")
    assert ",".join(f"{i}@{name}:{port}" for i, name in enumerate(KAFKA, start=1)) == VOTERS


def test_the_kafka_nodes_have_the_native_cluster_topologys_broker_settings() -> None:
    """Every fixed line of deploy/kafka/cluster.properties, as the image's KAFKA_ variables."""
    props = {}
    for line in (REPO / "deploy" / "kafka" / "cluster.properties").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key] = value
    fixed = {k: v for k, v in props.items() if "${" not in v and "_" not in k and "-" not in k}
    assert {"default.replication.factor", "min.insync.replicas"} <= fixed.keys()
    for name in KAFKA:
        env = services()[name]["environment"]
        for key, value in fixed.items():
            assert env["KAFKA_" + key.upper().replace(".", "_")] == value, (name, key)


def test_six_redis_nodes_in_cluster_mode_with_the_aof_on() -> None:
    conf = (REPO / "deploy" / "redis" / "cluster.conf").read_text()
    native = dict(
        line.split(maxsplit=1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    for name in REDIS:
        node = services()[name]
        assert node["image"] == load(SINGLE)["services"]["redis"]["image"]
        assert node["command"][0] == "redis-server"
        opts = options(node["command"])
        assert opts["appendonly"] == "yes"
        assert opts["cluster-enabled"] == "yes"
        assert opts["cluster-node-timeout"] == "3000"
        for key, value in native.items():  # the native topology's cluster settings, all of them
            assert opts[key] == value.replace("${node_timeout_ms}", "3000"), (name, key)
        assert node["volumes"] == [f"{name}-data:/data"]  # nodes.conf beside the AOF


def test_the_init_service_makes_the_cluster_once_all_nodes_are_healthy() -> None:
    init = services()["redis-cluster-init"]
    assert init["image"] == services()["redis-1"]["image"]  # its redis-cli
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in REDIS}
    assert init["restart"] == "no"
    script = unescape(init["command"][0])
    assert "--cluster create" in script and "--cluster-yes" in script
    assert "--cluster-replicas 1" in script
    assert all(re.search(rf"\b{name}\b", script) for name in REDIS)


def _fake_bin(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run_init(tmp_path: Path, state: str, known: int, ok_after: int = 0) -> list[str]:
    """Run the init script with a redis-cli that answers `cluster info` from files (the state
    turns ok after `ok_after` more questions, or once a create ran) and logs every call."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (tmp_path / "state").write_text(state)
    (tmp_path / "known").write_text(str(known))
    (tmp_path / "asked").write_text("0")
    _fake_bin(
        fake,
        "redis-cli",
        f"""cd {tmp_path}
echo "$*" >> calls
case "$*" in
  *"--cluster create"*) echo ok > state; echo 6 > known; exit 0 ;;
esac
asked=$(($(cat asked) + 1)); echo $asked > asked
if [ $asked -gt {ok_after} ] && [ {ok_after} -gt 0 ]; then echo ok > state; fi
printf 'cluster_state:%s\\r\\ncluster_known_nodes:%s\\r\\n' "$(cat state)" "$(cat known)"
""",
    )
    addresses = " ".join(
        f'{name}) echo "10.0.0.{name[-1]} STREAM {name}"; echo "10.0.0.{name[-1]} DGRAM" ;;'
        for name in REDIS
    )
    _fake_bin(fake, "getent", f'case "$2" in {addresses} esac')
    script = unescape(services()["redis-cluster-init"]["command"][0])
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    sh = shutil.which("sh")
    assert sh is not None
    done = subprocess.run([sh, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return (tmp_path / "calls").read_text().splitlines()


def test_the_init_script_creates_a_new_cluster_from_the_nodes_addresses(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, state="fail", known=1)
    (create,) = [c for c in calls if "--cluster create" in c]
    words = create.split()
    addresses = words[words.index("create") + 1 : words.index("--cluster-replicas")]
    assert addresses == [f"10.0.0.{i}:6379" for i in range(1, 7)]  # CLUSTER MEET takes IPs
    assert words[words.index("--cluster-replicas") + 1] == "1"
    assert words[-1] == "--cluster-yes"


def test_the_init_script_leaves_a_made_cluster_alone(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, state="ok", known=6)
    assert calls and not any("--cluster create" in c for c in calls)


def test_the_init_script_waits_for_a_made_cluster_that_is_not_whole_yet(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, state="fail", known=6, ok_after=3)
    assert len(calls) > 3 and not any("--cluster create" in c for c in calls)


def test_three_qdrant_peers_in_distributed_mode_join_through_the_first() -> None:
    found = services()
    single = load(SINGLE)["services"]["qdrant"]
    p2p = "6335"  # deploy/qdrant/cluster.yaml's peer port, filled in by deploy/cluster.py
    assert "p2p:\n    port: ${p2p_port}" in (REPO / "deploy/qdrant/cluster.yaml").read_text()
    for name in QDRANT:
        peer = found[name]
        env = peer["environment"]
        assert peer["image"] == single["image"]
        assert env["QDRANT__CLUSTER__ENABLED"] == "true"
        assert env["QDRANT__CLUSTER__P2P__PORT"] == p2p
        assert env["QDRANT__SERVICE__API_KEY"] == single["environment"]["QDRANT__SERVICE__API_KEY"]
        assert peer["healthcheck"] == single["healthcheck"]
        assert peer["volumes"] == [f"{name}-data:/qdrant/storage"]
        command = peer["command"]
        assert command[0] == "./entrypoint.sh"  # the image's own start (its default command)
        assert options(command)["uri"] == f"http://{name}:{p2p}"
    assert "bootstrap" not in options(found["qdrant-1"]["command"])
    for name in QDRANT[1:]:
        assert options(found[name]["command"])["bootstrap"] == f"http://qdrant-1:{p2p}"
        assert found[name]["depends_on"] == {"qdrant-1": {"condition": "service_healthy"}}


def test_the_worker_waits_for_every_node_and_the_made_redis_cluster() -> None:
    worker = services()["worker"]
    healthy = {"condition": "service_healthy"}
    assert worker["depends_on"] == {
        **{name: healthy for name in (*KAFKA, *QDRANT)},
        "redis-cluster-init": {"condition": "service_completed_successfully"},
    }


def test_the_workers_environment_is_the_clusters_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("SAGESTREAM_"):
            monkeypatch.delenv(name)
    env = services()["worker"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, "not-a-real-key" if value.startswith("${") else value)
    settings = Settings.load()  # unknown keys and bad values are refused here

    assert settings.kafka.bootstrap_servers.split(",") == [f"{n}:9092" for n in KAFKA]
    assert settings.topics.replication_factor == 3
    assert settings.topics.min_insync_replicas == 2
    assert settings.redis.cluster_nodes == tuple(f"{n}:6379" for n in REDIS)
    assert settings.redis.wait_replicas == 1
    assert settings.qdrant.url is not None
    assert settings.qdrant.url.split(",") == [f"http://{n}:6333" for n in QDRANT]
    assert settings.qdrant.api_key is not None
    assert settings.qdrant.api_key.get_secret_value() == "not-a-real-key"
    q = settings.qdrant
    assert (q.shard_number, q.replication_factor, q.write_consistency_factor) == (3, 2, 1)
    assert settings.metrics.host == "0.0.0.0"
    assert str(settings.models.registry) == "/models"


def test_the_worker_retrainer_and_monitoring_are_docker_compose_ymls() -> None:
    """Built from the same Dockerfile, started and checked the same way, with the same key."""
    cluster, single = services(), load(SINGLE)["services"]
    build = cluster["worker"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == REPO
    assert {**build, "context": "."} == single["worker"]["build"]
    for key in ("command", "ports", "healthcheck", "volumes", "restart"):
        assert cluster["worker"][key] == single["worker"][key], key
    env, single_env = cluster["worker"]["environment"], single["worker"]["environment"]
    key = single_env["SAGESTREAM_QDRANT__API_KEY"]
    assert key.startswith("${QDRANT_API_KEY:?")  # compose refuses to start without one
    assert env["SAGESTREAM_QDRANT__API_KEY"] == key
    for name in ("SAGESTREAM_METRICS__HOST", "SAGESTREAM_METRICS__PORT"):
        assert env[name] == single_env[name]

    retrainer = cluster["retrainer"]
    assert {**retrainer["build"], "context": "."} == single["retrainer"]["build"]
    assert retrainer["command"] == single["retrainer"]["command"]
    assert set(KAFKA) <= retrainer["depends_on"].keys()
    for name in ("SAGESTREAM_KAFKA__BOOTSTRAP_SERVERS", "SAGESTREAM_MODELS__REGISTRY"):
        assert retrainer["environment"][name] == env[name], name
    assert retrainer["volumes"] == cluster["worker"]["volumes"]

    for name in ("prometheus", "grafana"):
        assert cluster[name]["image"] == single[name]["image"]
        for volume in cluster[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):  # a folder of this repository, relative to the file
                folder = (COMPOSE.parent / source).resolve()
                assert folder.is_dir(), volume
                target = volume.split(":", 1)[1]
                assert f"./{folder.relative_to(REPO)}:{target}" in single[name]["volumes"]


def test_compose_client_accepts_the_file_where_one_exists() -> None:
    """`docker compose config` validates the file fully; hosts without the plugin parse it above."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        assert services()  # no compose client here: the parse checks above are the test
        return
    env = {**os.environ, "QDRANT_API_KEY": "k", "GRAFANA_ADMIN_PASSWORD": "p"}
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, env=env
    )
    assert done.returncode == 0, done.stderr.decode()
