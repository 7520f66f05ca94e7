"""The apply script's per-call write-back at sizes the parity test never reaches, and the bench.

The script mirrors state in Lua and writes it back with variadic commands, split into chunks of
500 members; these streams put more than one chunk into one call (one list, one user, the dirty
marks, the holders of one item) and must still equal the reference.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from kafka import KafkaAdminClient

from state import CoEngagementGraph, RedisState, StateConfig
from state.coengagement import Event as Ev
from streams.devtools.bench.state import (
    changelog_run,
    changelog_topic,
    compacted,
    generate,
    partitioned,
    restore,
    run_state_bench,
)
from tests.support.services import Services

pytestmark = pytest.mark.integration

TOPIC = "eng"


async def test_one_call_over_many_chunks_equals_reference(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    cfg = StateConfig(slice_size=3000, trim_every=100_000, k_max=20, max_pairs=2)
    events = []
    for n in range(1200):  # "hot" gets 1200 distinct neighbours, some twice, in one call
        events.append(Ev(f"u{n % 700}", f"x{n}", "click", 1000.0 + n))
        events.append(Ev(f"u{n % 700}", "hot", "save", 1000.5 + n, None, f"b{n % 3}"))
    events += [Ev("heavy", f"h{n % 50}", "view", 5000.0 + n) for n in range(600)]
    state = RedisState(redis_client, cfg, key_prefix)
    result = await state.apply(TOPIC, 0, list(enumerate(events)))
    assert result.applied == len(events)
    ref = CoEngagementGraph(cfg)
    ref.add_many(events)
    assert await state.user_sequence(TOPIC, 0, "heavy") == ref.sequence("heavy")
    assert await state.user_version(TOPIC, 0, "heavy") == 600
    for item in ["hot", "x5", "x1199", "h7"]:
        got = await state.item_neighbours(item, 20)
        want = ref.neighbours(item, 20)
        assert [m for m, _ in got] == [m for m, _ in want]
        assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)
        assert await state.item_version(item) == ref.item_version(item)
    assert await state.dirty_backlog() == {"users": 701, "items": 1200 + 1 + 50}
    holders = (await state.holders(["hot", "h7"]))[(TOPIC, 0)]
    assert holders["hot"] == dict(ref.holders("hot"))  # 700 holders, over one chunk: capped
    assert len(holders["hot"]) == cfg.hold_max and result.holders_capped == 700 - cfg.hold_max
    assert holders["h7"] == {"heavy": dict(ref.holders("h7"))["heavy"]}


def _changelogs(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {t for t in admin.list_topics() if t.startswith("bench-changelog-")}
    finally:
        admin.close()


async def test_bench_runs_and_cleans_up(redis_client: aioredis.Redis, services: Services) -> None:
    # other benches' keys may share this Redis (its data outlives a session): compare, not count
    before = {k async for k in redis_client.scan_iter(match="bench*:*")}
    topics = _changelogs(services.bootstrap_servers)
    result = await run_state_bench(redis_client, 3000, 1, kafka=services.bootstrap_servers)
    assert result["events"] == 3000
    assert result["events_per_s"] > 0
    read = result["read"]  # every engaged item, read in full and then from kept lists
    assert read["items"] > 0 and read["full"]["items_per_s"] > 0 and read["kept"]["items_per_s"] > 0
    reference = result["in_process"]  # the same stream on state/coengagement.py, in process
    assert reference["events_per_s"] > 0 and reference["read_items_per_s"] > 0
    assert reference["x_redis_apply"] == pytest.approx(
        reference["events_per_s"] / result["events_per_s"], rel=0.01
    )
    for size, run in result["changelog"].items():  # the reference again, writing its changelog
        assert int(size) > 0 and run["events_per_s"] > 0 and run["bytes_per_event"] > 0
        assert run["records_per_event"] > 0 and run["restore_s"] > 0
        assert run["restore_compacted_s"] > 0
        # each key once at most in a compacted log (records per event is rounded to 0.001)
        assert 0 < run["compacted_records"] <= run["records_per_event"] * 3000 + 1.5
        assert run["x_in_process"] == pytest.approx(  # rounded to 0.01
            run["events_per_s"] / reference["events_per_s"], abs=0.005
        )
    assert {k async for k in redis_client.scan_iter(match="bench*:*")} == before
    assert _changelogs(services.bootstrap_servers) == topics


async def test_the_bench_changelog_restores_each_partitions_state(services: Services) -> None:
    cfg = StateConfig(hold_max=8)  # a small cap: holders are dropped, and must stay dropped
    parts = partitioned(generate(3000))
    run = await changelog_run(parts, cfg, services.bootstrap_servers, 100, drop=False)
    try:
        _, logs, graphs = await restore(services.bootstrap_servers, run.topic, cfg)
    finally:
        await asyncio.to_thread(changelog_topic, services.bootstrap_servers, False, run.topic)
    assert sum(len(log) for log in logs.values()) == run.records
    for partition, batch in parts.items():
        assert logs[partition][-1][0] == "m"  # the partition's own records, the meta last
        ref = CoEngagementGraph(cfg)
        ref.add_many((e for _, e in batch), (o for o, _ in batch))
        # from the log as written, and from what the cleaner would leave of it
        for restored in (
            graphs[partition],
            CoEngagementGraph.from_records(cfg, compacted(logs[partition])),
        ):
            for user in {e.user_id for _, e in batch}:
                assert restored.sequence(user) == ref.sequence(user)
                assert restored.user_version(user) == ref.user_version(user)
            for item in {e.item_id for _, e in batch}:
                assert restored.shard_list(item) == ref.shard_list(item)
                assert restored.holders(item) == ref.holders(item)
                assert restored.item_degree(item) == ref.item_degree(item)
