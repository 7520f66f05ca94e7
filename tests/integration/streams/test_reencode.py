"""The re-encode scheduler on the real Redis, embedded Qdrant and a briefly trained model,
checked against the from-scratch oracle of tests/support/vectors_world.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import redis.asyncio as aioredis

from encoders.data import encoder_window
from encoders.runtime import EncoderBundle
from state import (
    VectorRecord,
    VectorStore,
    VectorStoreUnavailable,
)
from state.keys import ShardKeys, shard_tag
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.tiny_model import publish_tiny_model
from streams.settings import Settings
from streams.vectors.reencoder import PassStats
from streams.vectors.rules import STAGES
from streams.wire.events import CatalogItem, Engagement
from tests.support.vectors_world import (
    PARTITIONS,
    World,
    assert_close,
    assert_matches_oracle,
    partition_of,
    vector_mismatches,
)

pytestmark = pytest.mark.integration

STREAM = GeneratorConfig(users=30, items=60, communities=3, events=700, seed=23)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> EncoderBundle:
    """A tiny model trained for one epoch on the test stream and published to a registry."""
    registry, version = publish_tiny_model(tmp_path_factory.mktemp("registry"), STREAM)
    return registry.load(version)


@pytest.fixture
def store(qdrant_store: VectorStore) -> VectorStore:
    """The test server (this test's collection prefix)."""
    return qdrant_store


@pytest.fixture
def world(
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
    bundle: EncoderBundle,
    store: VectorStore,
) -> Callable[..., World]:
    def factory(min_change: float = 0.0, **reencode: object) -> World:
        knobs = {
            "item_min_change": min_change,
            "fanout_min_change": 0.0,
            "window_s": 0.01,
            **reencode,
        }
        return World(redis_client, make_settings(reencode=knobs), bundle, store)

    return factory


def stream() -> list[Engagement]:
    return list(generate_events(STREAM))


def catalog_without(missing: int) -> list[CatalogItem]:
    return generate_catalog(STREAM)[missing:]


# -- tests -------------------------------------------------------------------------------------


async def test_drain_equals_oracle_then_nothing_to_do(world: Callable[..., World]) -> None:
    w = world()
    await w.put(catalog_without(5))  # five items encode from the empty-content stand-in
    await w.apply(stream())
    passes = await w.reencoder.run_until_idle(w.shards)
    assert await w.state.dirty_backlog() == {"users": 0, "items": 0}
    assert await w.catalog.backlog() == 0
    users, items = w.engaged()
    assert sum(p.users_encoded for p in passes) == len(users)
    assert passes[0].reasons["cold_start"] >= len(items)
    assert passes[0].freshness_s["users"] and passes[0].freshness_s["items"]
    # every step of a first pass ran (no switch: no shadow) and none overlaps another
    assert set(passes[0].stages_s) == set(STAGES) - {"shadow"}
    assert sum(passes[0].stages_s.values()) <= passes[0].pass_s
    await assert_matches_oracle(w)
    again = await w.reencoder.run_pass(w.shards)
    assert again.idle and again.items_encoded == again.users_encoded == 0


async def test_batched_reads_agree_with_redis_state(world: Callable[..., World]) -> None:
    w = world()
    await w.apply(stream())
    users, items = w.engaged()
    got = await w.inputs.items(items, 4)
    for item_id in items:
        assert got[item_id].version == await w.state.item_version(item_id)
        want = await w.state.item_neighbours(item_id, 4)
        assert [n for n, _ in got[item_id].neighbours] == [n for n, _ in want]
        assert got[item_id].neighbours == want  # one merge function: the same floats
    for p in range(PARTITIONS):
        mine = [u for u in users if partition_of(u) == p]
        read = await w.inputs.users(w.topic, p, mine)
        for user_id in mine:
            assert read[user_id].sequence == await w.state.user_sequence(w.topic, p, user_id)
            assert read[user_id].version == await w.state.user_version(w.topic, p, user_id)


async def test_new_events_reencode_that_user_and_changed_items_only(
    world: Callable[..., World],
) -> None:
    w = world(min_change=0.1)
    await w.put(catalog_without(0))
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    users, items = w.engaged()
    before_users, before_items = w.vectors("users", users), w.vectors("items", items)
    user = users[0]
    ts = max(e.ts for evs in w.events.values() for e in evs) + 5.0
    touched = [e.item_id for e in w.events[partition_of(user)] if e.user_id == user][-2:]
    assert touched
    new = [
        Engagement(f"n{k}", user, item, "save", ts + k, context_id="bn")
        for k, item in enumerate([*touched, "i_fresh"])
    ]
    await w.apply(new)
    passes = await w.reencoder.run_until_idle(w.shards)
    assert sum(p.reasons["cold_start"] for p in passes) == 1  # i_fresh, never encoded
    after_users, after_items = w.vectors("users", users), w.vectors("items", items)
    changed = {i for i in items if after_items[i][1] != before_items[i][1]}
    assert changed <= set(touched) | {n for i in touched for n in await neighbours_of(w, i)}
    assert "i_fresh" in w.vectors("items", ["i_fresh"])
    # the user, and by fan-out the users whose encoder window holds an item whose vector
    # changed: nobody else (a holder of it only further back is encoded again, to the same
    # vector and basis version, which the store skips)
    holders = {u for u in users if await window(w, u) & changed}
    rebuilt = {u for u in users if after_users[u][1:] != before_users[u][1:]}
    assert rebuilt == {user} | holders
    assert sum(p.fanout_users for p in passes) >= len(holders - {user})
    assert all(after_users[u][1] == before_users[u][1] for u in rebuilt - {user})  # same state


async def window(w: World, user_id: str) -> set[str]:
    sequence = await w.state.user_sequence(w.topic, partition_of(user_id), user_id)
    return {item_id for item_id, _, _ in encoder_window(sequence, w.bundle.seq_len)}


async def neighbours_of(w: World, item_id: str) -> list[str]:
    return [n for n, _ in await w.state.item_neighbours(item_id, 50)]


async def visited(w: World) -> int:
    """Drain the stream, then 20 items change: each takes the content of an item of another
    community, and a new user engages with them all. The drained users holding them are behind
    until rebuilt. Returns the passes' fan-out drops."""
    passes = await twenty_items_change(w)
    assert sum(p.fanout_users for p in passes) > 0
    # holders are rebuilt by the pass that re-encoded their item, in its own upsert
    assert all(p.items_encoded for p in passes if p.fanout_users)
    return sum(p.fanout_dropped for p in passes)


async def twenty_items_change(w: World) -> list[PassStats]:
    """`visited`'s stream and change; the passes after the change."""
    catalog = catalog_without(0)
    await w.put(catalog)
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    ts = max(e.ts for evs in w.events.values() for e in evs) + 5.0
    items = w.engaged()[1][:20]
    theirs = {c.item_id: c for c in catalog}
    swapped = [theirs[f"i{(int(i.removeprefix('i')) + 1) % len(catalog)}"] for i in items]
    await w.put([replace(c, item_id=i) for i, c in zip(items, swapped, strict=True)])
    await w.apply(
        [Engagement(f"v{k}", "u999", item, "click", ts + k) for k, item in enumerate(items)]
    )
    return await w.reencoder.run_until_idle(w.shards)


async def test_fan_out_rebuilds_every_holder_of_a_changed_item_exactly(
    world: Callable[..., World],
) -> None:
    """Without fan-out, the holders would keep the old item vectors until their next event."""
    w = world()
    assert await visited(w) == 0
    assert await assert_matches_oracle(w) == sum(map(len, w.engaged()))


async def test_holders_of_an_item_whose_vector_barely_moved_stand(
    world: Callable[..., World],
) -> None:
    """Below `fanout_min_change` the changed items are re-encoded, but their holders are not
    rebuilt: every drained user keeps its stored vector (only the new user is written)."""
    w = world(fanout_min_change=1.99)  # 1 - cosine (at most 2) does not reach it: none moves
    passes = await twenty_items_change(w)
    assert sum(p.items_still for p in passes) >= 20
    assert sum(p.fanout_users for p in passes) == 0
    users = [u for u in w.engaged()[0] if u != "u999"]
    stored = w.vectors("users", users)
    changed_at = max(stored[u][2] for u in users)  # updated_at: no drained user written again
    assert changed_at < min(w.vectors("items", w.engaged()[1][:20]).values(), key=_at)[2]


def _at(point: tuple[object, int, float]) -> float:
    return point[2]


async def test_fan_out_over_its_bound_leaves_users_behind_and_counts_them(
    world: Callable[..., World],
) -> None:
    w = world(fanout_per_pass=2)
    assert await visited(w) > 0
    _, problems = await vector_mismatches(w)
    assert problems and all(p.startswith("user ") and "cosine" in p for p in problems)


async def test_catalog_item_gets_content_only_vector_at_once(world: Callable[..., World]) -> None:
    w = world(min_change=0.1)
    item = CatalogItem("i_new", "a lone lighthouse", "keeper notes", ("maritime",))
    await w.put([item])
    stats = await w.reencoder.run_pass(w.shards)
    assert stats.reasons["cold_start"] == 1 and stats.items_encoded == 1
    vector, version, _ = w.vectors("items", ["i_new"])["i_new"]
    content = w.bundle.content_vectors([item])
    alone = w.bundle.item_vectors(
        content, [content[:0]], [np.zeros(0, np.float32)], np.zeros(1, np.float32)
    )
    assert version == 1
    assert_close(vector, alone[0], "i_new")
    await w.put([CatalogItem("i_new", "a lone lighthouse", "new text", ("maritime",))])
    stats = await w.reencoder.run_pass(w.shards)
    assert stats.reasons["content"] == 1
    assert w.vectors("items", ["i_new"])["i_new"][1] == 2


async def test_stale_writes_never_move_a_vector_back(world: Callable[..., World]) -> None:
    w = world()
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    old_vector, old_version, _ = w.vectors("users", ["u3"])["u3"]
    ts = max(e.ts for evs in w.events.values() for e in evs) + 5.0
    await w.apply(
        [Engagement("x1", "u3", "i1", "click", ts), Engagement("x2", "u3", "i2", "view", ts + 1)]
    )
    await w.reencoder.run_until_idle(w.shards)
    fresh_vector, fresh_version, updated = w.vectors("users", ["u3"])["u3"]
    assert fresh_version == old_version + 2
    # a zombie worker's late write of the older state is refused by the store's guard
    w.store.upsert(w.bundle.version, [VectorRecord("users", "u3", old_vector, old_version, ts)])
    # a duplicate mark (a redelivery) re-encodes the same state: an equal version is skipped too
    shard = ShardKeys(w.settings.redis.key_prefix, shard_tag(w.topic, partition_of("u3")))
    await w.client.zadd(shard.dirty("users"), {"u3": ts - 1000})
    await w.reencoder.run_until_idle(w.shards)
    vector, version, again = w.vectors("users", ["u3"])["u3"]
    assert version == fresh_version and again == updated
    np.testing.assert_array_equal(vector, fresh_vector)


async def test_marks_survive_a_failed_upsert(
    world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world()
    await w.apply(stream()[:100])
    backlog = await w.state.dirty_backlog()

    def unreachable(*_: object, **__: object) -> int:
        raise VectorStoreUnavailable("down for the test")

    monkeypatch.setattr(w.store, "upsert", unreachable)
    with pytest.raises(VectorStoreUnavailable):
        await w.reencoder.run_pass(w.shards)
    assert await w.state.dirty_backlog() == backlog
    monkeypatch.undo()
    await w.reencoder.run_until_idle(w.shards)
    await assert_matches_oracle(w)


async def test_run_loop_drains_and_stops(world: Callable[..., World]) -> None:
    w = world()
    await w.apply(stream()[:200])
    stop, seen = asyncio.Event(), list[PassStats]()
    task = asyncio.create_task(w.reencoder.run(lambda: w.shards, stop, seen.append))
    for _ in range(400):
        await asyncio.sleep(0.02)
        if seen and await w.state.dirty_backlog() == {"users": 0, "items": 0}:
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    assert sum(s.users_encoded for s in seen) == len(w.engaged()[0])
    await assert_matches_oracle(w)


async def test_a_wrong_item_vector_is_named_with_what_it_was_encoded_from(
    world: Callable[..., World],
) -> None:
    """The oracle's report says which input differs: here none, so the vector itself is wrong."""
    w = world()
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    stored = w.vectors("items", ["i1", "i2"])
    (_, version, ts), (vector, _, _) = stored["i1"], stored["i2"]
    w.store.upsert(
        w.bundle.version, [VectorRecord("items", "i1", vector, version, ts)], refresh=True
    )
    _, problems = await vector_mismatches(w)
    assert len(problems) == 1 and problems[0].startswith("item i1: cosine"), problems
    assert problems[0].endswith(f"(redis: as the oracle; basis v{version}: as the oracle)")


async def test_an_item_encoded_before_its_content_was_stored_is_named_so(
    world: Callable[..., World],
) -> None:
    w = world()
    await w.put(catalog_without(1))
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    missing = generate_catalog(STREAM)[0]
    w.content[missing.item_id] = missing  # the oracle has it; Redis never stored it
    _, problems = await vector_mismatches(w)
    named = [p for p in problems if p.startswith(f"item {missing.item_id}:")]
    assert len(named) == 1 and named[0].endswith(
        "encoded without its content, which the oracle has)"
    )


async def test_content_that_arrives_late_re_encodes_the_items_that_read_it(
    world: Callable[..., World],
) -> None:
    """Five items have no content while the stream drains, so the items listing them are
    encoded from the stand-in; the put of that content marks them (their label grows by one)
    and they are encoded again from it. The oracle's label counts the put."""
    w = world()
    catalog = generate_catalog(STREAM)
    late, early = catalog[:5], catalog[5:]
    await w.put(early)
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    bases = await w.inputs.bases(w.engaged()[1])
    late_ids = {c.item_id for c in late}
    readers = sorted(i for i, b in bases.items() if late_ids & set(b.neighbours))
    readers = [i for i in readers if i not in late_ids]
    assert readers
    before = w.vectors("items", readers)
    await w.put(late)
    passes = await w.reencoder.run_until_idle(w.shards)
    assert sum(p.reasons["neighbour_content"] for p in passes) >= len(readers)
    assert sum(p.reasons["content"] for p in passes) >= len(late)
    after = w.vectors("items", readers)
    assert {i: after[i][1] - before[i][1] for i in readers} == dict.fromkeys(readers, 1)
    await assert_matches_oracle(w)


async def test_content_put_while_a_pass_encodes_its_readers_marks_them_again(
    world: Callable[..., World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put lands after a pass read the old content and before it upserts: that pass writes
    vectors of the old content, and the next one the new, with a higher label."""
    w = world()
    catalog = generate_catalog(STREAM)
    await w.put(catalog[1:])
    await w.apply(stream())
    await w.reencoder.run_until_idle(w.shards)
    loop, upsert, done = asyncio.get_running_loop(), w.store.upsert, []

    def put_first(*args: object, **kwargs: object) -> object:
        if not done:  # in the pass's worker thread: the loop runs the put meanwhile
            asyncio.run_coroutine_threadsafe(w.put(catalog[:1]), loop).result(10)
            done.append(True)
        return upsert(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(w.store, "upsert", put_first)
    ts = max(e.ts for evs in w.events.values() for e in evs) + 5.0
    bases = await w.inputs.bases(w.engaged()[1])
    reader = next(i for i, b in sorted(bases.items()) if catalog[0].item_id in b.neighbours)
    await w.apply([Engagement("late1", "u998", reader, "click", ts)])
    first = await w.reencoder.run_pass(w.shards)
    assert done and first.items_encoded >= 1
    stale = w.vectors("items", [reader])[reader][1]
    await w.reencoder.run_until_idle(w.shards)
    assert w.vectors("items", [reader])[reader][1] == stale + 1
    await assert_matches_oracle(w)
