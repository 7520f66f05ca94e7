"""The vector updater beside the consumer: the re-encode scheduler on the worker's connections.

Commit protocol: the runtime commits an offset once the state script returned, because the dirty
marks that script wrote are durable in Redis (AOF) and the scheduler clears a mark only after the
vectors it implies were upserted with wait=True. A crash between the two leaves the marks, and
the next worker to own the partition re-encodes them; the state_version guard in Qdrant makes any
repeat a no-op. So nothing acknowledged is ever lost, and no vector moves back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress

import redis.asyncio as aioredis

from encoders.registry import ModelRegistry
from state import StateUnavailableError, VectorStore, VectorStoreConfig
from state.vectors import canonical_version
from streams.metrics import IngestMetrics
from streams.reencode import Reencoder
from streams.settings import Settings

log = logging.getLogger(__name__)
RETRY_INITIAL_S, RETRY_MAX_S = 0.2, 5.0
Shards = Callable[[], Sequence[tuple[str, int]]]


class Updater:
    """Runs passes in the background until stopped; `drain` finishes the backlog (burst mode)."""

    def __init__(
        self,
        reencoder: Reencoder,
        shards: Shards,
        metrics: IngestMetrics,
        on_fatal: Callable[[], None],
    ) -> None:
        self._reencoder = reencoder
        self._shards = shards
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """Retry passes while a store is unreachable (marks stay); stop the worker on a bug."""
        delay = RETRY_INITIAL_S
        while not self._stop.is_set():
            try:
                await self._reencoder.run(self._shards, self._stop, self._metrics.observe_pass)
            except StateUnavailableError as exc:
                log.warning("re-encode pass failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception:
                log.critical("the updater failed; stopping the worker", exc_info=True)
                self._on_fatal()
                raise

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            with suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Stop the background loop, then pass until no marks are left."""
        await self.stop()
        for stats in await self._reencoder.run_until_idle(self._shards()):
            self._metrics.observe_pass(stats)


def vector_store(settings: Settings) -> VectorStore:
    q = settings.qdrant
    return VectorStore(
        VectorStoreConfig(
            url=q.url,
            path=None if q.url else str(q.path),
            api_key=q.api_key.get_secret_value() if q.api_key else None,
        )
    )


def _serve_first_model(store: VectorStore, version: str, dim: int) -> None:
    """On a first deployment the aliases point at the new, still empty, collections at once.

    A later version switches by dual writes, a backfill and one alias flip (not built yet): until
    then a worker on a new version writes its own collections and leaves the aliases alone.
    """
    store.prepare(version, dim)
    serving = store.serving_version()
    if serving is None:
        store.flip(version)
    elif serving != canonical_version(version):
        log.warning("aliases serve %s; %s is written to its own collections", serving, version)


async def start_updater(
    settings: Settings,
    client: aioredis.Redis,
    metrics: IngestMetrics,
    shards: Shards,
    resources: AsyncExitStack,
    on_fatal: Callable[[], None],
) -> Updater | None:
    """The updater for the promoted model, or None when there is no model to serve yet."""
    root = settings.models.registry
    registry = ModelRegistry(root) if root is not None else None
    version = registry.promoted() if registry is not None else None
    if registry is None or version is None:
        log.info("no promoted model: ingest only, no vectors")
        return None
    bundle = await asyncio.to_thread(registry.load, version, settings.models.threads)
    store = vector_store(settings)
    resources.callback(store.close)
    await asyncio.to_thread(_serve_first_model, store, version, bundle.dim)
    reencoder = Reencoder.connect(
        client, settings.state, settings.redis.key_prefix, store, bundle, settings.reencode
    )
    metrics.model_version.labels(version=version).set(1)
    updater = Updater(reencoder, shards, metrics, on_fatal)
    resources.push_async_callback(updater.stop)
    updater.start()
    log.info(
        "serving model %s; vectors go to %s", version, settings.qdrant.url or settings.qdrant.path
    )
    return updater
