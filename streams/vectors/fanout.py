"""Fan-out: the users holding a re-encoded item are marked dirty, so the next pass rebuilds them
from its new vector (step 7 of reencoder.py).

A user vector is built from the vectors of the items in its history. When an item's vector
changes materially (it is in a pass's plans), every user of every shard who holds it
(`RedisState.holders`, coengagement rule 8) is behind until rebuilt. This step reads those
holders in one pipelined round trip (one read per shard and item, each in its shard's slot),
chooses whom to mark (`rules.fan_out`: at most `fanout_per_pass`, the newest holders first,
shards taking turns; users this pass already encoded from these vectors are left out) and marks
them in their own shard with `RedisState.mark_dirty`, exactly as an apply marks: a new mark
scored with the item's first dirty ts, so the user's freshness sample counts from the event that
changed the item; an existing mark flagged "dirtied again", so a pass in flight that read it
before keeps it. A shard this worker does not drain is marked for the worker that does.

It runs after every upsert of the pass returned - the shadow's too during a model switch, or a
holder rebuilt before the shadow's write could read the old item vector from the new model's
collection and never be marked again - and before the pass records bases and clears its marks: a
crash before it re-does the pass, which encodes the same items again and fans out again (marking
twice is marking once). Bases come after it because a re-done pass skips an item whose basis is
already recorded, and would then not fan out.

The rebuilt user keeps its state version; its record carries a higher `basis_version` (the sum
of its items' state versions), which is what lets the store's guard take it (state/vectors.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from state import RedisState
from streams.vectors.plans import ItemPlan
from streams.vectors.rules import PassStats, Shard, fan_out


class FanOut:
    def __init__(self, state: RedisState, limit: int, clock: Callable[[], float]) -> None:
        self._state, self._limit, self._clock = state, limit, clock

    async def mark(
        self,
        plans: Mapping[str, ItemPlan],
        encoded: Mapping[Shard, Mapping[str, float]],
        stats: PassStats,
    ) -> None:
        """Mark the holders of the items of `plans`, except the users `encoded` by this pass."""
        if not plans or self._limit == 0:
            return
        now = self._clock()
        changed = {i: now if p.first_ts is None else p.first_ts for i, p in plans.items()}
        holders = await self._state.holders(list(changed))
        chosen, dropped = fan_out(holders, changed, encoded, self._limit)
        await asyncio.gather(
            *(
                self._state.mark_dirty(topic, partition, "users", marks)
                for (topic, partition), marks in chosen.items()
            )
        )
        stats.fanout_users += sum(map(len, chosen.values()))
        stats.fanout_dropped += dropped
