"""The batch runtime: aiokafka `getmany` feeding the same ingest core, committing after each batch.

Faust's per-event machinery costs about 20 times the raw client (ARCHITECTURE.md); this runtime
pays it once per batch. The loop is strictly sequential: fetch, process (everything awaited),
commit exactly the offsets the core returned, fetch again. A rebalance can only happen inside
`getmany`, when nothing is in flight, so a revoked partition never has an unfinished batch.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.catalog_consumer import start_catalog_consumer
from streams.ingest import BatchOutcome
from streams.limits import RunLimits
from streams.metrics import IngestMetrics
from streams.records import SourceRecord
from streams.resources import Wired, wire_core
from streams.settings import Settings
from streams.updater import Updater, start_updater

log = logging.getLogger(__name__)
BACKLOG_EVERY_S = 5.0


@dataclass
class RunStats:
    events: int = 0
    batches: int = 0
    first_batch_at: float | None = None
    last_batch_at: float | None = None
    committed: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        if self.first_batch_at is None or self.last_batch_at is None:
            return 0.0
        return self.last_batch_at - self.first_batch_at


def consumer(settings: Settings, topic: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        **settings.kafka.aiokafka_kwargs(),
        group_id=settings.kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.ingest.batch_max,
        session_timeout_ms=int(settings.kafka.session_timeout_s * 1000),
        heartbeat_interval_ms=int(settings.kafka.heartbeat_interval_s * 1000),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


class BatchRuntime:
    def __init__(self, settings: Settings, metrics: IngestMetrics, limits: RunLimits) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = limits
        self.stats = RunStats()
        self._stopping = asyncio.Event()
        self._failed = False
        self._paused = False

    def stop(self) -> None:
        self._stopping.set()

    def _fail(self) -> None:
        self._failed = True
        self.stop()

    async def run(self) -> RunStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        async with AsyncExitStack() as resources:
            wired = await wire_core(self.settings, self.metrics, resources)
            kafka = consumer(self.settings, self.settings.topics.engagements)
            await kafka.start()
            resources.push_async_callback(kafka.stop)
            updater = await start_updater(
                self.settings,
                wired.redis,
                self.metrics,
                lambda: self._shards(kafka),
                resources,
                on_fatal=self._fail,
                faults=wired.faults,
            )
            start_catalog_consumer(self.settings, wired, self.metrics, resources, self._fail)
            await self._loop(kafka, wired, updater)
            if updater is not None and not self._stopping.is_set():
                await updater.drain(self._stopping)  # a bounded run ends with fresh vectors
            if self._failed:
                raise RuntimeError("the updater failed; see the log")
        return self.stats

    def _shards(self, kafka: AIOKafkaConsumer) -> list[tuple[str, int]]:
        """The partitions this worker owns: their marks are its to re-encode."""
        return sorted((tp.topic, tp.partition) for tp in kafka.assignment())

    async def _loop(self, kafka: AIOKafkaConsumer, wired: Wired, updater: Updater | None) -> None:
        idle_since = backlog_at = time.monotonic()
        within_ms = int(self.settings.ingest.batch_within_s * 1000)
        while not self._stopping.is_set():
            if self._backpressure(kafka, updater):
                idle_since = time.monotonic()  # a paused worker is waiting, not idle
            fetched = await kafka.getmany(
                timeout_ms=within_ms, max_records=self.settings.ingest.batch_max
            )
            records = [
                SourceRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
                for messages in fetched.values()
                for m in messages
            ]
            if records:
                self.stats.first_batch_at = self.stats.first_batch_at or time.monotonic()
                outcome = await wired.core.process(records)
                wired.faults.at("before_commit")
                await self._commit(kafka, outcome)
                self._count(len(records), kafka, outcome)
                idle_since = time.monotonic()
            if time.monotonic() - backlog_at > BACKLOG_EVERY_S:
                await self._record_backlog(wired, updater)
                backlog_at = time.monotonic()
            if self._limit_reached(idle_since):
                break

    async def _record_backlog(self, wired: Wired, updater: Updater | None) -> None:
        backlog = await wired.state.dirty_backlog()
        for kind, count in backlog.items():
            self.metrics.dirty_backlog.labels(kind=kind).set(count)
        if updater is not None:
            updater.observe_backlog(sum(backlog.values()))

    def _backpressure(self, kafka: AIOKafkaConsumer, updater: Updater | None) -> bool:
        """Pause every owned partition while the updater cannot keep up; True while paused.

        Paused partitions still heartbeat and rebalance; `getmany` just returns nothing. Pausing
        is re-applied each round, since a rebalance hands out partitions unpaused."""
        paused = updater is not None and updater.paused
        if paused:
            kafka.pause(*kafka.assignment())
        elif kafka.paused():
            kafka.resume(*kafka.paused())
        if paused != self._paused:
            log.warning(
                "consumption %s", "paused: vector updates are behind" if paused else "resumed"
            )
            self._paused = paused
            self.metrics.paused.set(int(paused))
        return paused

    async def _commit(self, kafka: AIOKafkaConsumer, outcome: BatchOutcome) -> None:
        offsets = {TopicPartition(t, p): o for (t, p), o in outcome.next_offsets.items()}
        await kafka.commit(offsets)
        self.stats.committed.update(outcome.next_offsets)

    def _count(self, n: int, kafka: AIOKafkaConsumer, outcome: BatchOutcome) -> None:
        self.stats.last_batch_at = time.monotonic()
        self.stats.events += n
        self.stats.batches += 1
        for (topic, partition), next_offset in outcome.next_offsets.items():
            highwater = kafka.highwater(TopicPartition(topic, partition))
            if highwater is not None:
                lag = max(0, highwater - next_offset)
                self.metrics.lag.labels(topic=topic, partition=str(partition)).set(lag)

    def _limit_reached(self, idle_since: float) -> bool:
        limits = self.limits
        if limits.max_events is not None and self.stats.events >= limits.max_events:
            return True
        if limits.until_idle_s is None:
            return False
        grace = 0.0 if self.stats.events else 60.0
        return time.monotonic() - idle_since > limits.until_idle_s + grace
