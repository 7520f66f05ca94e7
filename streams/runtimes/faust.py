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
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import TP, EventT

from streams.metrics import IngestMetrics
from streams.runtimes.checkpoint import faust_acks_on_next_batch
from streams.runtimes.limits import RunLimits
from streams.runtimes.wiring import EXIT_FATAL, TICK_EVERY_S, Worker, wire_worker
from streams.seams import NO_SEAMS, Seams
from streams.settings import Settings
from streams.wire.records import SourceRecord

log = logging.getLogger(__name__)
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
    def __init__(
        self,
        settings: Settings,
        metrics: IngestMetrics,
        limits: RunLimits,
        seams: Seams = NO_SEAMS,
        datadir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = limits
        self.seams = seams
        # Faust writes a data folder (`<app>-data` in the working directory by default); keep it
        # out of the checkout: a temporary folder removed on exit, unless one is given.
        self._scratch = None if datadir else tempfile.TemporaryDirectory(prefix="sagestream-faust-")
        self.datadir = datadir or Path(self._scratch.name if self._scratch else ".")
        self.processed = 0
        self.started_at = self.last_batch_at = time.monotonic()
        self.first_batch_at: float | None = None
        self._worker: Worker | None = None
        self._finishing = False
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.kafka.group_id,
            broker=[f"kafka://{hp}" for hp in s.kafka.bootstrap_servers.split(",")],
            broker_credentials=_credentials(s),
            datadir=str(self.datadir),
            value_serializer="raw",
            key_serializer="raw",
            store="memory://",
            web_enabled=False,
            topic_disable_leader=True,
            topic_replication_factor=s.topics.replication_factor,  # Faust's own topics too
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=max(4096, 2 * s.ingest.batch_max),
            broker_max_poll_records=s.ingest.batch_max,
            broker_session_timeout=s.kafka.session_timeout_s,
            broker_heartbeat_interval=s.kafka.heartbeat_interval_s,
        )
        topic = app.topic(s.topics.engagements, key_type=bytes, value_type=bytes, internal=False)
        app.agent(topic, name="ingest", concurrency=1)(self.consume)
        app.timer(TICK_EVERY_S)(self._tick)
        return app

    async def consume(self, stream: faust.types.StreamT[Any]) -> None:
        async with AsyncExitStack() as resources:
            worker = await wire_worker(
                self.settings,
                self.metrics,
                resources,
                shards=self._shards,
                commit=faust_acks_on_next_batch,
                on_fatal=_exit_fatal,
                seams=self.seams,
            )
            self._worker = worker
            ingest = self.settings.ingest
            async for events in cast(faust.Stream[bytes], stream).take_events(
                ingest.batch_max, within=ingest.batch_within_s
            ):
                await self._process(worker, events)
                await self._hold_while_paused(worker)

    def _shards(self) -> list[tuple[str, int]]:
        """The partitions this worker owns: their marks are its to re-encode."""
        return sorted((tp.topic, tp.partition) for tp in self.app.consumer.assignment())

    async def _hold_while_paused(self, worker: Worker) -> None:
        """Backpressure: take no further batch while it says so. Faust's own buffer
        (`stream_buffer_maxsize`) then fills and its consumer stops fetching."""
        while worker.backpressure.check():
            await asyncio.sleep(PAUSE_POLL_S)
            self.last_batch_at = time.monotonic()  # waiting, not idle

    async def _process(self, worker: Worker, events: Sequence[EventT[Any]]) -> None:
        records = [_record(e) for e in events]
        if self.first_batch_at is None:
            self.first_batch_at = time.monotonic()
        try:
            outcome = await worker.checkpoint.process(records)
        except BaseException:
            log.critical("batch failed; stopping without ack or commit", exc_info=True)
            _exit_fatal()
        self.processed += len(records)
        self.last_batch_at = time.monotonic()
        lags = worker.record_lag(outcome.next_offsets, self._highwater)
        worker.catch_up.fetched([len(records)], lags)  # Faust hands the batch over once taken
        worker.catch_up.applied()
        if self.limits.max_events is not None and self.processed >= self.limits.max_events:
            await self._finish("processed %d events", self.processed)

    def _highwater(self, topic: str, partition: int) -> int | None:
        """None for a partition revoked while its batch was in flight (its new owner reports
        that lag); asking the client about it would fail."""
        tp = TP(topic, partition)
        if tp not in self.app.consumer.assignment():
            return None
        return cast(int | None, self.app.consumer.highwater(tp))

    async def _tick(self) -> None:
        if self._worker is not None:
            await self._worker.tick()
        idle = self.limits.until_idle_s
        if idle is not None and self._idle_for() > idle:
            await self._finish("idle for %.0fs after %d events", idle, self.processed)

    async def _finish(self, why: str, *args: object) -> None:
        """A bounded run ends with every mark turned into vectors, then stops."""
        if self._finishing:
            return
        self._finishing = True
        updater = self._worker.updater if self._worker is not None else None
        if updater is not None:
            await updater.drain(asyncio.Event())
        self._stop(why, *args)

    def _idle_for(self) -> float:
        """Before the first batch, allow a minute for joining the group and fetching."""
        if self.processed == 0:
            return time.monotonic() - self.started_at - 60.0
        if self._worker is None:
            return time.monotonic() - self.last_batch_at
        return time.monotonic() - self._worker.quiet_since(self.last_batch_at)

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
        self.metrics.serve_from(self.settings.metrics)
        try:
            self.worker.execute_from_commandline()
        except SystemExit as done:
            return int(done.code or 0)
        finally:
            if self._scratch is not None:
                self._scratch.cleanup()
        return 0
