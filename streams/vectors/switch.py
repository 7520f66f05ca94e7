"""Model lifecycle: switch the serving model without a moment where readers see a gap.

A switch to version N+1, while N serves through the aliases:

1. load N+1 from the registry; `ModelRegistry.load` validates it (checksums, dims, a smoke
   inference without NaN). A rejected version is counted and skipped; N keeps serving;
2. create N+1's collections and start dual writes: every live pass writes N (primary) and N+1
   (the shadow) from the same marks, before the marks are cleared;
3. backfill every entity the state knows into N+1 - items first, so users are built from N+1's
   item vectors - in pages between live passes. A page of a new collection is written with
   ``insert_only``, so it never overwrites a fresher dual-written point; a collection that
   already exists (a rollback to an older version) is written with the state-version guard
   instead, which also refuses older points but refreshes the stale ones left from before;
4. one atomic alias flip to N+1, then N+1 becomes the primary and N is no longer written.

A reader therefore sees N, complete, until the flip, and N+1, complete, after it.
`sagestream backfill` runs steps 3-4 on its own for deployments whose workers do not switch
themselves (several workers: each dual-writes its partitions, one backfill covers everything).
With ``--refresh`` it re-encodes the serving version in place, items first, then users from those
item vectors, replacing points of the same state version: the live fan-out keeps users on their
items' current vectors, but not those past its hub cap or per-pass bound, nor users of items whose
change stayed below `item_min_change` (their stored vector stands), which a refresh catches up.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from encoders.registry import ModelRegistry
from encoders.runtime import EncoderBundle
from state import VectorStore
from state.vectors import canonical_version
from streams.metrics import IngestMetrics
from streams.settings import Settings
from streams.vectors.backfill import Backfill, is_new
from streams.vectors.crew import Crew
from streams.vectors.reencoder import Reencoder

log = logging.getLogger(__name__)


class ModelSwitch:
    """One switch from the primary's model to `bundle`: dual writes, backfill, flip; with other
    workers, behind the barrier of crew.py."""

    def __init__(self, primary: Reencoder, backfill: Backfill, crew: Crew) -> None:
        self.primary = primary
        self.backfill = backfill
        self.crew = crew
        self._waiting: set[str] = set()
        primary.dual_write(backfill.writer)

    @classmethod
    async def begin(
        cls,
        primary: Reencoder,
        bundle: EncoderBundle,
        store: VectorStore,
        client: aioredis.Redis,
        prefix: str,
        page: int,
        crew: Crew,
    ) -> ModelSwitch:
        insert_only = await is_new(store, bundle.version, bundle.dim)
        shadow = primary.spawn(bundle)
        switch = cls(primary, Backfill(shadow, client, prefix, page, insert_only), crew)
        await crew.join(bundle.version)  # dual writes are on from the next pass
        log.info(
            "switching %s -> %s: dual writes on, backfill (%s) once every worker dual-writes",
            primary.bundle.version,
            bundle.version,
            "insert_only" if insert_only else "guarded, collections exist",
        )
        return switch

    @property
    def version(self) -> str:
        return self.backfill.writer.bundle.version

    async def step(self, store: VectorStore) -> bool:
        """One step between passes; True once the new model is this worker's primary.

        Another worker's flip ends the switch here too; otherwise wait for every live worker to
        dual-write, hold the backfill lease, write one page, and flip after the last one."""
        if await asyncio.to_thread(store.serving_version) == canonical_version(self.version):
            return self._finish("another worker flipped")
        await self.crew.join(self.version)
        if not await self._everyone_in():
            return False
        if not await self.crew.lead(self.version):
            return False  # another worker backfills; its flip ends this switch
        if not await self.backfill.step():
            return False
        if not await self._everyone_in():  # a worker came up meanwhile: let it join first
            return False
        await asyncio.to_thread(store.flip, self.version)
        await self.crew.release(self.version)
        return self._finish(f"backfilled {self.backfill.progress}")

    async def _everyone_in(self) -> bool:
        waiting = await self.crew.waiting_for(self.version)
        if waiting != self._waiting:
            if waiting:
                log.info("switch to %s waits for %s to dual-write", self.version, sorted(waiting))
            self._waiting = waiting
        return not waiting

    def _finish(self, how: str) -> bool:
        bundle = self.backfill.writer.bundle
        self.primary.dual_write(None)
        self.primary.swap(bundle)
        log.info("switched to %s (%s)", bundle.version, how)
        return True


class ModelWatcher:
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
        self.crew = Crew(client, settings.redis.key_prefix)

    async def step(self) -> None:
        """One backfill page of a switch in progress, or a registry poll when one is due."""
        await self.crew.beat()
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
        refused = version in self._rejected
        if not (version is None or version == self._current or refused):
            bundle = await self._load(version)
            refused = bundle is None
            if bundle is not None:
                await self.begin(bundle)
        # Alertable for as long as it lasts: a rejection counter is born at 1 and never moves.
        self._metrics.model_refused.set(1 if refused else 0)

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
            self.crew,
        )

    def _serving(self, old: str, new: str) -> None:
        self._metrics.model_version.labels(version=old).set(0)
        self._metrics.model_version.labels(version=new).set(1)
        self._metrics.model_switches.inc()
