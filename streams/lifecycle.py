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
item vectors, replacing points of the same state version: a user's vector is otherwise built from
the item vectors of its last event (no fan-out), and drifts from the items as they change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from encoders.runtime import EncoderBundle
from state import VectorStore
from state.inventory import Shard, item_pages, user_pages
from streams.reencode import Reencoder
from streams.reencode_rules import Marks, PassStats

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


class ModelSwitch:
    """One switch from the primary's model to `bundle`: dual writes, backfill, flip."""

    def __init__(self, primary: Reencoder, backfill: Backfill) -> None:
        self.primary = primary
        self.backfill = backfill
        primary.shadow = backfill.writer  # dual writes from the next pass on

    @classmethod
    async def begin(
        cls,
        primary: Reencoder,
        bundle: EncoderBundle,
        store: VectorStore,
        client: aioredis.Redis,
        prefix: str,
        page: int,
    ) -> ModelSwitch:
        insert_only = await is_new(store, bundle.version, bundle.dim)
        shadow = primary.spawn(bundle)
        log.info(
            "switching %s -> %s: dual writes on, backfill (%s) started",
            primary.bundle.version,
            bundle.version,
            "insert_only" if insert_only else "guarded, collections exist",
        )
        return cls(primary, Backfill(shadow, client, prefix, page, insert_only))

    async def step(self, store: VectorStore) -> bool:
        """One backfill page; after the last, flip the aliases and make the new model primary."""
        if not await self.backfill.step():
            return False
        bundle = self.backfill.writer.bundle
        await asyncio.to_thread(store.flip, bundle.version)
        self.primary.shadow = None
        self.primary.swap(bundle)
        log.info("switched to %s after backfilling %s", bundle.version, self.backfill.progress)
        return True
