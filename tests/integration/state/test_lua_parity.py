"""The Lua apply script equals the pure-Python reference on generated event streams, and the
batched read scripts (read_users.lua, read_holders.lua) equal the per-key reads they replaced."""

from __future__ import annotations

import uuid
import zlib

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from state import (
    CoEngagementGraph,
    RedisState,
    StateConfig,
    encode_inputs,
    merge_neighbours,
    redis_state,
)
from state.coengagement import Event as Ev
from state.coengagement import SeqEntry
from state.encode_inputs import EncodeInputs, UserInputs
from state.keys import ShardKeys, shard_tag
from state.redis_io import text

pytestmark = pytest.mark.integration

TOPIC = "eng"
PARTITIONS = 3


def draw_event_id(draw: st.DrawFn, fresh: str, earlier: list[Ev]) -> str | None:
    kind = draw(st.sampled_from(["fresh", "fresh", "absent", "repeat"]))
    if kind == "repeat" and earlier:
        return earlier[draw(st.integers(0, len(earlier) - 1))].event_id
    return None if kind == "absent" else fresh


@st.composite
def streams(draw: st.DrawFn) -> list[Ev]:
    """Events with jitter, late arrivals and long gaps: decay, horizon, age and rebase all act;
    event ids are fresh, absent, or repeat an earlier one (a duplicate, inside or past a window)."""
    gaps = [20_000.0, 90_000.0, -30_000.0]
    events: list[Ev] = []
    ts = 1_000_000.0
    for n in range(draw(st.integers(5, 120))):
        event_id = draw_event_id(draw, f"e{n}", events)
        if draw(st.integers(0, 9)) == 0:
            ts += draw(st.sampled_from(gaps))
        else:
            ts += draw(st.floats(-120.0, 600.0))
        events.append(
            Ev(
                draw(st.sampled_from(["u1", "u2", "u3", "u4"])),
                draw(st.sampled_from(["a", "b", "c", "d", "e", "f"])),
                draw(st.sampled_from(["save", "click", "view"])),
                ts,
                draw(st.one_of(st.none(), st.floats(0.0, 4.0))),
                draw(st.sampled_from([None, "b1", "c:9"])),
                event_id,
            )
        )
    return events


configs = st.builds(
    StateConfig,
    seq_len=st.integers(1, 8),
    k_max=st.integers(1, 5),
    half_life_s=st.sampled_from([300.0, 3600.0, 7 * 86400.0]),
    pair_horizon_s=st.sampled_from([200.0, 3600.0]),
    max_pairs=st.integers(1, 6),
    max_event_age_s=st.sampled_from([500.0, 86400.0]),
    hub_alpha=st.sampled_from([0.0, 0.5, 1.3]),
    context_len=st.integers(1, 4),
    slice_size=st.integers(1, 9),
    trim_every=st.integers(1, 9),
    dedup_window=st.integers(0, 4),
    hold_max=st.integers(0, 4),
)


