"""The local real stack: Apache Kafka (KRaft, one node), Redis and Qdrant, natively on 127.0.0.1.

No Docker engine is needed. The broker is plain Java: Maven resolves the Kafka jars from Maven
Central into a cache outside the repository once, and later starts reuse them. Redis is Debian's
redis-server with AOF persistence. Qdrant runs when a server binary is found (`qdrant_binary`,
else `qdrant` on PATH); without one the stack has no vector server and the demo falls back to
embedded mode. `up` is idempotent, `down` leaves nothing running.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Literal

from deploy import secure

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
Component = Literal["kafka", "redis", "qdrant"]
FsyncPolicy = Literal["always", "everysec", "no"]
Topology = Literal["single", "cluster"]


class StackError(RuntimeError):
    """The local stack could not be installed, started or reached."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and listens. Defaults keep clear of the standard ports."""

    home: Path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sagestream"
    kafka_version: str = "4.1.1"
    kafka_port: int = 19092
    controller_port: int = 19093
    kafka_heap: str = "512m"
    redis_port: int = 16379
    appendfsync: FsyncPolicy = "everysec"
    run_qdrant: bool = True  # False: Kafka and Redis only (a Qdrant server runs elsewhere)
    qdrant_binary: Path | None = None  # else `qdrant` on PATH; neither: no vector server
    qdrant_port: int = 16333
    qdrant_grpc_port: int = 16334
    qdrant_api_key: str | None = field(default=None, repr=False)
    start_timeout_s: float = 90.0
    # Kafka SASL_SSL with ACLs, Redis TLS with ACL users, both with an `admin` user of this
    # password (deploy/secure.py); Qdrant's key is `qdrant_api_key`
    secure: bool = False
    admin_password: str | None = field(default=None, repr=False)
    # single: one node of each. cluster (deploy/cluster.py): three Kafka brokers, a Redis Cluster
    # of `redis_masters` masters with `redis_replicas` replicas each, three Qdrant peers; node i
    # listens on the single node's port + 10*i (Redis: + i)
    topology: Topology = "single"
    redis_masters: int = 3
    redis_replicas: int = 1
    redis_node_timeout_ms: int = 3000  # a master silent this long is failed over

    def qdrant_server(self) -> str | None:
        """The Qdrant server binary this stack runs, or None when there is none."""
        if not self.run_qdrant:
            return None
        if self.qdrant_binary is not None:
            return str(self.qdrant_binary.expanduser().resolve())
        return shutil.which("qdrant")

    @property
    def qdrant_url(self) -> str:
        """The server's URL; a cluster's peers' URLs, comma-separated (clients fail over)."""
        return ",".join(f"http://127.0.0.1:{port}" for port, _, _ in self.qdrant_peers)

    @property
    def qdrant_peers(self) -> list[tuple[int, int, int]]:
        """(http, grpc, p2p) ports per Qdrant process."""
        if self.topology == "single":
            return [(self.qdrant_port, self.qdrant_grpc_port, 0)]
        return [
            (self.qdrant_port + s, self.qdrant_grpc_port + s, self.qdrant_port + s + 5)
            for s in (0, 10, 20)
        ]

    @property
    def kafka_nodes(self) -> list[tuple[int, int]]:
        """(client, controller) ports per Kafka process."""
        if self.topology == "single":
            return [(self.kafka_port, self.controller_port)]
        return [(self.kafka_port + s, self.controller_port + s) for s in (0, 10, 20)]

    @property
    def redis_ports(self) -> list[int]:
        if self.topology == "single":
            return [self.redis_port]
        return [self.redis_port + i for i in range(self.redis_masters * (1 + self.redis_replicas))]

    @property
    def run_dir(self) -> Path:
        cluster = "-cluster" if self.topology == "cluster" else ""
        return self.home / f"stack-{self.kafka_port}-{self.redis_port}{cluster}"

    @property
    def kafka_libs(self) -> Path:
        return self.home / "kafka" / self.kafka_version / "libs"

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.kafka_nodes)

    @property
    def redis_url(self) -> str:
        return f"{'rediss' if self.secure else 'redis'}://127.0.0.1:{self.redis_port}/0"

    @property
    def redis_cluster_nodes(self) -> list[str]:
        """The cluster topology's Redis nodes as host:port (empty for a single Redis)."""
        return [] if self.topology == "single" else [f"127.0.0.1:{p}" for p in self.redis_ports]

    def client_settings(self) -> dict[str, dict[str, object]]:
        """The settings sections that point the product's clients at this stack."""
        redis: dict[str, object] = {"url": self.redis_url}
        qdrant: dict[str, object] = {"url": self.qdrant_url}
        topics: dict[str, object] = {}
        if self.topology == "cluster":
            redis["cluster_nodes"] = self.redis_cluster_nodes
            redis["wait_replicas"] = min(1, self.redis_replicas)
            qdrant |= {"shard_number": 3, "replication_factor": 2, "write_consistency_factor": 1}
            topics = {"replication_factor": 3}
        sections: dict[str, dict[str, object]] = {
            "kafka": {"bootstrap_servers": self.bootstrap_servers},
            "redis": redis,
            "topics": topics,
        }
        if self.qdrant_server() is not None:  # else no vector server runs here
            sections["qdrant"] = qdrant
        return sections

    @property
    def tls_dir(self) -> Path:
        return self.run_dir / "tls"


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    version: str

    def line(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return f"{self.name:<8} {state:<22} {self.address:<22} {self.version}"


# ---------------------------------------------------------------------------------------------
# installation


def ensure_kafka_jars(cfg: StackConfig) -> Path:
    """Resolve the broker jars with Maven into the cache, once per Kafka version."""
    libs = cfg.kafka_libs
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise StackError(
            "Kafka needs Java 17+ and Maven on PATH (apt-get install maven openjdk-17-jre)"
        )
    log.info(
        "resolving Apache Kafka %s with Maven into %s (first run only)", cfg.kafka_version, libs
    )
    libs.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(HERE / "kafka" / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
        f"-Dkafka.version={cfg.kafka_version}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StackError(
            f"Maven could not resolve Kafka {cfg.kafka_version}:\n{done.stdout[-2000:]}"
        )
    marker.write_text(cfg.kafka_version)
    return libs


def ensure_redis_server() -> str:
    """Return the redis-server binary, installing Debian's package when it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError("redis-server is missing: install Debian's redis-server package")
    log.info("installing Debian's redis-server (first run only)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    # Debian's package starts its own service on 6379; ours runs on its own port, so stop that one.
    subprocess.run(["service", "redis-server", "stop"], capture_output=True, check=False)
    return shutil.which("redis-server") or "/usr/bin/redis-server"


# ---------------------------------------------------------------------------------------------
# processes


def _pid_file(cfg: StackConfig, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def _read_pid(cfg: StackConfig, name: str) -> int | None:
    try:
        pid = int(_pid_file(cfg, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours still answers kill(0); it is not running
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _spawn(cfg: StackConfig, name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Start a daemon in its own session, output to <run dir>/<name>.log; return its pid.

    posix_spawn rather than Popen: the daemon outlives this process, and a Popen object that
    is dropped while its child runs only produces warnings.
    """
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    binary = shutil.which(cmd[0]) or cmd[0]
    log_path = str(cfg.run_dir / f"{name}.log")
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    environ = {**os.environ, **(env or {})}
    # Started from the run directory (sh cd's there, then execs: same pid), so a daemon that
    # drops files in its working directory (Qdrant's .qdrant-initialized) leaves the caller's
    # folder, maybe a checkout, alone.
    here = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(cfg.run_dir), binary, *cmd[1:]]
    pid = os.posix_spawn("/bin/sh", here, environ, file_actions=actions, setsid=True)
    _pid_file(cfg, name).write_text(str(pid))
    return pid


