"""The catalog consumer: item content from the items topic into Redis, for cold starts.

An item that arrives here gets its content stored and a "content arrived" mark
(`state.CatalogStore.put`); the next re-encode pass gives it a vector at once, from content alone
when nobody engaged with it yet. It runs beside the engagement loop in every worker, in its own
consumer group (`<group>.catalog`), so each item is stored by one worker; a put is idempotent
apart from the content version it bumps, which only re-encodes the item once more. Bad records go
to `<items topic>.dlq` like bad engagements, and offsets are committed after the put returned.
It joins its group with the engagement consumer's session timeout and heartbeat, so a dead
worker's catalog partitions move to the others as soon as its engagement partitions do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from state import CatalogStore
from state.retry import retry_async
from streams.ingest.core import is_transient
from streams.metrics import IngestMetrics
from streams.settings import Settings
from streams.wire.dlq import DeadLetter, DeadLetterSink
from streams.wire.events import CatalogItem, Rejection, decode_catalog_items
from streams.wire.records import SourceRecord, records_of

log = logging.getLogger(__name__)


class CatalogConsumer:
    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        dead_letters: DeadLetterSink,
        metrics: IngestMetrics,
    ) -> None:
        self._settings = settings
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._backoff = settings.retry.backoff()
        r = settings.redis
        self._store = CatalogStore(
            client, r.key_prefix, wait_replicas=r.wait_replicas, wait_timeout_s=r.wait_timeout_s
        )
        self._stop = asyncio.Event()
        self.stored = 0
        # monotonic time of the last records fetched or stored: a burst-mode worker is idle only
        # once this consumer is quiet too (see `Worker.quiet_since`)
        self.active_at: float | None = None

    async def run(self) -> None:
        kafka = AIOKafkaConsumer(
            self._settings.topics.items,
            **self._settings.kafka.aiokafka_kwargs(),
            group_id=f"{self._settings.kafka.group_id}.catalog",
            **self._settings.kafka.member_kwargs(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._settings.ingest.batch_max,
        )
        await kafka.start()
        try:
            while not self._stop.is_set():
                fetched = await kafka.getmany(timeout_ms=500)
                records = records_of(fetched)
                if records:
                    self.active_at = time.monotonic()
                    await self._handle(records)
                    self.active_at = time.monotonic()
                    await kafka.commit(
                        {TopicPartition(r.topic, r.partition): r.offset + 1 for r in records}
                    )
        finally:
            await kafka.stop()

    async def _handle(self, records: list[SourceRecord]) -> None:
        """Dead letters first (acknowledged), then the content; retried while Redis is away."""
        decoded = decode_catalog_items([r.value or b"" for r in records])
        letters = [
            DeadLetter(r, d)
            for r, d in zip(records, decoded, strict=True)
            if isinstance(d, Rejection)
        ]
        items = [d for d in decoded if isinstance(d, CatalogItem)]
        if letters:
            await retry_async(
                lambda: self._dead_letters.send(letters),
                what="catalog dead letters",
                backoff=self._backoff,
                transient=is_transient,
            )
            for letter in letters:
                self._metrics.invalid.labels(reason=letter.rejection.reason).inc()
            topic = self._settings.topics.items
            self._metrics.dead_lettered.labels(topic=topic).inc(len(letters))
        self.stored += await retry_async(
            lambda: self._store.put(items),
            what="catalog put",
            backoff=self._backoff,
            transient=is_transient,
        )

    async def stop(self) -> None:
        self._stop.set()


def start_catalog_consumer(
    consumer: CatalogConsumer, resources: AsyncExitStack, on_fatal: Callable[[], None]
) -> CatalogConsumer:
    """Run the consumer as a task that stops with `resources`; a crash of it stops the worker."""
    task = asyncio.create_task(consumer.run())

    def check(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.critical("the catalog consumer failed", exc_info=done.exception())
            on_fatal()

    task.add_done_callback(check)

    async def stop() -> None:
        await consumer.stop()
        with suppress(asyncio.CancelledError):
            await task

    resources.push_async_callback(stop)
    return consumer
