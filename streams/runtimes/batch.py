"""The batch runtime: aiokafka `getmany` feeding the same ingest core, committing after each batch.

Faust's per-event machinery costs about 20 times the raw client (ARCHITECTURE.md); this runtime
pays it once per batch. The loop is strictly sequential: fetch, then the commit order of
checkpoint.py (everything awaited), fetch again. The group may rebalance in the background
while a batch is in flight; the commit then leaves out the partitions this worker lost (their
new owners replay from the last commit, a no-op on the Redis watermark).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, InconsistentGroupProtocolError

from streams.exceptions import ConfigError
from streams.metrics import IngestMetrics
from streams.runtimes.limits import RunLimits
from streams.runtimes.wiring import TICK_EVERY_S, Worker, wire_worker
from streams.seams import NO_SEAMS, Seams
from streams.settings import Settings
from streams.wire.records import records_of

log = logging.getLogger(__name__)


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
        **settings.kafka.member_kwargs(),
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


def owned_highwater(kafka: AIOKafkaConsumer, topic: str, partition: int) -> int | None:
    """The log end of a partition this worker still owns; None for one revoked while its batch
    was in flight (aiokafka asserts on those; the new owner reports that lag)."""
    tp = TopicPartition(topic, partition)
    return kafka.highwater(tp) if tp in kafka.assignment() else None


def batch_ends(
    fetched: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
) -> dict[tuple[str, int], int]:
    """The offset after each partition's last record in a batch: its lag is what waits behind."""
    return {
        (tp.topic, tp.partition): records[-1].offset + 1
        for tp, records in fetched.items()
        if records
    }


async def fetch_fair(
    kafka: AIOKafkaConsumer, timeout_ms: int, per_partition: int
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """One batch: up to `per_partition` records of every readable partition.

    aiokafka's `getmany` drains one partition's buffered fetch (up to 8 MiB here) before it
    touches the next, so a backlog arrived a partition at a time: every catch-up batch held one
    shard and the ingest core's concurrent applies, one script per partition (per master on a
    Redis Cluster), ran one after another. Asking each partition for its records keeps them all
    in every batch, and each script call as long as before (a share of one total made them
    shorter, which cost a single Redis more than the overlap gained); a live batch is smaller
    than any cap and comes whole from the first call."""
    fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    fetched = await kafka.getmany(timeout_ms=timeout_ms, max_records=per_partition)
    for tp in sorted(kafka.assignment() - kafka.paused()):
        room = per_partition - len(fetched.get(tp, ()))
        if room <= 0:
            continue
        more = (await kafka.getmany(tp, timeout_ms=0, max_records=room)).get(tp)
        if more:
            fetched[tp] = [*fetched.get(tp, ()), *more]
    return fetched


class BatchRuntime:
    def __init__(
        self,
        settings: Settings,
        metrics: IngestMetrics,
        limits: RunLimits,
        seams: Seams = NO_SEAMS,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = limits
        self.seams = seams
        self.stats = RunStats()
        self._stopping = asyncio.Event()
        self._failed = False

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
            kafka = consumer(self.settings, self.settings.topics.engagements)
            resources.push_async_callback(kafka.stop)
            try:
                await kafka.start()
            except InconsistentGroupProtocolError as exc:
                raise ConfigError(
                    f"consumer group {self.settings.kafka.group_id!r} has workers of the Faust "
                    "runtime, which assigns partitions another way: every worker of a group runs "
                    "the same --runtime (stop those, or choose another SAGESTREAM_KAFKA__GROUP_ID)"
                ) from exc

            async def commit(offsets: dict[tuple[str, int], int]) -> None:
                await self._commit(kafka, offsets)

            worker = await wire_worker(
                self.settings,
                self.metrics,
                resources,
                shards=lambda: self._shards(kafka),
                commit=commit,
                on_fatal=self._fail,
                seams=self.seams,
            )
            await self._loop(kafka, worker)
            if worker.updater is not None and not self._stopping.is_set():
                await worker.updater.drain(self._stopping)  # a bounded run ends with fresh vectors
            if self._failed:
                raise RuntimeError("the updater failed; see the log")
        return self.stats

    async def _commit(self, kafka: AIOKafkaConsumer, offsets: dict[tuple[str, int], int]) -> None:
        """Commit what this worker still owns. A partition revoked while its batch was in flight
        (the group rebalances in the background) is its new owner's: that one reads on from the
        last commit, and the offset watermark in Redis makes the replay a no-op."""
        owned = kafka.assignment()
        mine = {TopicPartition(t, p): o for (t, p), o in offsets.items()}
        kept = {tp: o for tp, o in mine.items() if tp in owned}
        if len(kept) < len(mine):
            log.info("not committing revoked partitions %s", sorted(set(mine) - set(kept)))
        if not kept:
            return
        try:
            await kafka.commit(kept)
        except CommitFailedError as exc:  # the group moved on mid-commit: same as revoked
            log.info("commit refused by a rebalance (%s); the new owners replay", exc)
            return
        self.stats.committed.update({(tp.topic, tp.partition): o for tp, o in kept.items()})

    def _shards(self, kafka: AIOKafkaConsumer) -> list[tuple[str, int]]:
        """The partitions this worker owns: their marks are its to re-encode."""
        return sorted((tp.topic, tp.partition) for tp in kafka.assignment())

    async def _loop(self, kafka: AIOKafkaConsumer, worker: Worker) -> None:
        idle_since = ticked_at = time.monotonic()
        within_ms = int(self.settings.ingest.batch_within_s * 1000)
        while not self._stopping.is_set():
            if self._hold(kafka, worker):
                idle_since = time.monotonic()  # a paused worker is waiting, not idle
            fetched = await fetch_fair(kafka, within_ms, self.settings.ingest.batch_max)
            records = records_of(fetched)
            # before the apply, so passes know at once to wait for a backlog (catchup.py)
            lags = worker.record_lag(batch_ends(fetched), lambda t, p: owned_highwater(kafka, t, p))
            worker.catch_up.fetched(map(len, fetched.values()), lags)
            if records:
                self.stats.first_batch_at = self.stats.first_batch_at or time.monotonic()
                await worker.checkpoint.process(records)
                self._count(len(records))
                idle_since = time.monotonic()
            worker.catch_up.applied()
            if time.monotonic() - ticked_at > TICK_EVERY_S:
                await worker.tick()
                ticked_at = time.monotonic()
            if self._limit_reached(worker.quiet_since(idle_since)):
                break

    def _hold(self, kafka: AIOKafkaConsumer, worker: Worker) -> bool:
        """Pause every owned partition while backpressure says so; True while paused.

        Paused partitions still heartbeat and rebalance; `getmany` just returns nothing. Pausing
        is re-applied each round, since a rebalance hands out partitions unpaused."""
        paused = worker.backpressure.check()
        if paused:
            kafka.pause(*kafka.assignment())
        elif kafka.paused():
            kafka.resume(*kafka.paused())
        return paused

    def _count(self, n: int) -> None:
        self.stats.last_batch_at = time.monotonic()
        self.stats.events += n
        self.stats.batches += 1

    def _limit_reached(self, idle_since: float) -> bool:
        limits = self.limits
        if limits.max_events is not None and self.stats.events >= limits.max_events:
            return True
        if limits.until_idle_s is None:
            return False
        grace = 0.0 if self.stats.events else 60.0
        return time.monotonic() - idle_since > limits.until_idle_s + grace