def _render(template: Path, target: Path, **fields: object) -> Path:
    target.write_text(
        Template(template.read_text()).substitute(**{k: str(v) for k, v in fields.items()})
    )
    return target


def kafka_java(cfg: StackConfig, libs: Path) -> list[str]:
    """The JVM command line of a broker (and of its log dir's formatting)."""
    return [
        "java",
        f"-Xmx{cfg.kafka_heap}",
        f"-Xms{cfg.kafka_heap}",
        "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={HERE / 'kafka' / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
    ]


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    One in 64 such ids starts with "-", which kafka-storage's argument parser reads as an option
    ("--cluster-id: expected one argument"); Kafka's own `Uuid.randomUuid` draws again then too.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _start_kafka(cfg: StackConfig) -> int:
    libs = ensure_kafka_jars(cfg)
    data = cfg.run_dir / "kafka-data"
    data.mkdir(parents=True, exist_ok=True)
    props = _render(
        HERE / "kafka" / "server.properties",
        cfg.run_dir / "server.properties",
        port=cfg.kafka_port,
        controller_port=cfg.controller_port,
        log_dir=data,
    )
    format_args: list[str] = []
    if cfg.secure:
        secure.override_properties(
            props, secure.kafka_properties(cfg, secure.ensure_tls(cfg.tls_dir))
        )
        props.chmod(0o600)
        format_args = secure.kafka_format_args(cfg)
    java = kafka_java(cfg, libs)
    if not (data / "meta.properties").exists():
        cluster_id = new_cluster_id()
        fmt = [
            *java,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            cluster_id,
            "--config",
            str(props),
            *format_args,
        ]
        done = subprocess.run(fmt, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"formatting the KRaft log dir failed:\n{done.stdout}{done.stderr}")
    return _spawn(cfg, "kafka", [*java, "kafka.Kafka", str(props)])


