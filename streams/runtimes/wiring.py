"""What both runtimes share: clients built from settings inside the running loop, and one worker
wired from them (ingest core, commit order, updater, catalog consumer, backpressure), plus the
periodic tick and the lag gauge. A runtime adds only its loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from redis.asyncio.cluster import ClusterNode

from state import RedisState
from streams.health import start_heartbeat
from streams.ingest.catalog import CatalogConsumer, start_catalog_consumer
from streams.ingest.core import IngestCore, is_transient
from streams.metrics import IngestMetrics
from streams.runtimes.backpressure import Backpressure
from streams.runtimes.catchup import CatchUp
from streams.runtimes.checkpoint import Checkpoint, Commit
from streams.runtimes.client_logs import quiet_client_repeats
from streams.runtimes.heap import settle_start_up_heap
from streams.seams import NO_SEAMS, Seams
from streams.settings import RedisSettings, Settings
from streams.vectors.updater import Updater, start_updater
from streams.wire.dlq import KafkaDeadLetterSink

log = logging.getLogger(__name__)
EXIT_FATAL = 70  # EX_SOFTWARE: a worker that stopped rather than commit past a failure
TICK_EVERY_S = 5.0  # how often the backlog is counted (gauges and backpressure)
Shards = Callable[[], Sequence[tuple[str, int]]]
Highwater = Callable[[str, int], int | None]


def redis_client(settings: RedisSettings) -> aioredis.Redis:
    """TLS is chosen by the URL scheme (rediss://); `tls = true` upgrades a redis:// URL.

    With `cluster_nodes`, redis-py's cluster client: it has the same commands, scripts and
    (non-transactional) pipelines as the single-server client, so the stores take either."""
    url = settings.url
    extra: dict[str, Any] = {}
    tls = settings.tls or url.startswith("rediss://")
    if tls and settings.tls_ca_file:
        extra["ssl_ca_certs"] = str(settings.tls_ca_file)
    common: dict[str, Any] = {
        "username": settings.username,
        "password": settings.password.get_secret_value() if settings.password else None,
        "health_check_interval": 30,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        **extra,
    }
    if settings.cluster_nodes:
        nodes = [
            ClusterNode(host, int(port))
            for host, _, port in (node.rpartition(":") for node in settings.cluster_nodes)
        ]
        cluster = aioredis.RedisCluster(startup_nodes=nodes, ssl=tls, **common)
        return cast(aioredis.Redis, cluster)
    if tls:
        url = "rediss://" + url.removeprefix("redis://").removeprefix("rediss://")
    return aioredis.Redis.from_url(url, **common)


def producer(settings: Settings) -> AIOKafkaProducer:
    """acks=all and idempotence: a dead letter that the broker acknowledged is not lost."""
    return AIOKafkaProducer(
        **settings.kafka.aiokafka_kwargs(), acks="all", enable_idempotence=True, linger_ms=5
    )


@dataclass
class Worker:
    checkpoint: Checkpoint
    state: RedisState
    redis: aioredis.Redis
    backpressure: Backpressure
    catch_up: CatchUp
    updater: Updater | None
    metrics: IngestMetrics
    catalog: CatalogConsumer | None = None

    def quiet_since(self, last_engagements: float) -> float:
        """When this worker last read anything (monotonic): its engagements' last batch or the
        catalog consumer's last records. Burst mode (`--until-idle`) stops only once both went
        quiet, so a catalog share that reaches a worker late is still stored by it."""
        catalog = self.catalog.active_at if self.catalog is not None else None
        return last_engagements if catalog is None else max(last_engagements, catalog)

    async def tick(self) -> None:
        """Count the dirty backlog: the gauges, and the backlog reason of backpressure.

        A count that fails on a transient error is skipped: the next tick is its retry, and
        nothing waits on it (backpressure keeps its last verdict meanwhile)."""
        try:
            backlog = await self.state.dirty_backlog()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.metrics.retries.labels(step="backlog").inc()
            log.warning("dirty backlog not counted (%s); trying again next tick", exc)
            return
        for kind, count in backlog.items():
            self.metrics.dirty_backlog.labels(kind=kind).set(count)
        self.backpressure.observe_backlog(sum(backlog.values()))

    def readiness(self) -> dict[str, Any]:
        """What /readyz tells beside its verdict: why consumption is paused, what is served."""
        bp = self.backpressure
        return {
            "paused": list(bp.reasons),
            "paused_for_s": round(time.monotonic() - bp.since, 1) if bp.since else 0.0,
            "model": self.updater.version if self.updater is not None else None,
        }

    def record_lag(
        self, next_offsets: Mapping[tuple[str, int], int], highwater: Highwater
    ) -> list[int]:
        """Set the lag gauge of each partition in a batch; returns those lags."""
        lags = []
        for (topic, partition), next_offset in next_offsets.items():
            end = highwater(topic, partition)
            if end is not None:
                lags.append(max(0, end - next_offset))
                self.metrics.lag.labels(topic=topic, partition=str(partition)).set(lags[-1])
        return lags


async def wire_worker(
    settings: Settings,
    metrics: IngestMetrics,
    resources: AsyncExitStack,
    *,
    shards: Shards,
    commit: Commit,
    on_fatal: Callable[[], None],
    seams: Seams = NO_SEAMS,
) -> Worker:
    """Connect Redis and the dead-letter producer, start the updater and the catalog consumer;
    everything closes when `resources` closes."""
    quiet_client_repeats()
    client = redis_client(settings.redis)
    resources.push_async_callback(client.aclose)
    await client.ping()
    dlq_producer = producer(settings)
    await dlq_producer.start()
    resources.push_async_callback(dlq_producer.stop)
    r = settings.redis
    state = RedisState(
        client,
        settings.state,
        prefix=r.key_prefix,
        wait_replicas=r.wait_replicas,
        wait_timeout_s=r.wait_timeout_s,
    )
    sink = KafkaDeadLetterSink(dlq_producer, settings.topics.dlq_suffix)
    core = IngestCore(state, sink, metrics, settings.retry.backoff(), seams)
    backpressure = Backpressure(settings.reencode.max_backlog, metrics)
    catch_up = CatchUp(settings.ingest.batch_max, backpressure, metrics)
    updater = await start_updater(
        settings, client, metrics, shards, resources, on_fatal, seams, catch_up.holds
    )
    if updater is not None:
        store = updater.store
        backpressure.watch(lambda: store.failing_since is not None, lambda: updater.failing)
    catalog = CatalogConsumer(settings, client, sink, metrics)
    start_catalog_consumer(catalog, resources, on_fatal)
    checkpoint = Checkpoint(core, commit, seams)
    worker = Worker(checkpoint, state, client, backpressure, catch_up, updater, metrics, catalog)
    resources.callback(start_heartbeat(metrics.health))
    metrics.health.started(worker.readiness)
    resources.callback(metrics.health.stopping)  # closes first: unready before anything stops
    settle_start_up_heap()
    return worker
