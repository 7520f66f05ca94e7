"""The naive baseline of `sagestream bench --stage e2e`: one event at a time, as first written.

A Faust agent (the Faust runtime's app, concurrency 1) takes each event and, before the next one:
applies it through `RedisState.apply`; reads the item's state and content and encodes its vector
with onnxruntime; reads the user's sequence, takes the item vectors its history needs from Qdrant
(encoding any that are missing) and encodes the user; upserts both vectors with ``wait=True``.
Nothing is batched, cached or coalesced: that is what the batch runtime and the updater add.
It runs in a process of its own, because Faust owns its event loop and signals.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
import numpy as np

from encoders.data import FloatArray, encoder_window
from encoders.registry import ModelRegistry
from encoders.runtime import EncoderBundle
from state import (
    CatalogRecord,
    CatalogStore,
    EncodeInputs,
    RedisState,
    UserInputs,
    VectorRecord,
    VectorStore,
)
from streams.metrics import IngestMetrics
from streams.runtimes.client_logs import quiet_chatty_loggers
from streams.runtimes.faust import FaustRuntime
from streams.runtimes.limits import RunLimits
from streams.runtimes.wiring import EXIT_FATAL, redis_client
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.events import Engagement, decode_engagement

log = logging.getLogger(__name__)
IDLE_STOP_S = 15.0  # stop when the events run out before the limit
TIMEOUT_S = 3600.0


@dataclass
class NaivePath:
    """Per event: apply, read, encode the item and the user, upsert both (the baseline)."""

    state: RedisState
    inputs: EncodeInputs
    catalog: CatalogStore
    store: VectorStore
    bundle: EncoderBundle
    version: str

    @classmethod
    async def open(cls, settings: Settings, resources: AsyncExitStack) -> NaivePath:
        client = redis_client(settings.redis)
        resources.push_async_callback(client.aclose)
        registry = ModelRegistry(cast(Path, settings.models.registry))
        version = cast(str, registry.promoted())
        bundle = registry.load(version, settings.models.threads)
        store = vector_store(settings)
        resources.callback(store.close)
        store.prepare(version, bundle.dim)
        prefix = settings.redis.key_prefix
        return cls(
            RedisState(client, settings.state, prefix),
            EncodeInputs(client, settings.state, prefix),
            CatalogStore(client, prefix),
            store,
            bundle,
            version,
        )

    async def handle(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        event = decode_engagement(value)
        if not isinstance(event, Engagement):
            return
        await self.state.apply(topic, partition, [(offset, event)])
        item_vector, item_version = await self.item_vector(event.item_id)
        records = [VectorRecord("items", event.item_id, item_vector, item_version, event.ts)]
        user = (await self.inputs.users(topic, partition, [event.user_id]))[event.user_id]
        user_vector = await self.user_vector(user, {event.item_id: item_vector})
        if user_vector is not None:
            ts = user.ts_max if user.ts_max is not None else event.ts
            records.append(VectorRecord("users", user.user_id, user_vector, user.version, ts))
        self.store.upsert(self.version, records)

    async def item_vector(self, item_id: str) -> tuple[FloatArray, int]:
        item = (await self.inputs.items([item_id], self.bundle.neighbours))[item_id]
        ids = [item_id, *(n for n, _ in item.neighbours)]
        found = await self.catalog.get(ids)
        content = self.bundle.content_vectors([found.get(i) or CatalogRecord.empty(i) for i in ids])
        weights = np.asarray([w for _, w in item.neighbours], dtype=np.float32)
        degree = np.asarray([item.degree], dtype=np.float32)
        vector = self.bundle.item_vectors(content[:1], [content[1:]], [weights], degree)
        return vector.reshape(-1), item.version  # [1, D] -> [D]

    async def user_vector(
        self, user: UserInputs, known: Mapping[str, FloatArray]
    ) -> FloatArray | None:
        history = encoder_window(user.sequence, self.bundle.seq_len)
        if not history:
            return None
        wanted = {item_id for item_id, _, _ in history} - set(known)
        stored = self.store.get("items", wanted, version=self.version) if wanted else {}
        vectors = {**known, **{item_id: point.vector for item_id, point in stored.items()}}
        for item_id in wanted - set(stored):
            vectors[item_id], _ = await self.item_vector(item_id)
        rows = (
            np.stack([vectors[item_id] for item_id, _, _ in history]),
            np.asarray([action for _, action, _ in history], dtype=np.int64),
            np.asarray([ts for _, _, ts in history], dtype=np.float64),
        )
        return self.bundle.user_vectors([rows]).reshape(-1)  # [1, D] -> [D]


class NaiveRuntime(FaustRuntime):
    """The Faust runtime's app and stop rules, with an agent that takes one event at a time."""

    async def consume(self, stream: faust.types.StreamT[Any]) -> None:
        limit = self.limits.max_events
        async with AsyncExitStack() as resources:
            naive = await NaivePath.open(self.settings, resources)
            async for event in cast(faust.Stream[bytes], stream).events():
                if limit is not None and self.processed >= limit:
                    continue  # stopping: the rest is not measured
                m = event.message
                self.first_batch_at = self.first_batch_at or time.monotonic()
                try:
                    await naive.handle(m.topic, m.partition, m.offset, cast(bytes, m.value))
                except Exception:  # Faust would log it and wait forever: end the process
                    log.critical("naive: event failed", exc_info=True)
                    logging.shutdown()
                    os._exit(EXIT_FATAL)
                self.processed += 1
                self.last_batch_at = time.monotonic()
                if self.processed % 250 == 0:
                    log.info("naive: %d/%s events", self.processed, limit)
                if limit is not None and self.processed >= limit:
                    self._stop("processed %d events", self.processed)


def _naive_process(env: dict[str, str], events: int, stats_file: str) -> None:
    """The naive worker's own process, with the settings of its parent."""
    os.environ.update(env)
    quiet_chatty_loggers()
    limits = RunLimits(max_events=events, until_idle_s=IDLE_STOP_S)
    runtime = NaiveRuntime(Settings.load(), IngestMetrics(), limits)
    code = runtime.run()
    stats = {"events": runtime.processed, "seconds": runtime.busy_seconds}
    Path(stats_file).write_text(json.dumps(stats))
    raise SystemExit(code)


def spawn(target: Callable[..., None], *args: object) -> multiprocessing.process.BaseProcess:
    """`target(*args)` in a fresh interpreter (nothing inherited but what `args` carry)."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def run_naive(settings: Settings, events: int, work: Path) -> dict[str, float]:
    """The naive worker on the first `events` it consumes; its events and busy seconds."""
    stats_file = work / "naive.json"
    log.info("naive: a Faust agent, one event at a time, on the first %d events", events)
    process = spawn(_naive_process, settings.to_env(), events, str(stats_file))
    process.join(TIMEOUT_S)
    if process.is_alive():
        process.terminate()
        process.join()
    if process.exitcode != 0 or not stats_file.exists():
        raise RuntimeError(f"the naive worker failed (exit code {process.exitcode})")
    stats: dict[str, float] = json.loads(stats_file.read_text())
    return stats