def _start_redis(cfg: StackConfig) -> int:
    binary = ensure_redis_server()
    data = cfg.run_dir / "redis-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = _render(
        HERE / "redis" / "redis.conf",
        cfg.run_dir / "redis.conf",
        port=cfg.redis_port,
        data_dir=data,
        pid_file=cfg.run_dir / "redis.server.pid",
        appendfsync=cfg.appendfsync,
    )
    if cfg.secure:
        conf.write_text(conf.read_text() + secure.redis_conf(cfg, secure.ensure_tls(cfg.tls_dir)))
        conf.chmod(0o600)
    return _spawn(cfg, "redis", [binary, str(conf)])


def _start_qdrant(cfg: StackConfig) -> int:
    binary = cfg.qdrant_server()
    if binary is None or not os.access(binary, os.X_OK):
        raise StackError(f"no runnable Qdrant server binary at {binary!r}")
    data = cfg.run_dir / "qdrant-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = _render(
        HERE / "qdrant" / "config.yaml",
        cfg.run_dir / "qdrant.yaml",
        http_port=cfg.qdrant_port,
        grpc_port=cfg.qdrant_grpc_port,
        storage=data / "storage",
        snapshots=data / "snapshots",
    )
    env = {"QDRANT__SERVICE__API_KEY": cfg.qdrant_api_key} if cfg.qdrant_api_key else {}
    return _spawn(cfg, "qdrant", [binary, "--config-path", str(conf)], env)


# ---------------------------------------------------------------------------------------------
# readiness


def _kafka_ready(cfg: StackConfig) -> bool:
    """The port answering is not enough: the broker must serve a metadata request."""
    if not _port_open(cfg.kafka_port):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    access = (
        secure.kafka_admin_kwargs(cfg)
        if cfg.secure
        else {"bootstrap_servers": cfg.bootstrap_servers}
    )
    try:
        admin = KafkaAdminClient(**access, request_timeout_ms=3000)
    except KafkaError:
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except KafkaError:
        return False
    finally:
        admin.close()


