"""The vector updater beside the consumer: the re-encode scheduler on the worker's connections.

Commit protocol: the runtime commits an offset once the state script returned, because the dirty
marks that script wrote are durable in Redis (AOF) and the scheduler clears a mark only after the
vectors it implies were upserted with wait=True. A crash between the two leaves the marks, and
the next worker to own the partition re-encodes them; the state_version guard in Qdrant makes any
repeat a no-op. So nothing acknowledged is ever lost, and no vector moves back.

Backpressure: while the vector store fails, or while more marks wait than `max_backlog`, the
runtime pauses its partitions (`paused`), so Kafka keeps what is not yet consumed and memory stays
bounded; it resumes when the store answers and the backlog is under half the bound.

Between passes the updater polls the registry: a newly promoted version is validated, then
switched to by dual writes, a backfill and one alias flip (streams/lifecycle.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress

import redis.asyncio as aioredis

from encoders.registry import ModelRegistry
from encoders.runtime import EncoderBundle
from state import StateUnavailableError, VectorStore, VectorStoreConfig
from state.vectors import canonical_version
from streams.faults import Faults, OutageStore
from streams.lifecycle import Backfill, ModelSwitch, is_new
from streams.metrics import IngestMetrics
from streams.reencode import Reencoder
from streams.reencode_rules import PassStats
from streams.settings import Settings

log = logging.getLogger(__name__)
RETRY_INITIAL_S, RETRY_MAX_S = 0.2, 5.0
Shards = Callable[[], Sequence[tuple[str, int]]]


class Lifecycle:
    """Notices a newly promoted model, validates it, and drives its switch between passes."""

    def __init__(
        self,
        registry: ModelRegistry,
        reencoder: Reencoder,
        store: VectorStore,
        client: aioredis.Redis,
        settings: Settings,
        metrics: IngestMetrics,
    ) -> None:
        self._registry, self._reencoder, self._store = registry, reencoder, store
        self._client, self._settings, self._metrics = client, settings, metrics
        self._rejected: set[str] = set()
        self._polled = time.monotonic()
        self.switch: ModelSwitch | None = None

    async def step(self) -> None:
        """One backfill page of a switch in progress, or a registry poll when one is due."""
        if self.switch is not None:
            old = self._current
            if await self.switch.step(self._store):
                self._serving(old, self._current)
                self.switch = None
            return
        if time.monotonic() - self._polled >= self._settings.models.poll_s:
            self._polled = time.monotonic()
            await self.poll()

    async def poll(self) -> None:
        version = await asyncio.to_thread(self._registry.promoted)
        if version is None or version == self._current or version in self._rejected:
            return
        bundle = await self._load(version)
        if bundle is not None:
            await self.begin(bundle)

    async def _load(self, version: str) -> EncoderBundle | None:
        """The validated bundle, or None (counted, logged) when the version is unusable."""
        try:
            return await asyncio.to_thread(
                self._registry.load, version, self._settings.models.threads
            )
        except Exception as exc:  # any reason to refuse a model is a rejection, not a crash
            self._rejected.add(version)
            self._metrics.model_rejections.labels(version=version).inc()
            log.error("model %s rejected, %s keeps serving: %s", version, self._current, exc)
            return None

    @property
    def _current(self) -> str:
        return self._reencoder.bundle.version

    async def begin(self, bundle: EncoderBundle) -> None:
        self.switch = await ModelSwitch.begin(
            self._reencoder,
            bundle,
            self._store,
            self._client,
            self._settings.redis.key_prefix,
            self._settings.models.backfill_page,
        )

    def _serving(self, old: str, new: str) -> None:
        self._metrics.model_version.labels(version=old).set(0)
        self._metrics.model_version.labels(version=new).set(1)
        self._metrics.model_switches.inc()


class Updater:
    """Runs passes in the background until stopped; `drain` finishes the backlog (burst mode)."""

    def __init__(
        self,
        reencoder: Reencoder,
        shards: Shards,
        metrics: IngestMetrics,
        on_fatal: Callable[[], None],
        store: VectorStore,
        max_backlog: int,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._reencoder = reencoder
        self._shards = shards
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._store = store
        self._max_backlog = max_backlog
        self.lifecycle = lifecycle
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._over_backlog = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    @property
    def paused(self) -> bool:
        """Whether consumption should pause: the store is failing or too many marks wait."""
        return self._failing or self._store.failing_since is not None or self._over_backlog

    def observe_backlog(self, waiting: int) -> None:
        """Feed the dirty backlog (read every few seconds by the runtime); hysteresis 1 -> 1/2."""
        if waiting > self._max_backlog:
            self._over_backlog = True
        elif waiting < self._max_backlog // 2:
            self._over_backlog = False

    async def _between(self) -> None:
        if self.lifecycle is not None:
            await self.lifecycle.step()

    async def _supervise(self) -> None:
        """Retry passes while a store is unreachable (marks stay); stop the worker on a bug."""
        delay = RETRY_INITIAL_S
        while not self._stop.is_set():
            try:
                await self._reencoder.run(
                    self._shards, self._stop, self._passed, between=self._between
                )
            except StateUnavailableError as exc:
                self._failing = True
                log.warning("re-encode pass failed (%s); retrying in %.1fs", exc, delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
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
        delay = RETRY_INITIAL_S
        while not stopping.is_set():
            try:
                for stats in await self._reencoder.run_until_idle(self._shards()):
                    self._metrics.observe_pass(stats)
                return
            except StateUnavailableError as exc:
                log.warning("drain pass failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)


MEMORY = ":memory:"  # qdrant.path for an in-memory embedded store (benchmarks, tests)


def vector_store(settings: Settings) -> VectorStore:
    q = settings.qdrant
    config = VectorStoreConfig(
        url=q.url,
        path=None if q.url or str(q.path) == MEMORY else str(q.path),
        api_key=q.api_key.get_secret_value() if q.api_key else None,
    )
    if settings.faults.store_outage_s > 0:
        return OutageStore(config, settings.faults.store_outage_s)
    return VectorStore(config)


def _serving_bundle(
    registry: ModelRegistry, store: VectorStore, promoted: str, threads: int
) -> tuple[EncoderBundle, str | None]:
    """The bundle to write as primary, and the version to switch to afterwards (if any).

    The primary is what the aliases serve, so a restarted worker keeps feeding readers; a first
    deployment serves the promoted version at once (aliases point at its empty collections).
    """
    serving = store.serving_version()
    bundle = registry.load(promoted, threads)
    if serving is None:
        store.prepare(promoted, bundle.dim)
        store.flip(promoted)
        return bundle, None
    if serving == canonical_version(promoted):
        return bundle, None
    try:
        return registry.load(serving, threads), promoted
    except Exception as exc:  # the serving version is gone or broken: write the promoted one
        log.warning(
            "aliases serve %s, which cannot be loaded (%s); writing %s", serving, exc, promoted
        )
        return bundle, promoted


async def start_updater(
    settings: Settings,
    client: aioredis.Redis,
    metrics: IngestMetrics,
    shards: Shards,
    resources: AsyncExitStack,
    on_fatal: Callable[[], None],
    faults: Faults,
) -> Updater | None:
    """The updater for the promoted model, or None when there is no model to serve yet."""
    root = settings.models.registry
    registry = ModelRegistry(root) if root is not None else None
    promoted = registry.promoted() if registry is not None else None
    if registry is None or promoted is None:
        log.info("no promoted model: ingest only, no vectors")
        return None
    store = vector_store(settings)
    resources.callback(store.close)
    bundle, pending = await asyncio.to_thread(
        _serving_bundle, registry, store, promoted, settings.models.threads
    )
    reencoder = Reencoder.connect(
        client, settings.state, settings.redis.key_prefix, store, bundle, settings.reencode
    )
    reencoder.on_vector_write(lambda: faults.at("after_vector_write"))
    lifecycle = Lifecycle(registry, reencoder, store, client, settings, metrics)
    if pending is not None:
        await lifecycle.poll()
    metrics.model_version.labels(version=bundle.version).set(1)
    updater = Updater(
        reencoder, shards, metrics, on_fatal, store, settings.reencode.max_backlog, lifecycle
    )
    resources.push_async_callback(updater.stop)
    updater.start()
    log.info(
        "serving model %s; vectors go to %s",
        bundle.version,
        settings.qdrant.url or settings.qdrant.path,
    )
    return updater


async def run_backfill(
    settings: Settings, client: aioredis.Redis, version: str, flip: bool, refresh: bool = False
) -> dict[str, float]:
    """`sagestream backfill`: every entity into `version`'s collections, then optionally flip.
    `refresh` rewrites existing points of the same state version (streams/lifecycle.py)."""
    root = settings.models.registry
    if root is None:
        raise SystemExit("backfill needs models.registry (SAGESTREAM_MODELS__REGISTRY)")
    bundle = await asyncio.to_thread(ModelRegistry(root).load, version, settings.models.threads)
    store = vector_store(settings)
    try:
        writer = Reencoder.connect(
            client, settings.state, settings.redis.key_prefix, store, bundle, settings.reencode
        )
        insert_only = await is_new(store, bundle.version, bundle.dim)
        refresh = refresh and not insert_only  # new collections: nothing to refresh
        page = settings.models.backfill_page
        backfill = Backfill(
            writer, client, settings.redis.key_prefix, page, insert_only, refresh=refresh
        )
        progress = await backfill.run()
        if flip:
            await asyncio.to_thread(store.flip, bundle.version)
        return {
            "items": progress.items,
            "users": progress.users,
            "pages": progress.pages,
            "seconds": round(progress.seconds, 3),
            "insert_only": float(insert_only),
            "refresh": float(refresh),
        }
    finally:
        store.close()
