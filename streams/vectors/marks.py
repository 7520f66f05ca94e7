"""Reading and clearing the dirty marks of a pass: the first and the last step of the re-encoder.

Every shard's page is read (and cleared) at once. A mark is cleared only with the score it was
read with (`RedisState.clear_dirty`), so an entity dirtied again while the pass ran keeps its
mark and is encoded again by the next pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from state import RedisState
from state.catalog import CatalogStore
from state.keys import DIRTY_KINDS
from streams.vectors.rules import Marks, Shard


class MarkBook:
    def __init__(self, state: RedisState, catalog: CatalogStore) -> None:
        self._state, self._catalog = state, catalog

    async def drain(self, shards: Sequence[Shard], limit: int, *, catalog: bool) -> Marks:
        """Up to `limit` marks per shard and kind (and of the catalog, when asked)."""
        pages = [
            (topic, partition, kind)
            for topic, partition in dict.fromkeys(shards)
            for kind in DIRTY_KINDS
        ]
        read = await asyncio.gather(*(self._state.dirty(*page, limit) for page in pages))
        marks = Marks(shards=dict(zip(pages, read, strict=True)))
        if catalog:
            marks.catalog = await self._catalog.dirty(limit)
        return marks

    async def clear(self, marks: Marks, read_at: float | None = None) -> None:
        """Clear what a pass handled; marks dirtied again since `read_at` stay, scored from it."""
        await asyncio.gather(
            *(
                self._state.clear_dirty(*page, read, rescore=read_at)
                for page, read in marks.shards.items()
            )
        )
        await self._catalog.clear_dirty(marks.catalog)
