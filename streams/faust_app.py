"""The Faust runtime: one agent, concurrency 1, feeding batches to the ingest core.

Faust acks a `take_events` batch in a `finally` block, even when the agent raised, and commits
acked offsets on its commit interval. So the agent never lets an exception escape: transient
errors are retried inside the core, and anything else ends the process at once (`os._exit`) before
Faust can ack, so the batch is read again after restart and the offset watermark in Redis makes
the replay a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any, cast

import faust
from faust.types import TP, EventT

from streams.catalog_consumer import start_catalog_consumer
from streams.limits import RunLimits
from streams.metrics import IngestMetrics
from streams.records import SourceRecord
from streams.resources import Wired, wire_core
from streams.settings import Settings
from streams.updater import Updater, start_updater

log = logging.getLogger(__name__)
EXIT_FATAL = 70
PAUSE_POLL_S = 0.2


def _exit_fatal() -> None:
    """End the process before Faust can ack anything (see the module docstring)."""
    logging.shutdown()
    os._exit(EXIT_FATAL)


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    ssl_context = settings.kafka.aiokafka_kwargs().get("ssl_context")
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


def _record(event: EventT[Any]) -> SourceRecord:
    m = event.message
    return SourceRecord(m.topic, m.partition, m.offset, m.key, m.value, int(m.timestamp * 1000))


class FaustRuntime:
    def __init__(self, settings: Settings, metrics: IngestMetrics, limits: RunLimits) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = limits
        self.processed = 0
        self.started_at = self.last_batch_at = time.monotonic()
        self.first_batch_at: float | None = None
        self._updater: Updater | None = None
        self._finishing = False
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.kafka.group_id,
            broker=[f"kafka://{hp}" for hp in s.kafka.bootstrap_servers.split(",")],
            broker_credentials=_credentials(s),
            value_serializer="raw",
            key_serializer="raw",
            store="memory://",
            web_enabled=False,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=max(4096, 2 * s.ingest.batch_max),
            broker_max_poll_records=s.ingest.batch_max,
            broker_session_timeout=s.kafka.session_timeout_s,
            broker_heartbeat_interval=s.kafka.heartbeat_interval_s,
        )
        topic = app.topic(s.topics.engagements, key_type=bytes, value_type=bytes, internal=False)
        app.agent(topic, name="ingest", concurrency=1)(self._agent)
        app.timer(5.0)(self._tick)
        return app

    async def _agent(self, stream: faust.types.StreamT[Any]) -> None:
        async with AsyncExitStack() as resources:
            wired = await wire_core(self.settings, self.metrics, resources)
            self._wired = wired
            self._updater = await start_updater(
                self.settings,
                wired.redis,
                self.metrics,
                self._shards,
                resources,
                on_fatal=_exit_fatal,
                faults=wired.faults,
            )
            start_catalog_consumer(self.settings, wired, self.metrics, resources, _exit_fatal)
            ingest = self.settings.ingest
            async for events in cast(faust.Stream[bytes], stream).take_events(
                ingest.batch_max, within=ingest.batch_within_s
            ):
                await self._process(wired, events)
                await self._hold_while_paused()

    def _shards(self) -> list[tuple[str, int]]:
        """The partitions this worker owns: their marks are its to re-encode."""
        return sorted((tp.topic, tp.partition) for tp in self.app.consumer.assignment())

    async def _hold_while_paused(self) -> None:
        """Backpressure: take no further batch while the updater cannot keep up. Faust's own
        buffer (`stream_buffer_maxsize`) then fills and its consumer stops fetching."""
        updater = self._updater
        if updater is None or not updater.paused:
            return
        log.warning("consumption paused: vector updates are behind")
        self.metrics.paused.set(1)
        while updater.paused:
            await asyncio.sleep(PAUSE_POLL_S)
            self.last_batch_at = time.monotonic()  # waiting, not idle
        self.metrics.paused.set(0)
        log.warning("consumption resumed")

    async def _process(self, wired: Wired, events: Sequence[EventT[Any]]) -> None:
        records = [_record(e) for e in events]
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()
        try:
            outcome = await wired.core.process(records)
            wired.faults.at("before_commit")  # Faust acks the batch when the agent moves on
        except BaseException:
            log.critical("batch failed; stopping without ack or commit", exc_info=True)
            _exit_fatal()
        self.processed += len(records)
        self.last_batch_at = time.monotonic()
        self._record_lag(outcome.next_offsets)
        if self.limits.max_events is not None and self.processed >= self.limits.max_events:
            await self._finish("processed %d events", self.processed)

    def _record_lag(self, next_offsets: dict[tuple[str, int], int]) -> None:
        consumer = self.app.consumer
        for (topic, partition), next_offset in next_offsets.items():
            highwater = consumer.highwater(TP(topic, partition))
            if highwater is not None:
                self.metrics.lag.labels(topic=topic, partition=str(partition)).set(
                    max(0, highwater - next_offset)
                )

    async def _tick(self) -> None:
        wired = getattr(self, "_wired", None)
        if wired is not None:
            backlog = await wired.state.dirty_backlog()
            for kind, count in backlog.items():
                self.metrics.dirty_backlog.labels(kind=kind).set(count)
            if self._updater is not None:
                self._updater.observe_backlog(sum(backlog.values()))
        idle = self.limits.until_idle_s
        if idle is not None and self._idle_for() > idle:
            await self._finish("idle for %.0fs after %d events", idle, self.processed)

    async def _finish(self, why: str, *args: object) -> None:
        """A bounded run ends with every mark turned into vectors, then stops."""
        if self._finishing:
            return
        self._finishing = True
        if self._updater is not None:
            await self._updater.drain(asyncio.Event())
        self._stop(why, *args)

    def _idle_for(self) -> float:
        """Before the first batch, allow a minute for joining the group and fetching."""
        if self.processed == 0:
            return time.monotonic() - self.started_at - 60.0
        return time.monotonic() - self.last_batch_at

    def _stop(self, why: str, *args: object) -> None:
        """Stop the way an operator would: SIGTERM runs Faust's own shutdown, which commits."""
        log.info("stopping: " + why, *args)
        os.kill(os.getpid(), signal.SIGTERM)

    @property
    def busy_seconds(self) -> float:
        """From the first batch to the last: excludes group join and idle tail."""
        return self.last_batch_at - self.first_batch_at if self.first_batch_at else 0.0

    def run(self) -> int:
        self.worker = faust.Worker(self.app, loglevel=self.settings.log_level, quiet=True)
        self.metrics.serve(self.settings.metrics.host, self.settings.metrics.port)
        try:
            self.worker.execute_from_commandline()
        except SystemExit as done:
            return int(done.code or 0)
        return 0
