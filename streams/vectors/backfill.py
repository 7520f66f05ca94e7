"""Backfill: every entity the state knows, written into one version's collections in pages.

Items go first, so users are built from that version's item vectors. A page of a new collection
is written ``insert_only`` and never overwrites a fresher live point; an existing collection is
written under the state-version guard instead. `ModelSwitch` runs one page between live passes;
`sagestream backfill` runs them all (``--refresh`` rewrites the serving version in place, since a
user's vector is otherwise built from the item vectors of its last event and drifts from them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from encoders.registry import ModelRegistry
from state import VectorStore
from state.inventory import Shard, item_pages, user_pages
from streams.settings import Settings
from streams.vectors.reencoder import Reencoder
from streams.vectors.rules import Marks, PassStats
from streams.vectors.store import vector_store

log = logging.getLogger(__name__)


@dataclass
class BackfillProgress:
    items: int = 0
    users: int = 0
    pages: int = 0
    seconds: float = 0.0


async def backfill_marks(client: aioredis.Redis, prefix: str, page: int) -> AsyncIterator[Marks]:
    """Every item, then every user, as pages of synthetic marks (score 0: no freshness)."""
    async for item_ids in item_pages(client, prefix, page):
        yield Marks(shards={("", 0, "items"): [(i, 0.0) for i in item_ids]})
    async for shard, user_ids in user_pages(client, prefix, page):
        yield _user_marks(shard, user_ids)


def _user_marks(shard: Shard, user_ids: list[str]) -> Marks:
    topic, partition = shard
    return Marks(shards={(topic, partition, "users"): [(u, 0.0) for u in user_ids]})


class Backfill:
    """Steps 3 of the module docstring, one page per `step` so live passes interleave."""

    def __init__(
        self,
        writer: Reencoder,
        client: aioredis.Redis,
        prefix: str,
        page: int,
        insert_only: bool,
        refresh: bool = False,
    ) -> None:
        self.writer = writer
        self.insert_only = insert_only
        self.refresh = refresh  # rewrite equal state versions too (`sagestream backfill --refresh`)
        self.progress = BackfillProgress()
        self._pages = backfill_marks(client, prefix, page)

    async def step(self) -> bool:
        """Write one page; True once every entity was written."""
        began = time.perf_counter()
        try:
            marks = await anext(self._pages)
        except StopAsyncIteration:
            return True
        stats = PassStats()
        await self.writer.write(
            marks, stats, primary=False, insert_only=self.insert_only, refresh=self.refresh
        )
        self.progress.items += stats.items_encoded
        self.progress.users += stats.users_encoded
        self.progress.pages += 1
        self.progress.seconds += time.perf_counter() - began
        log.debug("backfill %s: %s", self.writer.bundle.version, self.progress)
        return False

    async def run(self, report_every: int = 20) -> BackfillProgress:
        """Every page at once (the CLI), with a progress line every `report_every` pages."""
        while not await self.step():
            if self.progress.pages % report_every == 0:
                log.info("backfill %s: %s", self.writer.bundle.version, self.progress)
        return self.progress


async def is_new(store: VectorStore, version: str, dim: int) -> bool:
    """Create `version`'s collections; True if they hold nothing yet (insert_only is safe)."""

    def check() -> bool:
        store.prepare(version, dim)
        return store.count("items", version=version) + store.count("users", version=version) == 0

    return await asyncio.to_thread(check)


async def run_backfill(
    settings: Settings, client: aioredis.Redis, version: str, flip: bool, refresh: bool = False
) -> dict[str, float]:
    """`sagestream backfill`: every entity into `version`'s collections, then optionally flip.
    `refresh` rewrites existing points of the same state version (streams/vectors/switch.py)."""
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
