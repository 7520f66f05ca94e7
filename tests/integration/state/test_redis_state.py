"""RedisState on a real redis-server: idempotence, trim, decay, dirty marks, refusals."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import redis.asyncio as aioredis

from state import ApplyResult, CoEngagementGraph, RedisState, StateConfig, merge_neighbours
from state.coengagement import Event as Ev
from state.exceptions import InvalidBatchError, StateUnavailableError
from state.keys import ShardKeys, shard_tag

pytestmark = pytest.mark.integration

TOPIC = "engagements"


async def snapshot(client: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key of the test's prefix with its full value, to compare states exactly."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            out[key] = await client.get(key)
        elif kind == "list":
            out[key] = await client.lrange(key, 0, -1)
        elif kind == "hash":
            out[key] = await client.hgetall(key)
        elif kind == "zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = sorted(await client.smembers(key))
    return out


def assert_same_neighbours(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [m for m, _ in got] == [m for m, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-9)


def session(n: int, user: str = "u1", t0: float = 1000.0) -> list[tuple[int, Ev]]:
    actions = ["view", "click", "save"]
    return [
        (off, Ev(user, f"i{off % 7}", actions[off % 3], t0 + 10.0 * off, None, "b1"))
        for off in range(n)
    ]


async def test_replayed_batch_is_a_no_op(redis_client: aioredis.Redis, key_prefix: str) -> None:
    state = RedisState(redis_client, StateConfig(slice_size=4), key_prefix)
    batch = session(10)
    first = await state.apply(TOPIC, 0, batch)
    assert (first.applied, first.skipped, first.watermark) == (10, 0, 9)
    before = await snapshot(redis_client, key_prefix)
    again = await state.apply(TOPIC, 0, batch)
    assert (again.applied, again.skipped, again.watermark) == (0, 10, 9)
    assert await snapshot(redis_client, key_prefix) == before
    assert await state.watermark(TOPIC, 0) == 9


async def test_overlapping_replay_applies_only_the_new_tail(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cfg = StateConfig(slice_size=4, k_max=3)
    state = RedisState(redis_client, cfg, key_prefix)
    batch = session(15)
    await state.apply(TOPIC, 0, batch[:10])
    result = await state.apply(TOPIC, 0, batch[5:])
    assert (result.applied, result.skipped, result.watermark) == (5, 5, 14)
    ref = CoEngagementGraph(cfg)
    ref.add_many([ev for _, ev in batch[:10]])
    # the replayed call's first slice holds offsets 5..8 (skipped) and the next ones 9..14
    ref.add_many([ev for _, ev in batch[10:13]])
    ref.add_many([ev for _, ev in batch[13:]])
    assert await state.user_sequence(TOPIC, 0, "u1") == ref.sequence("u1")
    for item in {ev.item_id for _, ev in batch}:
        got = await state.item_neighbours(item, 10)
        assert_same_neighbours(got, ref.neighbours(item, 10))


async def test_empty_batch_reports_the_watermark(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    state = RedisState(redis_client, StateConfig(), key_prefix)
    assert await state.watermark(TOPIC, 1) is None
    assert (await state.apply(TOPIC, 1, [])).watermark == -1
    await state.apply(TOPIC, 1, session(3))
    assert await state.apply(TOPIC, 1, []) == ApplyResult(0, 0, 2)


async def test_trim_and_decay(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cfg = StateConfig(k_max=3, half_life_s=600.0, trim_every=10)
    state = RedisState(redis_client, cfg, key_prefix)
    actions = ["save", "view", "click", "view", "save", "click"]
    batch = [(n, Ev("u", f"i{n}", a, 100.0)) for n, a in enumerate(actions)]
    batch.append((6, Ev("u", "hot", "save", 100.0)))
    await state.apply(TOPIC, 0, batch)
    hot_key = ShardKeys(key_prefix, shard_tag(TOPIC, 0)).neighbours("hot")
    assert await redis_client.zcard(hot_key) == 6  # block 0 is still open: not trimmed yet
    top = await state.item_neighbours("hot", 10)
    assert [m for m, _ in top] == ["i0", "i4", "i5"]  # but it already reads as trimmed
    assert [w for _, w in top] == pytest.approx([1.0, 1.0, 3**-0.5], rel=1e-12)
    await state.apply(TOPIC, 0, [(10, Ev("w", "elsewhere", "view", 100.0))])  # enters block 1
    assert await redis_client.zcard(hot_key) == 3
    assert await state.item_neighbours("hot", 10) == top
    # one half-life later a save pair of the same damping (degree 1) weighs twice the old ones
    fresh = [(11, Ev("x", "i6", "save", 700.0)), (12, Ev("x", "hot", "save", 700.0))]
    await state.apply(TOPIC, 0, fresh)
    later = await state.item_neighbours("hot", 10)
    assert [m for m, _ in later] == ["i6", "i0", "i4"]  # i5 falls below the top k_max
    assert [w for _, w in later] == pytest.approx([1.0, 0.5, 0.5], rel=1e-12)


async def test_rebase_keeps_read_weights(redis_client: aioredis.Redis, key_prefix: str) -> None:
    cfg = StateConfig(half_life_s=100.0, pair_horizon_s=1e9, max_event_age_s=1e9)
    state = RedisState(redis_client, cfg, key_prefix)
    await state.apply(TOPIC, 0, [(0, Ev("u", "a", "click", 0.0)), (1, Ev("u", "b", "click", 1.0))])
    later = 4000.0
    await state.apply(
        TOPIC, 0, [(2, Ev("v", "c", "click", later - 1)), (3, Ev("v", "a", "click", later))]
    )
    shard = ShardKeys(key_prefix, shard_tag(TOPIC, 0))
    assert float(await redis_client.hget(shard.item("a"), "t0")) == later  # rebased: 2**40 > 1e9
    got = dict(await state.item_neighbours("a", 10))
    # b paired at t=1 and c at t=3999 with the same damping (degree 1): b is 2**-39.98 of c
    assert got["c"] == 1.0
    assert got["b"] == pytest.approx(2 ** (-(later - 1 - 1) / 100.0), rel=1e-9)


async def test_concurrent_partitions_on_one_item_add_up(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cfg = StateConfig(slice_size=7)
    state = RedisState(redis_client, cfg, key_prefix)
    refs: list[CoEngagementGraph] = []
    jobs = []
    for partition in range(4):
        batch = [
            (off, Ev(f"u{partition}.{off % 3}", item, "click", 100.0 + off))
            for off, item in enumerate(["hot", f"x{partition}", "hot", "y", "hot", "z"] * 5)
        ]
        ref = CoEngagementGraph(cfg)
        ref.add_many([ev for _, ev in batch])
        refs.append(ref)
        # each partition is written by two racing tasks (a zombie replays the same batch)
        jobs += [state.apply(TOPIC, partition, batch), state.apply(TOPIC, partition, batch)]
    results = await asyncio.gather(*jobs)
    assert sum(r.applied for r in results) == 4 * 30
    assert sum(r.skipped for r in results) == 4 * 30
    for item in ["hot", "y", "z", "x0"]:
        got = await state.item_neighbours(item, 50)
        assert_same_neighbours(got, merge_neighbours(refs, item, 50))
        assert await state.item_version(item) == sum(r.item_version(item) for r in refs)


async def test_clear_dirty_keeps_a_mark_dirtied_after_the_read(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    state = RedisState(redis_client, StateConfig(), key_prefix)
    await state.apply(
        TOPIC, 0, [(0, Ev("u1", "a", "click", 50.0)), (1, Ev("u2", "b", "view", 60.0))]
    )
    marks = await state.dirty(TOPIC, 0, "users", 10)
    assert marks == [("u1", 50.0), ("u2", 60.0)]
    await state.apply(TOPIC, 0, [(2, Ev("u1", "c", "click", 70.0))])  # u1 dirtied again
    assert await state.clear_dirty(TOPIC, 0, "users", marks) == 1
    assert await state.dirty(TOPIC, 0, "users", 10) == [("u1", 50.0)]  # keeps its first ts
    assert await state.clear_dirty(TOPIC, 0, "users", [("u1", 49.0)]) == 0  # score changed
    assert await state.clear_dirty(TOPIC, 0, "users", [("u1", 50.0)]) == 1
    assert await state.dirty(TOPIC, 0, "users", 10) == []
    # a pass that read at 65 and finds u1 dirtied again rescores it from 65: what dirtied it
    # before the read is in the vector that pass wrote; an earlier read time never moves it back
    marks = await state.dirty(TOPIC, 0, "users", 10)
    await state.apply(TOPIC, 0, [(3, Ev("u1", "d", "click", 80.0))])
    marks = await state.dirty(TOPIC, 0, "users", 10)
    await state.apply(TOPIC, 0, [(4, Ev("u1", "e", "click", 90.0))])
    assert await state.clear_dirty(TOPIC, 0, "users", marks, rescore=85.0) == 0
    assert await state.dirty(TOPIC, 0, "users", 10) == [("u1", 85.0)]
    await state.apply(TOPIC, 0, [(5, Ev("u1", "f", "click", 95.0))])
    assert await state.clear_dirty(TOPIC, 0, "users", [("u1", 85.0)], rescore=20.0) == 0
    assert await state.dirty(TOPIC, 0, "users", 10) == [("u1", 85.0)]
    assert await state.clear_dirty(TOPIC, 0, "users", [("u1", 85.0)], rescore=99.0) == 1
    items = await state.dirty(TOPIC, 0, "items", 10)
    assert {m for m, _ in items} == {"a", "b", "c", "d", "e", "f"}
    assert await state.dirty_backlog() == {"users": 0, "items": 6}


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        "{}",
        '[[0, "u", "a", "click", 1.0, null, null], [0, "u", "b", "click", 2.0, null, null]]',
        '[[0, "u", "a|b", "click", 1.0, null, null]]',
        '[[0, "u{x}", "a", "click", 1.0, null, null]]',
        '[[0, "u", "a", "like", 1.0, null, null]]',
        '[[0, "u", "a", "click", "1.0", null, null]]',
        '[[0, "u", "a", "click", 1.0, -1, null]]',
        '[[0.5, "u", "a", "click", 1.0, null, null]]',
        '[[0, "u", "a", "click", 1.0, null, "c|1"]]',
        '[[0, "u", "' + "a" * 129 + '", "click", 1.0, null, null]]',
        '[[1, "u", "a", "click", 1.0, null, null], "x"]',
    ],
)
async def test_malformed_batches_are_refused_before_any_write(
    redis_client: aioredis.Redis, key_prefix: str, payload: str
) -> None:
    state = RedisState(redis_client, StateConfig(), key_prefix)
    await state.apply(TOPIC, 0, [(0, Ev("u", "a", "click", 0.5))])
    before = await snapshot(redis_client, key_prefix)
    shard = ShardKeys(key_prefix, shard_tag(TOPIC, 0))
    with pytest.raises(InvalidBatchError):
        await state._run_apply(shard, payload)  # the raw script boundary
    assert await snapshot(redis_client, key_prefix) == before


@pytest.mark.parametrize(
    "event",
    [
        Ev("u", "x|y", "click", 1.0),
        Ev("u", "x", "click", math.nan),
        Ev("u", "x", "click", math.inf),
        Ev("u", "x", "save", 1.0, context_id="b:1|2"),
        Ev("u", "x", "click", 1.0, weight=math.nan),
    ],
)
async def test_invalid_events_are_refused_and_the_slice_is_untouched(
    redis_client: aioredis.Redis, key_prefix: str, event: Ev
) -> None:
    state = RedisState(redis_client, StateConfig(), key_prefix)
    good = Ev("u", "ok", "click", 1.0)
    with pytest.raises(InvalidBatchError):
        await state.apply(TOPIC, 0, [(0, good), (1, event)])
    assert await state.watermark(TOPIC, 0) is None
    assert await state.user_sequence(TOPIC, 0, "u") == []


async def test_works_with_decoded_responses(redis_client: aioredis.Redis, key_prefix: str) -> None:
    conn = redis_client.get_connection_kwargs()
    client = aioredis.Redis(
        host=conn["host"], port=conn["port"], db=conn.get("db", 0), decode_responses=True
    )
    try:
        state = RedisState(client, StateConfig(), key_prefix)
        await state.apply(TOPIC, 2, session(4))
        assert len(await state.user_sequence(TOPIC, 2, "u1")) == 4
        assert await state.user_version(TOPIC, 2, "u1") == 4
        assert await state.item_neighbours("i3", 5)
        assert (await state.dirty(TOPIC, 2, "users", 5))[0][0] == "u1"
    finally:
        await client.aclose()


async def test_a_batch_no_replica_acknowledges_is_retried_not_trusted(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """`wait_replicas`: apply returns only once that many replicas hold the batch (Redis WAIT).
    The test's Redis has no replica, so the apply says "retry" (a transient error, never a
    committed offset), and the retry is a replay the watermark skips."""
    state = RedisState(
        redis_client, StateConfig(), key_prefix, wait_replicas=1, wait_timeout_s=0.05
    )
    batch = session(5)
    with pytest.raises(StateUnavailableError, match="0 of the 1 replicas"):
        await state.apply(TOPIC, 0, batch)
    plain = RedisState(redis_client, StateConfig(), key_prefix)
    again = await plain.apply(TOPIC, 0, batch)
    assert (again.applied, again.skipped, again.watermark) == (0, 5, 4)