def _redis_ready(cfg: StackConfig) -> bool:
    import redis

    access = secure.redis_admin_kwargs(cfg) if cfg.secure else {"port": cfg.redis_port}
    try:
        return bool(redis.Redis(**access, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _qdrant_ready(cfg: StackConfig) -> bool:
    """`/readyz` answers 200 once the server has loaded its collections."""
    if not _port_open(cfg.qdrant_port):
        return False
    try:
        with urllib.request.urlopen(f"{cfg.qdrant_url}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


READY = {"kafka": _kafka_ready, "redis": _redis_ready, "qdrant": _qdrant_ready}


def _wait(cfg: StackConfig, name: Component, pid: int) -> None:
    ready = READY[name]
    deadline = time.monotonic() + cfg.start_timeout_s
    while time.monotonic() < deadline:
        if ready(cfg):
            return
        if not _alive(pid):
            tail = (cfg.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise StackError(f"{name} exited while starting; last log lines:\n{tail}")
        time.sleep(0.3)
    raise StackError(f"{name} did not answer within {cfg.start_timeout_s:.0f}s; see {cfg.run_dir}")


# ---------------------------------------------------------------------------------------------
# the commands


def _components(cfg: StackConfig) -> tuple[Component, ...]:
    return ("redis", "kafka", "qdrant") if cfg.qdrant_server() is not None else ("redis", "kafka")


def _port(cfg: StackConfig, name: Component) -> int:
    return {"redis": cfg.redis_port, "kafka": cfg.kafka_port, "qdrant": cfg.qdrant_port}[name]


def up(cfg: StackConfig) -> list[ComponentStatus]:
    """Start whatever is not running and wait until all answer. Safe to call twice."""
    if cfg.topology == "cluster":
        from deploy import cluster

        return cluster.up(cfg)
    starters = {"kafka": _start_kafka, "redis": _start_redis, "qdrant": _start_qdrant}
    for name in _components(cfg):
        pid = _read_pid(cfg, name)
        port = _port(cfg, name)
        if pid is None:
            if _port_open(port):
                raise StackError(f"port {port} is taken by a process this stack did not start")
            pid = starters[name](cfg)
            log.info("started %s (pid %d)", name, pid)
        _wait(cfg, name, pid)
    return status(cfg)


def stop(cfg: StackConfig, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop one component (a node of the cluster topology: `kafka-2`, `redis-4`, `qdrant-1`);
    SIGKILL models a crash (the reliability tests use it)."""
    pid = _read_pid(cfg, name)
    if pid is None:
        return
    os.killpg(pid, sig)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
    _reap(pid)
    _pid_file(cfg, name).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def down(cfg: StackConfig) -> None:
    """Stop Kafka first (it may still be writing), then Qdrant and Redis. Data stays."""
    if cfg.topology == "cluster":
        from deploy import cluster

        cluster.down(cfg)
        return
    for name in ("kafka", "qdrant", "redis"):
        stop(cfg, name)


def purge(cfg: StackConfig) -> None:
    """Stop everything and delete the stack's data (the jar cache is kept)."""
    down(cfg)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)


def _redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    version = next((p for p in out.split() if p.startswith("v=")), "v=?")
    return f"redis {version[2:]}"


def _qdrant_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except OSError as exc:
        return f"unusable binary ({exc})"
    return out.strip().lower() or "qdrant ?"


def status(cfg: StackConfig) -> list[ComponentStatus]:
    if cfg.topology == "cluster":
        from deploy import cluster

        return cluster.status(cfg)
    kafka_pid, redis_pid = _read_pid(cfg, "kafka"), _read_pid(cfg, "redis")
    qdrant_pid = _read_pid(cfg, "qdrant")
    installed = (cfg.kafka_libs / ".complete").exists()
    binary = cfg.qdrant_server()
    rows = [
        ComponentStatus(
            "kafka",
            kafka_pid is not None,
            kafka_pid,
            cfg.bootstrap_servers,
            f"kafka {cfg.kafka_version} (KRaft)" + ("" if installed else ", not installed"),
        ),
        ComponentStatus("redis", redis_pid is not None, redis_pid, cfg.redis_url, _redis_version()),
    ]
    if binary is not None:  # without a binary the stack has no vector server to report
        version = _qdrant_version(binary)
        rows.append(
            ComponentStatus("qdrant", qdrant_pid is not None, qdrant_pid, cfg.qdrant_url, version)
        )
    return rows


NO_QDRANT = (
    "no Qdrant server binary (set stack.qdrant_binary, SAGESTREAM_STACK__QDRANT_BINARY, or put "
    "qdrant on PATH): vectors go to embedded Qdrant, which one process locks, so no reader can "
    "query while a worker writes and a second worker cannot start"
)
