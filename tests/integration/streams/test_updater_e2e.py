"""Events in, vectors out: the worker on real Kafka and Redis writes fresh vectors to Qdrant
(embedded mode), and a downstream recommender reads them through the aliases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from state import RedisState
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.devtools.tiny_model import publish_tiny_model
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.topics import ensure_topics
from tests.support.harness import read_topic, run_worker

pytestmark = pytest.mark.integration

STREAM = GeneratorConfig(users=40, items=80, communities=3, events=900, seed=29)


@pytest.mark.parametrize("runtime", ["batch", "faust"])
async def test_generated_events_become_vectors_a_recommender_can_query(
    runtime: str,
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    registry, version = await asyncio.to_thread(publish_tiny_model, tmp_path / "models", STREAM)
    registry.promote(version)
    settings = make_settings(
        models={"registry": str(tmp_path / "models")},
        reencode={"item_min_change": 0.0, "fanout_min_change": 0.0},
    )
    ensure_topics(settings)
    produce_engagements(settings, generate_events(STREAM))
    log = tmp_path / "worker.log"
    code = await asyncio.to_thread(
        run_worker, settings, "--runtime", runtime, "--until-idle", "4", log=log
    )
    assert code == 0, log.read_text()[-3000:]

    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    users = {r.key.decode(): r.partition for r in records if r.key}
    state = RedisState(redis_client, settings.state, prefix=settings.redis.key_prefix)
    store = vector_store(settings)
    try:
        assert store.serving_version() is not None
        stored_users = store.get("users", users)
        assert stored_users.keys() == users.keys()  # every engaged user has a fresh vector
        for user, partition in users.items():
            version_in_redis = await state.user_version(
                settings.topics.engagements, partition, user
            )
            assert stored_users[user].payload["state_version"] == version_in_redis
        items = {e.item_id for e in generate_events(STREAM)}
        stored_items = store.get("items", items)
        assert stored_items.keys() == items
        for item in items:
            assert stored_items[item].payload["state_version"] == await state.item_version(item)

        # What a downstream recommender does: a user's top items, an item's similar items.
        user = next(iter(users))
        top = store.search("items", stored_users[user].vector, 10)
        assert len(top) == 10 and all(np.isfinite(hit.score) for hit in top)
        item = next(iter(items))
        similar = store.search("items", stored_items[item].vector, 5, exclude_ids=[item])
        assert len(similar) == 5 and item not in {hit.entity_id for hit in similar}
    finally:
        store.close()