def on_redis(examples: int) -> settings:
    """Examples share the test's Redis fixture (each takes a prefix of its own); no deadline,
    a script round trip's time is the machine's."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def partition_of(user_id: str) -> int:
    return zlib.crc32(user_id.encode()) % PARTITIONS


@on_redis(100)
@given(events=streams(), cfg=configs, batch_size=st.integers(1, 20))
async def test_lua_equals_reference(
    redis_client: aioredis.Redis,
    key_prefix: str,
    events: list[Ev],
    cfg: StateConfig,
    batch_size: int,
) -> None:
    prefix = f"{key_prefix}x{uuid.uuid4().hex[:8]}"  # one fixture value, many examples
    state = RedisState(redis_client, cfg, prefix)
    refs = {p: CoEngagementGraph(cfg) for p in range(PARTITIONS)}
    per_partition: dict[int, list[tuple[int, Ev]]] = {p: [] for p in range(PARTITIONS)}
    for ev in events:
        mine = per_partition[partition_of(ev.user_id)]
        mine.append((len(mine), ev))
    duplicates = 0
    for p, batch in per_partition.items():
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size]
            duplicates += (await state.apply(TOPIC, p, chunk)).duplicates
            refs[p].add_many([ev for _, ev in chunk], [off for off, _ in chunk])
    assert duplicates == sum(ref.duplicates for ref in refs.values())
    await assert_same_state(state, refs, events)


async def assert_same_state(
    state: RedisState, refs: dict[int, CoEngagementGraph], events: list[Ev]
) -> None:
    for user in {ev.user_id for ev in events}:
        p = partition_of(user)
        assert await state.user_sequence(TOPIC, p, user) == refs[p].sequence(user)
        assert await state.user_version(TOPIC, p, user) == refs[p].user_version(user)
    holders = await state.holders(sorted({ev.item_id for ev in events}))
    for item in {ev.item_id for ev in events}:
        assert await state.item_version(item) == sum(r.item_version(item) for r in refs.values())
        for p, ref in refs.items():
            got_holders = holders.get((TOPIC, p), {}).get(item, {})
            assert got_holders == dict(ref.holders(item)), (p, item)
        got = dict(await state.item_neighbours(item, 100))
        want = dict(merge_neighbours(refs.values(), item, 100))
        assert got.keys() == want.keys()
        for member, weight in want.items():
            assert got[member] == pytest.approx(weight, rel=1e-9, abs=1e-300)


async def test_rule_boundaries_equal_reference(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Exact edges random floats rarely hit: the horizon, the age limit, a rebase, weight 0."""
    cfg = StateConfig(pair_horizon_s=100.0, max_event_age_s=1000.0, half_life_s=50.0)
    day = 86400.0
    events = [
        Ev("u1", "a", "click", day),
        Ev("u1", "b", "click", day + 100.0),  # exactly at the horizon: pairs
        Ev("u1", "c", "view", day + 200.5),  # 100.5 s after b: beyond the horizon
        Ev("u1", "d", "save", day + 200.5 - 1000.0, context_id="k"),  # exactly at the age limit
        Ev("u1", "e", "save", day + 200.0 - 1000.0, context_id="k"),  # just older: no pairs
        Ev("u1", "a", "save", day + 5000.0, context_id="k"),  # rebase of a's list, pairs via k
        Ev("u1", "f", "click", day + 5001.0, weight=0.0),  # zero-weight pair still recorded
    ]
    state = RedisState(redis_client, cfg, key_prefix)
    await state.apply(TOPIC, 0, list(enumerate(events)))
    ref = CoEngagementGraph(cfg)
    ref.add_many(events)
    assert await state.user_sequence(TOPIC, 0, "u1") == ref.sequence("u1")
    for item in "abcdef":
        got = await state.item_neighbours(item, 10)
        want = ref.neighbours(item, 10)
        assert [m for m, _ in got] == [m for m, _ in want]
        assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-9, abs=1e-300)
    assert {m for m, _ in ref.neighbours("b", 10)} == {"a"}
    assert {m for m, _ in ref.neighbours("d", 10)} == {"a"}  # via context k only
    assert ref.neighbours("e", 10) == []
    assert ref.item_t0("a") == day + 5000.0


# -- batched reads against the per-key reads they replaced ----------------------------------


async def per_key_users(
    client: aioredis.Redis, shard: ShardKeys, ids: list[str], tail: int | None
) -> dict[str, UserInputs]:
    """`EncodeInputs.users` as it read before read_users.lua: HMGET and LRANGE per user."""
    start = 0 if tail is None else -max(1, tail)
    out = {}
    for user_id in dict.fromkeys(ids):
        raw_v, raw_ts = await client.hmget(shard.user(user_id), ["v", "tsmax"])
        sequence = []
        for value in await client.lrange(shard.sequence(user_id), start, -1):
            item_id, action, ts = text(value).split("|")
            sequence.append(SeqEntry(item_id, action, float(ts)))
        ts_max = None if raw_ts is None else float(text(raw_ts))
        out[user_id] = UserInputs(user_id, 0 if raw_v is None else int(raw_v), ts_max, sequence)
    return out


async def per_key_holders(
    client: aioredis.Redis, prefix: str, ids: list[str]
) -> dict[tuple[str, int], dict[str, dict[str, int]]]:
    """`RedisState.holders` as it read before read_holders.lua: ZRANGE per shard and item."""
    out: dict[tuple[str, int], dict[str, dict[str, int]]] = {}
    for p in range(PARTITIONS):
        shard = ShardKeys(prefix, shard_tag(TOPIC, p))
        held = {}
        for item_id in dict.fromkeys(ids):
            flat = await client.zrange(shard.holders(item_id), 0, -1, withscores=True)
            if flat:
                held[item_id] = {text(user): int(offset) for user, offset in flat}
        if held:
            out[(TOPIC, p)] = held
    return out


