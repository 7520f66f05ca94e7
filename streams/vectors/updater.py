"""The vector updater beside the consumer: re-encode passes on the worker's connections.

It runs `Reencoder.run` in the background and restarts it under the one retry policy while a
dependency is unreachable (the marks stay, so nothing is lost); any other error stops the worker.
Between passes it lets the `ModelWatcher` switch to a newly promoted model (switch.py). Its place
in the commit order is the last step of streams/runtimes/checkpoint.py: a mark is cleared only
after the vectors it implies are stored. It reports `failing` to the runtime's backpressure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress

import redis.asyncio as aioredis

from encoders.exceptions import ModelRejected
from encoders.registry import ModelRegistry
from state import StateUnavailableError, VectorStore
from state.retry import Backoff, Stopped, of_types, retry_async
from streams.metrics import IngestMetrics
from streams.seams import Seams
from streams.settings import Settings
from streams.vectors.reencoder import Reencoder
from streams.vectors.rules import PassStats
from streams.vectors.store import serving_bundle, vector_store
from streams.vectors.switch import ModelWatcher

log = logging.getLogger(__name__)
Shards = Callable[[], Sequence[tuple[str, int]]]
unavailable = of_types(StateUnavailableError)


class Updater:
    """Runs passes in the background until stopped; `drain` finishes the backlog (burst mode)."""

    def __init__(
        self,
        reencoder: Reencoder,
        shards: Shards,
        metrics: IngestMetrics,
        on_fatal: Callable[[], None],
        store: VectorStore,
        backoff: Backoff,
        watcher: ModelWatcher | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self._reencoder = reencoder
        self._shards = shards
        self._metrics = metrics
        self._on_fatal = on_fatal
        self.store = store
        self._backoff = backoff
        self.watcher = watcher
        self._hold = hold  # passes wait while it says the ingest catches up (catchup.py)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    @property
    def version(self) -> str:
        """The model version this worker encodes with now."""
        return self._reencoder.bundle.version

    @property
    def failing(self) -> bool:
        """True from a pass that failed on an unreachable dependency until a pass succeeds."""
        return self._failing

    async def _between(self) -> None:
        if self.watcher is not None:
            await self.watcher.step()

    async def _passes(self) -> None:
        await self._reencoder.run(
            self._shards, self._stop, self._passed, between=self._between, hold=self._hold
        )

    def _failed(self, _error: BaseException, _attempt: int, _wait: float) -> None:
        self._failing = True

    async def _supervise(self) -> None:
        """Restart passes while a store is unreachable (marks stay); stop the worker on a bug."""
        try:
            await retry_async(
                self._passes,
                what="re-encode pass",
                backoff=self._backoff,
                transient=unavailable,
                on_retry=self._failed,
                stop=self._stop,
            )
        except Stopped:
            return
        except Exception:
            log.critical("the updater failed; stopping the worker", exc_info=True)
            self._on_fatal()
            raise

    def _passed(self, stats: PassStats) -> None:
        self._failing = False
        self._metrics.observe_pass(stats)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            with suppress(asyncio.CancelledError):
                await task

    async def drain(self, stopping: asyncio.Event) -> None:
        """Stop the background loop, then pass until no marks are left (retrying while a store
        is unreachable, unless the worker is told to stop)."""
        await self.stop()

        async def until_idle() -> None:
            for stats in await self._reencoder.run_until_idle(self._shards()):
                self._metrics.observe_pass(stats)

        with suppress(Stopped):
            await retry_async(
                until_idle,
                what="drain pass",
                backoff=self._backoff,
                transient=unavailable,
                stop=stopping,
            )


async def start_updater(
    settings: Settings,
    client: aioredis.Redis,
    metrics: IngestMetrics,
    shards: Shards,
    resources: AsyncExitStack,
    on_fatal: Callable[[], None],
    seams: Seams,
    hold: Callable[[], bool] | None = None,
) -> Updater | None:
    """The updater for the promoted model, or None when there is no model to serve yet."""
    root = settings.models.registry
    registry = ModelRegistry(root) if root is not None else None
    promoted = registry.promoted() if registry is not None else None
    if registry is None or promoted is None:
        log.info("no promoted model: ingest only, no vectors")
        return None
    store = vector_store(settings, seams)
    resources.callback(store.close)
    try:
        bundle, pending = await asyncio.to_thread(
            serving_bundle, registry, store, promoted, settings.models.threads
        )
    except ModelRejected as refused:  # nothing loadable to write: ingest on, rather than loop
        metrics.model_rejections.labels(version=refused.version).inc()
        metrics.model_refused.set(1)
        log.error(
            "%s, and no other version is served: ingest only, no vectors, until a good version "
            "is promoted and the worker restarted",
            refused,
        )
        return None
    reencoder = Reencoder.connect(
        client, settings.state, settings.redis.key_prefix, store, bundle, settings.reencode
    )
    reencoder.on_vector_write(lambda: seams.at("after_vector_write"))
    watcher = ModelWatcher(registry, reencoder, store, client, settings, metrics)
    if pending is not None:
        await watcher.poll()
    metrics.model_version.labels(version=bundle.version).set(1)
    updater = Updater(
        reencoder, shards, metrics, on_fatal, store, settings.retry.backoff(), watcher, hold
    )
    resources.push_async_callback(updater.stop)
    updater.start()
    log.info(
        "serving model %s; vectors go to %s",
        bundle.version,
        settings.qdrant.url or settings.qdrant.path,
    )
    return updater
