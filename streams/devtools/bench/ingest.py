"""Benchmarks: figures with their baselines, measured in the same run on the same topic.

Stage `ingest`: the raw consume ceiling (aiokafka `getmany` + decode, nothing else) beside the
ingest path (decode + validate + state apply + commit) through the batch runtime and through the
Faust runtime. Each is repeated and the median quoted; every repeat gets a fresh consumer group and
a fresh Redis key prefix, so each run applies the whole stream to empty state.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.metrics import IngestMetrics
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.limits import RunLimits
from streams.runtimes.loop import run_loop
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.wire.events import decode_engagements
from streams.wire.topics import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class Series:
    """One path's repeated throughput runs (events/s)."""

    name: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else 0.0


def bench_settings(base: Settings, topic: str) -> Settings:
    """A fresh consumer group and key prefix on the shared bench topic; the catalog topic is the
    bench's own (empty), so the worker's catalog consumer reads nobody else's items."""
    tag = uuid.uuid4().hex[:8]
    return base.model_copy(
        update={
            "topics": base.topics.model_copy(
                update={"engagements": topic, "items": f"{topic}-items"}
            ),
            "kafka": base.kafka.model_copy(update={"group_id": f"bench-{tag}"}),
            "redis": base.redis.model_copy(update={"key_prefix": f"bench{tag}"}),
        }
    )


async def consume_ceiling(settings: Settings, topic: str, events: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        **settings.kafka.aiokafka_kwargs(),
        group_id=f"ceiling-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    seen, started = 0, None
    try:
        while seen < events:
            fetched = await consumer.getmany(timeout_ms=500, max_records=2000)
            if fetched and started is None:
                started = time.perf_counter()
            for messages in fetched.values():
                decode_engagements([m.value for m in messages])
                seen += len(messages)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - (started or time.perf_counter()))


async def batch_runtime(settings: Settings, events: int) -> float:
    stats = await BatchRuntime(settings, IngestMetrics(), RunLimits(max_events=events)).run()
    return stats.events / stats.seconds


def faust_runtime(settings: Settings, events: int) -> float:
    """Faust owns its event loop and signals, so it runs as the real `sagestream worker`."""
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        env = dict(os.environ, **settings.to_env())
        cmd = [
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "--runtime",
            "faust",
            "--max-events",
            str(events),
            "--stats",
            str(stats_file),
        ]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=900)
        stats = json.loads(stats_file.read_text())
    return float(stats["events"]) / float(stats["seconds"])


async def drop_prefix(settings: Settings) -> None:
    """Free the repeat's Redis keys so repeats don't grow memory."""
    client = redis_client(settings.redis)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


def _repeat(series: Series, repeats: int, run: Callable[[], float]) -> None:
    for i in range(repeats):
        series.runs.append(run())
        log.info("%s run %d/%d: %.0f events/s", series.name, i + 1, repeats, series.runs[-1])


def run_ingest_bench(base: Settings, events: int, repeats: int) -> dict[str, Any]:
    topic = f"bench-ingest-{uuid.uuid4().hex[:8]}"
    settings = bench_settings(base, topic)
    ensure_topics(settings)
    started = time.perf_counter()
    produce_engagements(
        settings, generate_events(GeneratorConfig(events=events, users=5000, items=10000))
    )
    produce_eps = events / (time.perf_counter() - started)
    ceiling, batch, faust = Series("ceiling"), Series("batch"), Series("faust")
    _repeat(ceiling, repeats, lambda: run_loop(consume_ceiling(settings, topic, events)))

    def one(path: Callable[[Settings, int], float]) -> float:
        fresh = bench_settings(base, topic)
        try:
            return path(fresh, events)
        finally:
            run_loop(drop_prefix(fresh))

    _repeat(batch, repeats, lambda: one(lambda s, n: run_loop(batch_runtime(s, n))))
    _repeat(faust, repeats, lambda: one(faust_runtime))
    return {
        "stage": "ingest",
        "events": events,
        "partitions": settings.topics.partitions,
        "repeats": repeats,
        "produce_eps": round(produce_eps),
        "eps": {s.name: round(s.median) for s in (ceiling, batch, faust)},
        "runs": {s.name: [round(r) for r in s.runs] for s in (ceiling, batch, faust)},
        "ratios": {
            "batch/ceiling": round(batch.median / ceiling.median, 3),
            "faust/ceiling": round(faust.median / ceiling.median, 3),
            "batch/faust": round(batch.median / faust.median, 2),
        },
    }
