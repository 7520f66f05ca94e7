"""Clients built from settings, inside the running event loop. Every runtime wires the core here."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from state import RedisState
from streams.dlq import KafkaDeadLetterSink
from streams.faults import Faults
from streams.ingest import IngestCore
from streams.metrics import IngestMetrics
from streams.settings import RedisSettings, Settings


def redis_client(settings: RedisSettings) -> aioredis.Redis:
    """TLS is chosen by the URL scheme (rediss://); `tls = true` upgrades a redis:// URL."""
    url = settings.url
    extra: dict[str, Any] = {}
    if settings.tls or url.startswith("rediss://"):
        url = "rediss://" + url.removeprefix("redis://").removeprefix("rediss://")
        if settings.tls_ca_file:
            extra["ssl_ca_certs"] = str(settings.tls_ca_file)
    return aioredis.Redis.from_url(
        url,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
        **extra,
    )


def producer(settings: Settings) -> AIOKafkaProducer:
    """acks=all and idempotence: a dead letter that the broker acknowledged is not lost."""
    return AIOKafkaProducer(
        **settings.kafka.aiokafka_kwargs(), acks="all", enable_idempotence=True, linger_ms=5
    )


@dataclass
class Wired:
    core: IngestCore
    state: RedisState
    redis: aioredis.Redis
    faults: Faults
    dead_letters: KafkaDeadLetterSink


async def wire_core(settings: Settings, metrics: IngestMetrics, stack: AsyncExitStack) -> Wired:
    """Connect Redis and the DLQ producer, and close them when `stack` closes."""
    client = redis_client(settings.redis)
    stack.push_async_callback(client.aclose)
    await client.ping()
    dlq_producer = producer(settings)
    await dlq_producer.start()
    stack.push_async_callback(dlq_producer.stop)
    state = RedisState(client, settings.state, prefix=settings.redis.key_prefix)
    sink = KafkaDeadLetterSink(dlq_producer, settings.topics.dlq_suffix)
    faults = Faults(settings.faults)
    core = IngestCore(state, sink, metrics, settings.ingest, faults)
    return Wired(core, state, client, faults, sink)
