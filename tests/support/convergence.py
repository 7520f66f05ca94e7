"""The end of every reliability test: Redis, offsets and vectors against their oracles."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import redis.asyncio as aioredis

from encoders.runtime import EncoderBundle
from state import RedisState
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.events import CatalogItem
from tests.support.harness import Oracle, committed_offsets, end_offsets, mismatches, read_topic
from tests.support.vectors_world import World, assert_matches_oracle


async def assert_converged(
    settings: Settings,
    redis_client: aioredis.Redis,
    bundle: EncoderBundle,
    catalog: Iterable[CatalogItem],
) -> tuple[int, int]:
    """I1 against the from-scratch state, offsets committed to the end, and I2 for `bundle`'s
    vectors, users included (fan-out); returns (valid events, vectors checked)."""
    state = RedisState(redis_client, settings.state, prefix=settings.redis.key_prefix)
    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    oracle = Oracle.from_records(settings, records)
    assert await mismatches(state, oracle) == []
    ends = await asyncio.to_thread(end_offsets, settings, settings.topics.engagements)
    assert await asyncio.to_thread(committed_offsets, settings) == ends
    with vector_store(settings) as store:
        world = World(redis_client, settings, bundle, store)
        world.replayed({p: [e for _, e in evs] for p, evs in oracle.events.items()})
        world.content = {i.item_id: i for i in catalog}
        checked = await assert_matches_oracle(world)
    return oracle.valid_count, checked