@on_redis(60)
@given(
    events=streams(),
    cfg=configs,
    page=st.integers(1, 4),
    tail=st.one_of(st.none(), st.integers(-1, 10)),
    users=st.lists(st.sampled_from(["u1", "u2", "u3", "u4", "u9"]), max_size=8),
    items=st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "zz"]), max_size=10),
)
async def test_batched_reads_equal_per_key_reads(
    redis_client: aioredis.Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    events: list[Ev],
    cfg: StateConfig,
    page: int,
    tail: int | None,
    users: list[str],
    items: list[str],
) -> None:
    """Random states, pages of a few ids (a call's boundary falls anywhere), absent and repeated
    ids, every `tail`: the script readers return exactly what the per-key reads return."""
    monkeypatch.setattr(encode_inputs, "READ_PAGE", page)
    monkeypatch.setattr(redis_state, "HOLDERS_PAGE", page)
    prefix = f"{key_prefix}r{uuid.uuid4().hex[:8]}"
    state = RedisState(redis_client, cfg, prefix)
    for p in range(PARTITIONS):
        mine = [ev for ev in events if partition_of(ev.user_id) == p]
        await state.apply(TOPIC, p, list(enumerate(mine)))
    inputs = EncodeInputs(redis_client, cfg, prefix)
    for p in range(PARTITIONS):
        shard = ShardKeys(prefix, shard_tag(TOPIC, p))
        got = await inputs.users(TOPIC, p, users, tail=tail)
        want = await per_key_users(redis_client, shard, users, tail)
        assert got == want
        assert list(got) == list(want)
    got_holders = await state.holders(items)
    assert got_holders == await per_key_holders(redis_client, prefix, items)


@on_redis(60)
@given(
    events=streams(),
    cfg=configs,
    chunk=st.integers(1, 15),
    kept=st.integers(1, 12),
    page=st.integers(1, 4),
    calls=st.integers(1, 3),
    k=st.integers(1, 6),
)
async def test_kept_lists_read_as_fresh_ones(
    redis_client: aioredis.Redis,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    events: list[Ev],
    cfg: StateConfig,
    chunk: int,
    kept: int,
    page: int,
    calls: int,
    k: int,
) -> None:
    """Applies and reads taking turns: a reader that keeps lists between reads (a cache too
    small for them all, so some are evicted and read again) returns what a reader that keeps
    nothing returns, every time; a list whose item did not move in its shard is not re-sent.
    Pages of a few ids and a few calls in flight: pages wait for a call and answer in any order."""
    monkeypatch.setattr(encode_inputs, "READ_PAGE", page)
    monkeypatch.setattr(encode_inputs, "READ_CONCURRENCY", calls)
    prefix = f"{key_prefix}c{uuid.uuid4().hex[:8]}"
    state = RedisState(redis_client, cfg, prefix)
    keeping = EncodeInputs(redis_client, cfg, prefix, lists=kept)
    items = ["a", "b", "c", "d", "e", "f", "zz"]
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for start in range(0, len(events), chunk):
        for ev in events[start : start + chunk]:
            p = partition_of(ev.user_id)
            await state.apply(TOPIC, p, [(offsets[p], ev)])
            offsets[p] += 1
        fresh = EncodeInputs(redis_client, cfg, prefix)
        assert await keeping.items(items, k) == await fresh.items(items, k)
    assert len(keeping.lists) <= kept
    # with room for every list, and nothing applied between two reads, the second reads none
    roomy = EncodeInputs(redis_client, cfg, prefix, lists=len(items) * PARTITIONS)
    first = await roomy.items(items, k)
    assert roomy.lists.hits == 0
    assert await roomy.items(items, k) == first
    assert roomy.lists.hits == len(roomy.lists)


async def test_a_state_wiped_and_rebuilt_under_a_keeping_reader_is_read_anew(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    """Wiped while a worker runs, then fed from a later offset, an item's shard counts its
    versions from zero again: the same version now names another list, and the stamp's decay
    origin tells them apart."""
    cfg = StateConfig()
    prefix = f"{key_prefix}w"
    keeping = EncodeInputs(redis_client, cfg, prefix, lists=100)
    p = partition_of("u1")

    async def feed(ts: float, other: str) -> None:
        """A fresh ingest (it registers its shard again) applies two events from offset 0."""
        events = [Ev("u1", "a", "click", ts, None, None, None), Ev("u1", other, "click", ts + 10)]
        await RedisState(redis_client, cfg, prefix).apply(TOPIC, p, list(enumerate(events)))

    await feed(1_000.0, "b")
    before = await keeping.items(["a"], 5)
    assert [n for n, _ in before["a"].neighbours] == ["b"]
    async for key in redis_client.scan_iter(match=f"{prefix}*"):
        await redis_client.delete(key)
    await feed(2_000.0, "c")
    after = await keeping.items(["a"], 5)
    assert after["a"].version == before["a"].version  # the same version, another list
    assert after == await EncodeInputs(redis_client, cfg, prefix).items(["a"], 5)
    assert [n for n, _ in after["a"].neighbours] == ["c"]
