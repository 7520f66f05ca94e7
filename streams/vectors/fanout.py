"""Fan-out: the holders of the items a pass re-encodes are rebuilt in that same pass, from the
new item vectors (step 4 of reencoder.py).

A user vector is built from the vectors of the items in its encoder window. When an item's
vector changes materially (it moved by at least `fanout_min_change`), every user holding it there
is behind until rebuilt. Once the pass has encoded its items, it reads the holders of those that
moved in every shard at once (`RedisState.holders`: one script call per shard and page of items,
the shards concurrently; coengagement rule 8: per item and shard, the users scored by the offset
of their newest action on it, capped to `hold_max`). Only those: at 1,000 events/s about one
dirty item in ten moved that much, and reading every dirty item's holders beside the planning
cost more than the round trip it saved. Of those holders it chooses whom to rebuild
(`rules.fan_out`: at most `fanout_per_pass`, the newest holders first, shards taking turns; the
pass's own dirty users are left out, they are encoded anyway), reads them like any dirty user,
and keeps those whose encoder window holds a changed item. The index keeps holders over the
whole stored sequence, which is longer than the window; a holder of the item only further back
has an unchanged basis.

Holders in shards another worker drains are not rebuilt here but marked dirty in their shard for
that worker (`RedisState.mark_dirty`, as an apply marks: scored with the item's first dirty ts),
after every upsert of the pass returned. Rebuilding them here would race with their own worker:
a pass of it that read the old item vector before this upsert, for a newer state of the user,
would win the guard and leave the user on the old item vector with nothing left to rebuild it.
A mark written after this upsert makes that worker's next pass read the new one.

The rebuilt users join the pass's micro-batch and its one upsert, each with a freshness sample
counted from the earliest first dirty ts of the changed items it holds: a user follows its items
within the same pass, not one pass later. Nothing is marked, so nothing waits in Redis: a crash
before the pass records its bases re-does it, which encodes the same items again (their bases
are not recorded yet) and reads their holders again. A replay is settled by the store's guard
on (state version, basis version): a rebuilt user keeps its state version and carries a higher
basis version (the sum of its items' state versions, state/vectors.py).

During a model switch each model's write fans out from its own plans and its own in-memory item
vectors, so neither collection's users wait for the other model's upsert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping

from state import RedisState
from streams.vectors.plans import ItemPlan
from streams.vectors.rules import Holders, PassStats, Shard, fan_out


class FanOut:
    def __init__(self, state: RedisState, limit: int, clock: Callable[[], float]) -> None:
        self._state, self._limit, self._clock = state, limit, clock

    async def read(self, item_ids: Collection[str]) -> Holders:
        """The holders, in every shard, of the items of a pass whose vector moved."""
        if not item_ids or self._limit == 0:
            return {}
        return await self._state.holders(list(item_ids))

    def choose(
        self,
        holders: Holders,
        plans: Mapping[str, ItemPlan],
        encoded: Mapping[Shard, Collection[str]],
        stats: PassStats,
    ) -> dict[Shard, dict[str, float]]:
        """The holders of the items of `plans` to rebuild, per shard: user -> the earliest first
        dirty ts of a changed item it holds; users `encoded` by this pass are left out."""
        if not plans or self._limit == 0:
            return {}
        now = self._clock()
        changed = {i: now if p.first_ts is None else p.first_ts for i, p in plans.items()}
        of_changed = {
            shard: {i: users for i, users in items.items() if i in changed}
            for shard, items in holders.items()
        }
        chosen, dropped = fan_out(of_changed, changed, encoded, self._limit)
        stats.fanout_dropped += dropped
        return {shard: dict(users) for shard, users in chosen.items()}

    async def mark(self, elsewhere: Mapping[Shard, Mapping[str, float]], stats: PassStats) -> None:
        """Mark the chosen holders of other workers' shards dirty there (after every upsert)."""
        await asyncio.gather(
            *(
                self._state.mark_dirty(topic, partition, "users", list(users.items()))
                for (topic, partition), users in elsewhere.items()
            )
        )
        stats.fanout_marked += sum(map(len, elsewhere.values()))
