"""RELIABILITY scenarios 1 and 6 with vectors: kill -9 at named points, and a vector store outage.

The worker runs as a child process on the real Kafka and Redis with an embedded Qdrant on disk.
After every kill the test checks I3 (no stored state_version went down) and I4 (no committed
offset passes what Redis applied); after a clean run, I1 against the from-scratch state oracle,
I2 against the from-scratch vector oracle, and offsets committed to the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from encoders.registry import ModelRegistry
from state import RedisState
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.produce import produce_catalog, produce_engagements
from streams.devtools.tiny_model import publish_tiny_model
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.topics import ensure_topics
from tests.support.convergence import assert_converged
from tests.support.faults import FaultPlan
from tests.support.harness import (
    committed_offsets,
    read_topic,
    run_worker,
)

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

STREAM = GeneratorConfig(users=60, items=120, communities=4, events=3000, seed=41)
KILLS = [("after_state_write", 2), ("before_commit", 2), ("after_vector_write", 2)]
Versions = dict[tuple[str, str], int]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    registry, version = publish_tiny_model(tmp_path_factory.mktemp("registry"), STREAM)
    registry.promote(version)
    return registry


def worker_settings(make_settings: Callable[..., Settings], registry: ModelRegistry) -> Settings:
    return make_settings(
        ingest={"batch_max": 250},
        models={"registry": str(registry.root)},
        # catchup_hold_s 0: every kill point needs passes between the batches of the backlog,
        # as a live stream has them; held for catch-up, one pass at the end writes the vectors
        reencode={
            "item_min_change": 0.0,
            "fanout_min_change": 0.0,
            "window_s": 0.05,
            "catchup_hold_s": 0.0,
        },
    )


def stack_with_catalog(make_settings: Callable[..., Settings], registry: ModelRegistry) -> Settings:
    """The worker's settings, its topics created and the generated catalog produced."""
    settings = worker_settings(make_settings, registry)
    ensure_topics(settings)
    produce_catalog(settings, generate_catalog(STREAM))
    return settings


def stored_versions(settings: Settings, users: set[str], items: set[str]) -> Versions:
    """Every stored point's state_version, read through the aliases."""
    with vector_store(settings) as store:
        if store.serving_version() is None:
            return {}
        found: Versions = {}
        for kind, ids in (("users", users), ("items", items)):
            for entity, point in store.get(kind, ids).items():  # type: ignore[arg-type]
                found[(kind, entity)] = int(point.payload["state_version"])
        return found


def check_no_version_went_down(before: Versions, after: Versions) -> int:
    """I3; returns how many points moved forward."""
    went_down = [k for k, v in before.items() if after.get(k, -1) < v]
    assert not went_down, f"state_version went down or vanished for {went_down[:5]}"
    return sum(1 for k, v in after.items() if v > before.get(k, -1))


async def check_commits_within_applied(settings: Settings, state: RedisState) -> None:
    """I4: a committed offset never passes the partition's applied watermark + 1."""
    committed = await asyncio.to_thread(committed_offsets, settings)
    for partition, offset in committed.items():
        watermark = await state.watermark(settings.topics.engagements, partition)
        assert watermark is not None and offset <= watermark + 1, (partition, offset, watermark)


async def converged(
    settings: Settings, redis_client: aioredis.Redis, registry: ModelRegistry
) -> tuple[int, int]:
    promoted = registry.promoted()
    assert promoted is not None
    bundle = registry.load(promoted)
    return await assert_converged(settings, redis_client, bundle, generate_catalog(STREAM))


async def test_kill_9_at_each_named_point_loses_nothing_and_never_goes_back(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    registry: ModelRegistry,
    tmp_path: Path,
) -> None:
    settings = stack_with_catalog(make_settings, registry)
    events = list(generate_events(STREAM))
    third = len(events) // len(KILLS) + 1
    users = {e.user_id for e in events}
    items = {e.item_id for e in events} | {i.item_id for i in generate_catalog(STREAM)}
    state = RedisState(redis_client, settings.state, prefix=settings.redis.key_prefix)
    args = ("--runtime", "batch", "--until-idle", "4")
    seen: Versions = {}
    moved = 0
    for round_, (point, after) in enumerate(KILLS):  # each kill with fresh events to consume
        produce_engagements(settings, events[round_ * third : (round_ + 1) * third])
        crash_log = tmp_path / f"{point}.log"
        kill = FaultPlan(point=point, after=after, action="kill")  # type: ignore[arg-type]
        code = await asyncio.to_thread(run_worker, settings, *args, log=crash_log, faults=kill)
        assert code == -9, crash_log.read_text()[-3000:]
        await check_commits_within_applied(settings, state)
        now = await asyncio.to_thread(stored_versions, settings, users, items)
        moved += check_no_version_went_down(seen, now)
        seen = now

    code = await asyncio.to_thread(run_worker, settings, *args, log=tmp_path / "clean.log")
    assert code == 0, (tmp_path / "clean.log").read_text()[-3000:]
    final = await asyncio.to_thread(stored_versions, settings, users, items)
    check_no_version_went_down(seen, final)
    valid, checked = await converged(settings, redis_client, registry)
    log.info(
        "kill -9 x%d at %s: %d events, 0 lost or doubled (I1), %d vectors equal the oracle (I2), "
        "%d version moves, none backwards (I3)",
        len(KILLS),
        ", ".join(p for p, _ in KILLS),
        valid,
        checked,
        moved,
    )


async def test_vector_store_outage_pauses_consumption_and_converges_after(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    registry: ModelRegistry,
    tmp_path: Path,
) -> None:
    settings = stack_with_catalog(make_settings, registry)
    produce_engagements(settings, generate_events(STREAM))
    outage = FaultPlan(store_outage_s=12.0)
    worker_log = tmp_path / "outage.log"
    code = await asyncio.to_thread(
        run_worker,
        settings,
        "--runtime",
        "batch",
        "--until-idle",
        "4",
        log=worker_log,
        faults=outage,
    )
    text = worker_log.read_text()
    assert code == 0, text[-3000:]
    assert "consumption paused" in text and "consumption resumed" in text, text[-3000:]
    letters = await asyncio.to_thread(
        read_topic, settings, settings.topics.dlq(settings.topics.engagements), 10
    )
    assert letters == []  # a transient store error is never dead-lettered
    valid, checked = await converged(settings, redis_client, registry)
    log.info("store outage 12s: %d events, converged; %d vectors equal the oracle", valid, checked)
