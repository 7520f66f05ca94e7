"""Where the tests' real Kafka, Redis and Qdrant come from. One place decides; tests never know.

1. `SAGESTREAM_TEST_KAFKA` / `SAGESTREAM_TEST_REDIS_URL` / `SAGESTREAM_TEST_QDRANT_URL`: servers
   someone already runs.
2. A Docker engine that answers: testcontainers starts Kafka (KRaft), Redis and Qdrant.
3. Otherwise the native stack from `deploy/`, on ports of its own so a running demo is untouched,
   with `appendfsync always` because the crash tests kill Redis, and the Qdrant server binary
   named by `SAGESTREAM_TEST_QDRANT_BINARY`, else the workplace's `../shared/bin/qdrant`. A
   missing binary fails the session: vector tests never skip, and never fall back to embedded.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deploy.stack import StackConfig, down, up

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
QDRANT_IMAGE = "qdrant/qdrant:v1.19.0"


def qdrant_binary() -> Path:
    """The Qdrant server the native test stack runs; a missing one is an error, not a skip."""
    named = os.environ.get("SAGESTREAM_TEST_QDRANT_BINARY")
    beside = [REPO.parent / "shared" / "bin" / "qdrant", Path("/work/shared/bin/qdrant")]
    candidates = [Path(named)] if named else beside
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    raise FileNotFoundError(
        f"no Qdrant server binary at {[str(c) for c in candidates]}: set "
        "SAGESTREAM_TEST_QDRANT_BINARY or SAGESTREAM_TEST_QDRANT_URL"
    )


# Ports are drawn below the kernel's ephemeral range (32768-60999 on Linux): a port the kernel
# hands out with bind(0) can be taken as the source port of any outgoing connection between the
# draw and the server's bind. A CI run lost a Qdrant peer that way ("Address already in use" on
# one of its gRPC ports, 20 s after the draw, while the stack's clients made many connections).
# 10,000-15,999 also stays clear of the dev stack (16xxx, 19xxx), the test stack (26xxx,
# 29xxx) and, 10,000 above, a Redis Cluster node's bus.
PORT_WINDOW = range(10_000, 16_000)
EPHEMERAL_LOW = 32_768


def free_ports(count: int, rng: random.Random | None = None) -> tuple[int, ...]:
    """`count` distinct ports nothing listens on now, drawn at random from `PORT_WINDOW`: no
    fixed number can collide with another stack, a demo or a parallel run on the same host, and
    no outgoing connection can take one before its server binds it."""
    rng = rng or random.Random()
    while True:
        ports = tuple(rng.sample(PORT_WINDOW, count))
        if all(map(_free, ports)):
            return ports


TEST_STACK = StackConfig(
    kafka_port=29092,
    controller_port=29093,
    redis_port=26379,
    qdrant_port=26333,
    qdrant_grpc_port=26334,
    appendfsync="always",
)


def own_stack(**overrides: Any) -> StackConfig:
    """A stack of its own beside the session's, on ports drawn by `free_ports` (the test stack
    and a running demo stay untouched), with the jar cache and the Qdrant binary the tests use.

    A cluster's nodes listen at fixed offsets from those ports, so the draw is repeated until
    every port of every node is distinct and free (a Redis Cluster node's bus too, 10,000 above
    its own port)."""
    while True:
        kafka, controller, redis, qdrant, grpc = free_ports(5)
        cfg = replace(
            StackConfig(home=TEST_STACK.home, qdrant_binary=qdrant_binary()),
            kafka_port=kafka,
            controller_port=controller,
            redis_port=redis,
            qdrant_port=qdrant,
            qdrant_grpc_port=grpc,
            **overrides,
        )
        ports = [p for pair in cfg.kafka_nodes for p in pair] + cfg.redis_ports
        ports += [p for peer in cfg.qdrant_peers for p in peer if p]
        if cfg.topology == "cluster":
            ports += [p + 10_000 for p in cfg.redis_ports]  # the cluster bus
        if len(set(ports)) == len(ports) and max(ports) < EPHEMERAL_LOW and all(map(_free, ports)):
            return cfg


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Services:
    bootstrap_servers: str
    redis_url: str
    qdrant_url: str
    source: str
    stack: StackConfig | None = None  # set when the native stack runs them (fault tests use it)
    qdrant_api_key: str | None = None


def _docker_available() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False  # no engine; asking the client anyway leaks its socket
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means: no engine here
        return False


@contextmanager
def _containers() -> Iterator[Services]:
    from testcontainers.community.qdrant import QdrantContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with ExitStack() as stack:
        kafka = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        redis = stack.enter_context(RedisContainer("redis:7.2").with_command("--appendonly yes"))
        qdrant = stack.enter_context(QdrantContainer(QDRANT_IMAGE))
        url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
        qdrant_url = f"http://{qdrant.get_container_host_ip()}:{qdrant.get_exposed_port(6333)}"
        yield Services(kafka.get_bootstrap_server(), url, qdrant_url, "testcontainers")


@contextmanager
def _native() -> Iterator[Services]:
    external = os.environ.get("SAGESTREAM_TEST_QDRANT_URL")  # a server someone runs beats ours
    cfg = (
        replace(TEST_STACK, run_qdrant=False)
        if external
        else replace(TEST_STACK, qdrant_binary=qdrant_binary())
    )
    up(cfg)
    try:
        key = os.environ.get("SAGESTREAM_TEST_QDRANT_API_KEY") if external else None
        url = external or cfg.qdrant_url
        yield Services(cfg.bootstrap_servers, cfg.redis_url, url, "native", cfg, key)
    finally:
        down(cfg)


@contextmanager
def provide() -> Iterator[Services]:
    kafka, redis_url, qdrant_url = (
        os.environ.get("SAGESTREAM_TEST_KAFKA"),
        os.environ.get("SAGESTREAM_TEST_REDIS_URL"),
        os.environ.get("SAGESTREAM_TEST_QDRANT_URL"),
    )
    key = os.environ.get("SAGESTREAM_TEST_QDRANT_API_KEY")
    if kafka and redis_url:
        if not qdrant_url:
            raise RuntimeError("external services need SAGESTREAM_TEST_QDRANT_URL too")
        yield Services(kafka, redis_url, qdrant_url, "external", qdrant_api_key=key)
    elif _docker_available():
        with _containers() as services:
            yield services
    else:
        with _native() as services:
            yield services
