"""The cluster topology of the local stack: every engine distributed, every process on 127.0.0.1.

`StackConfig(topology="cluster")` runs

- Apache Kafka as three combined broker+controller nodes (a static KRaft quorum of three),
  topics replicated three times with `min.insync.replicas=2`;
- a Redis Cluster of `redis_masters` masters with `redis_replicas` replicas each, AOF on, made
  by `redis-cli --cluster create`; a silent master is failed over after `redis_node_timeout_ms`;
- three Qdrant peers in distributed mode (Raft), the second and third joining through the first.

Node i listens on the single-node port + 10*i (Redis nodes on consecutive ports), keeps its data
in `<run dir>/<name>` and its log in `<run dir>/<name>.log`; names are `kafka-1`, `redis-4`,
`qdrant-2`. `kill` and `start_node` let the fault tests take one node down and bring it back.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from deploy.stack import (
    HERE,
    ComponentStatus,
    StackConfig,
    StackError,
    _alive,
    _port_open,
    _qdrant_version,
    _read_pid,
    _redis_version,
    _render,
    _spawn,
    ensure_kafka_jars,
    ensure_redis_server,
    kafka_java,
    new_cluster_id,
    stop,
)

log = logging.getLogger(__name__)


def node_names(cfg: StackConfig) -> list[str]:
    """Every process of the topology, in start order (Redis, Kafka, Qdrant)."""
    names = [f"redis-{i + 1}" for i in range(len(cfg.redis_ports))]
    names += [f"kafka-{i + 1}" for i in range(len(cfg.kafka_nodes))]
    if cfg.qdrant_server() is not None:
        names += [f"qdrant-{i + 1}" for i in range(len(cfg.qdrant_peers))]
    return names


def _index(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) - 1


def _check(cfg: StackConfig) -> None:
    if cfg.secure:
        raise StackError("the cluster topology runs without TLS and ACLs (secure=False)")
    if cfg.redis_masters < 3:
        raise StackError("a Redis Cluster needs at least 3 masters to fail one over")


# ---------------------------------------------------------------------------------------------
# starting one node


def _start_redis(cfg: StackConfig, name: str) -> int:
    binary = ensure_redis_server()
    port = cfg.redis_ports[_index(name)]
    data = cfg.run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    conf = _render(
        HERE / "redis" / "redis.conf",
        cfg.run_dir / f"{name}.conf",
        port=port,
        data_dir=data,
        pid_file=cfg.run_dir / f"{name}.server.pid",
        appendfsync=cfg.appendfsync,
    )
    extra = _render(
        HERE / "redis" / "cluster.conf",
        cfg.run_dir / f"{name}.cluster.conf",
        node_timeout_ms=cfg.redis_node_timeout_ms,
    )
    conf.write_text(conf.read_text() + extra.read_text())
    return _spawn(cfg, name, [binary, str(conf)])


def _cluster_id(cfg: StackConfig) -> str:
    """One id for the three brokers' log dirs, made once per stack."""
    path = cfg.run_dir / "kafka-cluster-id"
    if not path.exists():
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def _start_kafka(cfg: StackConfig, name: str) -> int:
    libs = ensure_kafka_jars(cfg)
    index = _index(name)
    port, controller = cfg.kafka_nodes[index]
    data = cfg.run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(cfg.kafka_nodes))
    props = _render(
        HERE / "kafka" / "cluster.properties",
        cfg.run_dir / f"{name}.properties",
        node_id=index + 1,
        voters=voters,
        port=port,
        controller_port=controller,
        log_dir=data,
    )
    java = kafka_java(cfg, libs)
    if not (data / "meta.properties").exists():
        fmt = [*java, "kafka.tools.StorageTool", "format", "--cluster-id", _cluster_id(cfg)]
        done = subprocess.run(
            [*fmt, "--config", str(props)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise StackError(f"formatting {name}'s log dir failed:\n{done.stdout}{done.stderr}")
    return _spawn(cfg, name, [*java, "kafka.Kafka", str(props)])


def _start_qdrant(cfg: StackConfig, name: str) -> int:
    binary = cfg.qdrant_server()
    if binary is None:
        raise StackError("no Qdrant server binary")
    index = _index(name)
    http, grpc, p2p = cfg.qdrant_peers[index]
    data = cfg.run_dir / name
    data.mkdir(parents=True, exist_ok=True)
    conf = _render(
        HERE / "qdrant" / "config.yaml",
        cfg.run_dir / f"{name}.yaml",
        http_port=http,
        grpc_port=grpc,
        storage=data / "storage",
        snapshots=data / "snapshots",
    )
    extra = _render(
        HERE / "qdrant" / "cluster.yaml", cfg.run_dir / f"{name}.cluster.yaml", p2p_port=p2p
    )
    conf.write_text(conf.read_text() + extra.read_text())
    cmd = [binary, "--config-path", str(conf), "--uri", f"http://127.0.0.1:{p2p}"]
    if index > 0 and not (data / "storage" / "raft_state.json").exists():
        cmd += ["--bootstrap", f"http://127.0.0.1:{cfg.qdrant_peers[0][2]}"]
    env = {"QDRANT__SERVICE__API_KEY": cfg.qdrant_api_key} if cfg.qdrant_api_key else {}
    return _spawn(cfg, name, cmd, env)


STARTERS: dict[str, Callable[[StackConfig, str], int]] = {
    "redis": _start_redis,
    "kafka": _start_kafka,
    "qdrant": _start_qdrant,
}


def _port(cfg: StackConfig, name: str) -> int:
    kind, index = name.rsplit("-", 1)[0], _index(name)
    if kind == "redis":
        return cfg.redis_ports[index]
    if kind == "kafka":
        return cfg.kafka_nodes[index][0]
    return cfg.qdrant_peers[index][0]


# ---------------------------------------------------------------------------------------------
# readiness: a node answers, then the cluster it belongs to is whole


def redis_cluster_nodes(cfg: StackConfig) -> list[dict[str, str]]:
    """`CLUSTER NODES` as read from the first node that answers: id, address, role, master."""
    import redis

    for port in cfg.redis_ports:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                # "CLUSTER", "NODES" as two words: redis-py parses "CLUSTER NODES" into a dict
                # that drops the flags this needs
                lines = str(client.execute_command("CLUSTER", "NODES")).strip()
        except redis.RedisError:
            continue
        rows = []
        for line in lines.splitlines():
            parts = line.split()
            flags = parts[2].split(",")
            rows.append(
                {
                    "id": parts[0],
                    "address": parts[1].split("@")[0],
                    "role": "master" if "master" in flags else "replica",
                    "failed": "fail" if "fail" in flags or "fail?" in flags else "",
                    "master": parts[3],
                    "slots": " ".join(parts[8:]),
                }
            )
        return rows
    return []


def _redis_state(port: int) -> str:
    import redis

    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            info = client.cluster("INFO")
    except redis.RedisError:
        return "down"
    return str(info.get("cluster_state", "?")) if isinstance(info, dict) else "?"


def _create_redis_cluster(cfg: StackConfig) -> None:
    """Join the nodes into one cluster once; later starts find it made (nodes.conf)."""
    if _redis_state(cfg.redis_ports[0]) == "ok":
        return
    if len(redis_cluster_nodes(cfg)) > 1:  # made before, its nodes still finding each other
        return
    cli = shutil.which("redis-cli") or "redis-cli"
    nodes = [f"127.0.0.1:{p}" for p in cfg.redis_ports]
    cmd = [cli, "--cluster", "create", *nodes, "--cluster-replicas", str(cfg.redis_replicas)]
    done = subprocess.run(
        [*cmd, "--cluster-yes"], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise StackError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")


def _redis_whole(cfg: StackConfig) -> bool:
    return all(_redis_state(port) == "ok" for port in cfg.redis_ports)


def _kafka_whole(cfg: StackConfig) -> bool:
    if not all(_port_open(port) for port, _ in cfg.kafka_nodes):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers, request_timeout_ms=3000)
    except KafkaError:
        return False
    try:
        return len(admin.describe_cluster().get("brokers", [])) == len(cfg.kafka_nodes)
    except KafkaError:
        return False
    finally:
        admin.close()


def _qdrant_cluster(port: int) -> dict[str, Any]:
    """The peer's `GET /cluster` result; empty while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster", timeout=2) as answer:
            body = json.loads(answer.read())
    except (OSError, ValueError):
        return {}
    result = body.get("result", {})
    return result if isinstance(result, dict) else {}


def _qdrant_peers_seen(port: int) -> int:
    return len(_qdrant_cluster(port).get("peers", {}))


def _qdrant_leads(cfg: StackConfig) -> bool:
    """The first peer can take joiners: it answers, leads its one-peer Raft, and its p2p port
    accepts connections. `/readyz` alone is not enough: the p2p listener binds after the HTTP
    one, and a joiner that finds it closed panics ("Can't initialize consensus")."""
    http, _, p2p = cfg.qdrant_peers[0]
    if not (_qdrant_ready(http) and _port_open(p2p)):
        return False
    cluster = _qdrant_cluster(http)
    leader = cluster.get("raft_info", {}).get("leader")
    return leader is not None and leader == cluster.get("peer_id")


def _qdrant_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _qdrant_whole(cfg: StackConfig) -> bool:
    peers = len(cfg.qdrant_peers)
    return all(
        _qdrant_ready(http) and _qdrant_peers_seen(http) == peers for http, _, _ in cfg.qdrant_peers
    )


def _wait_for(cfg: StackConfig, what: str, ready: Callable[[], bool], pids: list[int]) -> None:
    deadline = time.monotonic() + cfg.start_timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            raise StackError(f"{what}: a process exited while starting; see {cfg.run_dir}")
        time.sleep(0.3)
    raise StackError(f"{what} not whole within {cfg.start_timeout_s:.0f}s; see {cfg.run_dir}")


# ---------------------------------------------------------------------------------------------
# the commands


def start_node(cfg: StackConfig, name: str, *, wait: bool = True) -> int:
    """Start one node unless it runs; wait until its port answers unless told not to (a Kafka
    broker opens its port only once a quorum of controllers answers). Returns its pid."""
    pid = _read_pid(cfg, name)
    if pid is not None:
        return pid
    port = _port(cfg, name)
    if _port_open(port):
        raise StackError(f"port {port} is taken by a process this stack did not start")
    pid = STARTERS[name.rsplit("-", 1)[0]](cfg, name)
    log.info("started %s (pid %d)", name, pid)
    if not wait:
        return pid
    deadline = time.monotonic() + cfg.start_timeout_s
    while not _port_open(port):
        if not _alive(pid) or time.monotonic() > deadline:
            tail = (cfg.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise StackError(f"{name} did not start; last log lines:\n{tail}")
        time.sleep(0.2)
    return pid


def join_qdrant(cfg: StackConfig, name: str, attempts: int = 3) -> int:
    """Start a peer that joins through the first one; returns its pid.

    A fresh joiner whose bootstrap call fails panics and exits. Its storage then holds no Raft
    state worth keeping, so it is cleared and the join tried again. A peer that had joined
    before (it has Raft state) or that still runs is never cleared.
    """
    for attempt in range(1, attempts):
        fresh = not (cfg.run_dir / name / "storage" / "raft_state.json").exists()
        try:
            return start_node(cfg, name)
        except StackError:
            if not fresh or _read_pid(cfg, name) is not None:
                raise
            log.warning("%s could not join the cluster (try %d of %d)", name, attempt, attempts)
            shutil.rmtree(cfg.run_dir / name, ignore_errors=True)
            time.sleep(1.0)
    return start_node(cfg, name)


def up(cfg: StackConfig) -> list[ComponentStatus]:
    """Start every node that is not running and wait until each engine's cluster is whole."""
    _check(cfg)
    names = node_names(cfg)
    redis_pids = [start_node(cfg, n) for n in names if n.startswith("redis-")]
    _create_redis_cluster(cfg)
    _wait_for(cfg, "the Redis Cluster", lambda: _redis_whole(cfg), redis_pids)
    kafka_pids = [start_node(cfg, n, wait=False) for n in names if n.startswith("kafka-")]
    _wait_for(cfg, "the Kafka cluster", lambda: _kafka_whole(cfg), kafka_pids)
    qdrant = [n for n in names if n.startswith("qdrant-")]
    if qdrant:  # the first peer makes the cluster; the others join it
        first = start_node(cfg, qdrant[0])
        _wait_for(cfg, "the first Qdrant peer", lambda: _qdrant_leads(cfg), [first])
        pids = [first, *(join_qdrant(cfg, n) for n in qdrant[1:])]
        _wait_for(cfg, "the Qdrant cluster", lambda: _qdrant_whole(cfg), pids)
    return status(cfg)


def whole(cfg: StackConfig) -> bool:
    """Every node runs and every engine's cluster sees all of its members."""
    return (
        _redis_whole(cfg)
        and _kafka_whole(cfg)
        and (cfg.qdrant_server() is None or _qdrant_whole(cfg))
    )


def kill(cfg: StackConfig, name: str) -> None:
    """kill -9 one node (a crash: no shutdown, no flush beyond what its engine already did)."""
    stop(cfg, name, signal.SIGKILL)


def down(cfg: StackConfig) -> list[ComponentStatus]:
    """Stop Kafka first (it may still be writing), then Qdrant and Redis. Data stays."""
    names = node_names(cfg)
    for kind in ("kafka", "qdrant", "redis"):
        # all nodes of an engine at once: stopped one by one, the last brokers of the KRaft
        # quorum wait for controllers that are already gone (30 s each before SIGKILL)
        nodes = [name for name in names if name.startswith(kind)]
        if not nodes:  # no Qdrant binary: no peers
            continue
        with ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda name: stop(cfg, name), nodes))
    return status(cfg)


def status(cfg: StackConfig) -> list[ComponentStatus]:
    redis_roles = {row["address"]: row["role"] for row in redis_cluster_nodes(cfg)}
    binary = cfg.qdrant_server()
    qdrant_version = _qdrant_version(binary) if binary else ""
    rows = []
    for name in node_names(cfg):
        pid = _read_pid(cfg, name)
        address = f"127.0.0.1:{_port(cfg, name)}"
        if name.startswith("redis-"):
            version = f"{_redis_version()} ({redis_roles.get(address, 'not in a cluster')})"
        elif name.startswith("kafka-"):
            version = f"kafka {cfg.kafka_version} (KRaft broker+controller)"
        else:
            address, version = f"http://{address}", f"{qdrant_version} (peer)"
        rows.append(ComponentStatus(name, pid is not None, pid, address, version))
    return rows
