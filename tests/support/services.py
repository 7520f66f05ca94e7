"""Where the tests' real Kafka and Redis come from. One place decides; tests never know which.

1. `SAGESTREAM_TEST_KAFKA` / `SAGESTREAM_TEST_REDIS_URL`: servers someone already runs.
2. A Docker engine that answers: testcontainers starts Kafka (KRaft) and Redis.
3. Otherwise the native stack from `deploy/`, on ports of its own so a running demo is untouched,
   with `appendfsync always` because the crash tests kill Redis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from deploy.stack import StackConfig, down, up

log = logging.getLogger(__name__)

TEST_STACK = StackConfig(
    kafka_port=29092, controller_port=29093, redis_port=26379, appendfsync="always"
)


@dataclass(frozen=True)
class Services:
    bootstrap_servers: str
    redis_url: str
    source: str
    stack: StackConfig | None = None  # set when the native stack runs them (fault tests use it)


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
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    with ExitStack() as stack:
        kafka = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        redis = stack.enter_context(RedisContainer("redis:7.2").with_command("--appendonly yes"))
        url = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
        yield Services(kafka.get_bootstrap_server(), url, "testcontainers")


@contextmanager
def _native() -> Iterator[Services]:
    up(TEST_STACK)
    try:
        yield Services(TEST_STACK.bootstrap_servers, TEST_STACK.redis_url, "native", TEST_STACK)
    finally:
        down(TEST_STACK)


@contextmanager
def provide() -> Iterator[Services]:
    kafka, redis_url = (
        os.environ.get("SAGESTREAM_TEST_KAFKA"),
        os.environ.get("SAGESTREAM_TEST_REDIS_URL"),
    )
    if kafka and redis_url:
        yield Services(kafka, redis_url, "external")
    elif _docker_available():
        with _containers() as services:
            yield services
    else:
        with _native() as services:
            yield services
