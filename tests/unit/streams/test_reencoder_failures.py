"""The re-encoder's last step of the commit order: marks are cleared only after the upsert,
and the holders of re-encoded items are rebuilt in the pass's own upsert (fan-out).

Every dependency is faked at its Python method level (RedisState, EncodeInputs, CatalogStore,
VectorStore, EncoderBundle); a shared log records the order of the calls that matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import numpy as np
import pytest

from encoders.runtime import EncoderBundle
from state import (
    CatalogRecord,
    CatalogStore,
    EncodeBasis,
    EncodeInputs,
    ItemInputs,
    RedisState,
    SeqEntry,
    StateConfig,
    StoredPoint,
    UserInputs,
    VectorRecord,
    VectorStore,
    VectorStoreUnavailable,
)
from state.list_cache import ListCache
from streams.settings import ReencodeSettings
from streams.vectors.reencoder import Reencoder

DIM, CONTENT_DIM = 4, 3
SHARD = ("eng", 0)
USER_MARKS = [("u1", 100.0), ("u2", 101.0)]
ITEM_MARKS = [("i1", 102.0)]
CATALOG_MARKS = [("i2", 103.0)]
Log = list[tuple[object, ...]]


OTHER_SHARD = ("eng", 1)
# i1 is held by this pass's users u1 and u2, by u3 beside them, by u7 in another shard, and by
# u4 only further back than its encoder window (FakeInputs)
HOLDERS = {SHARD: {"i1": {"u1": 4, "u2": 9, "u3": 6, "u4": 1}}, OTHER_SHARD: {"i1": {"u7": 2}}}


class FakeRedisState:
    """`RedisState.dirty` / `clear_dirty` / `mark_dirty` over an in-memory zset per (topic,
    partition, kind), and `holders` from `HOLDERS`; `fail_holders` and `fail_marking` make
    `holders` and `mark_dirty` raise."""

    config = StateConfig()

    def __init__(self, log: Log) -> None:
        self.log = log
        self.marks: dict[tuple[str, int, str], list[tuple[str, float]]] = {
            (*SHARD, "users"): list(USER_MARKS),
            (*SHARD, "items"): list(ITEM_MARKS),
        }
        self.fail_holders: BaseException | None = None
        self.fail_marking: BaseException | None = None

    async def holders(
        self, item_ids: Sequence[str]
    ) -> dict[tuple[str, int], dict[str, dict[str, int]]]:
        self.log.append(("holders", sorted(item_ids)))
        if self.fail_holders is not None:
            raise self.fail_holders
        wanted = set(item_ids)
        return {
            shard: {i: dict(users) for i, users in items.items() if i in wanted}
            for shard, items in HOLDERS.items()
        }

    async def mark_dirty(
        self, topic: str, partition: int, kind: str, marks: Sequence[tuple[str, float]]
    ) -> int:
        self.log.append(("mark_dirty", topic, partition, kind, list(marks)))
        if self.fail_marking is not None:
            raise self.fail_marking
        page = self.marks.setdefault((topic, partition, kind), [])
        new = [m for m in marks if m[0] not in {member for member, _ in page}]
        page += new
        return len(new)

    async def dirty(
        self, topic: str, partition: int, kind: str, limit: int
    ) -> list[tuple[str, float]]:
        self.log.append(("dirty", topic, partition, kind))
        return list(self.marks.get((topic, partition, kind), []))[:limit]

    async def clear_dirty(
        self,
        topic: str,
        partition: int,
        kind: str,
        marks: Sequence[tuple[str, float]],
        *,
        rescore: float | None = None,
    ) -> int:
        self.log.append(("clear_dirty", topic, partition, kind, list(marks)))
        page = self.marks.get((topic, partition, kind), [])
        kept = [m for m in page if m not in set(marks)]  # a re-dirtied mark has a new score
        self.marks[(topic, partition, kind)] = kept
        return len(page) - len(kept)


class FakeInputs:
    """`EncodeInputs`: every item has version 4, degree 2 and neighbour i9; no bases yet. Users
    clicked i1 and viewed i5, except u4, whose window (seq_len 5, plus one) no longer holds i1."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.lists = ListCache(0)
        self.neighbour: dict[str, str] = {}  # item -> its one neighbour, when not i9

    async def items(self, item_ids: Iterable[str], k: int) -> dict[str, ItemInputs]:
        return {i: ItemInputs(i, 4, 2, [(self.neighbour.get(i, "i9"), 1.0)]) for i in item_ids}

    async def bases(self, item_ids: Iterable[str]) -> dict[str, EncodeBasis]:
        return {}

    async def users(
        self, topic: str, partition: int, user_ids: Iterable[str], *, tail: int | None = None
    ) -> dict[str, UserInputs]:
        self.log.append(("users", topic, partition, sorted(user_ids)))
        sequence = [SeqEntry("i1", "click", 90.0), SeqEntry("i5", "view", 95.0)]
        later = [SeqEntry("i5", "view", 95.0 + k) for k in range(6)]
        return {
            u: UserInputs(u, 7, 101.0, sequence[:1] + later)
            if u == "u4"
            else UserInputs(u, 7, 95.0, sequence)
            for u in user_ids
        }

    async def put_bases(self, bases: Mapping[str, EncodeBasis]) -> int:
        self.log.append(("put_bases", sorted(bases)))
        return len(bases)


class FakeCatalog:
    """`CatalogStore`: content version 1 for every item, plus "content arrived" marks."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.marks = list(CATALOG_MARKS)
        self.version_now = 1  # what `versions` reads: another put landed if above `get`'s 1

    async def dirty(self, limit: int) -> list[tuple[str, float]]:
        return list(self.marks)[:limit]

    async def get(self, item_ids: Iterable[str]) -> dict[str, CatalogRecord]:
        self.log.append(("catalog_get", sorted(item_ids)))
        return {i: CatalogRecord(i, f"title {i}", content_version=1, put_ts=50.0) for i in item_ids}

    async def versions(
        self, item_ids: Iterable[str], *, readers: Mapping[str, Iterable[str]] | None = None
    ) -> dict[str, int]:
        joins = {n: sorted(r) for n, r in (readers or {}).items()}
        self.log.append(("content_versions", sorted(item_ids), joins))
        return dict.fromkeys(item_ids, self.version_now)

    async def clear_dirty(self, marks: Sequence[tuple[str, float]]) -> int:
        self.log.append(("catalog_clear", list(marks)))
        self.marks = [m for m in self.marks if m not in set(marks)]
        return len(marks)


class FakeStore:
    """`VectorStore.prepare` / `get` / `upsert`; `fail` makes the upsert raise."""

    def __init__(self, log: Log, fail: BaseException | None = None) -> None:
        self.log, self.fail = log, fail
        self.upserts: list[list[VectorRecord]] = []
        self.during_upsert: Callable[[], None] = lambda: None

    def prepare(self, version: str, dim: int) -> None:
        self.log.append(("prepare", version, dim))

    def get(
        self, kind: str, entity_ids: Iterable[str], *, version: str | None = None
    ) -> dict[str, StoredPoint]:
        assert version in ("v1", "v2")  # never through the alias
        payload = {"state_version": 3}
        return {e: StoredPoint(np.ones(DIM, dtype=np.float32), payload) for e in entity_ids}

    def upsert(
        self,
        version: str,
        records: Sequence[VectorRecord],
        *,
        insert_only: bool = False,
        refresh: bool = False,
    ) -> int:
        self.log.append(("upsert", version))
        if self.fail is not None:
            raise self.fail
        self.during_upsert()
        self.upserts.append(list(records))
        return len(records)


class FakeBundle:
    """`EncoderBundle` with the shapes the re-encoder relies on and constant outputs."""

    version, dim, content_dim, neighbours, seq_len = "v1", DIM, CONTENT_DIM, 2, 5

    def content_vectors(self, items: Sequence[CatalogRecord]) -> np.ndarray:
        return np.full((len(items), CONTENT_DIM), 0.5, dtype=np.float32)

    def item_vectors(
        self,
        content: np.ndarray,
        neighbour_content: Sequence[np.ndarray],
        neighbour_weights: Sequence[np.ndarray],
        degrees: np.ndarray,
    ) -> np.ndarray:
        assert content.shape[1] == CONTENT_DIM
        assert len(neighbour_content) == len(neighbour_weights) == len(degrees) == len(content)
        return np.ones((len(content), DIM), dtype=np.float32)

    def user_vectors(
        self, histories: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        for vectors, actions, times in histories:
            assert vectors.shape == (len(actions), DIM) and len(times) == len(actions)
        return np.full((len(histories), DIM), 2.0, dtype=np.float32)


class World:
    def __init__(self, fail: BaseException | None = None, fanout_per_pass: int = 100) -> None:
        self.log: Log = []
        self.state = FakeRedisState(self.log)
        self.inputs = FakeInputs(self.log)
        self.catalog = FakeCatalog(self.log)
        self.store = FakeStore(self.log, fail)
        self.reencoder = Reencoder(
            cast(RedisState, self.state),
            cast(EncodeInputs, self.inputs),
            cast(CatalogStore, self.catalog),
            cast(VectorStore, self.store),
            cast(EncoderBundle, FakeBundle()),
            ReencodeSettings(
                item_min_change=0.0, marks_per_shard=100, fanout_per_pass=fanout_per_pass
            ),
            clock=lambda: 1000.0,
        )
        self.reencoder.on_vector_write(lambda: self.log.append(("after_vector_write",)))

    def names(self) -> list[object]:
        return [entry[0] for entry in self.log]

    def clears(self) -> dict[tuple[object, ...], object]:
        return {e[1:4]: e[4] for e in self.log if e[0] == "clear_dirty"}


async def test_a_failed_upsert_raises_and_leaves_every_mark() -> None:
    world = World(fail=VectorStoreUnavailable("qdrant away"))
    with pytest.raises(VectorStoreUnavailable):
        await world.reencoder.run_pass([SHARD])
    assert "upsert" in world.names()
    for never in ("clear_dirty", "catalog_clear", "put_bases", "after_vector_write"):
        assert never not in world.names(), never
    assert world.state.marks == {(*SHARD, "users"): USER_MARKS, (*SHARD, "items"): ITEM_MARKS}
    assert world.catalog.marks == CATALOG_MARKS


async def test_the_marks_left_by_a_failed_pass_are_cleared_by_the_next() -> None:
    world = World(fail=VectorStoreUnavailable("qdrant away"))
    with pytest.raises(VectorStoreUnavailable):
        await world.reencoder.run_pass([SHARD])
    world.store.fail = None
    stats = await world.reencoder.run_pass([SHARD])
    assert stats.marks == len(USER_MARKS) + len(ITEM_MARKS) + len(CATALOG_MARKS)
    assert world.state.marks == {  # only the mark for u7's worker
        (*SHARD, "users"): [],
        (*SHARD, "items"): [],
        (*OTHER_SHARD, "users"): [("u7", 102.0)],
    }
    assert world.catalog.marks == []


async def test_clear_comes_after_upsert_with_exactly_the_marks_read() -> None:
    world = World()
    # while the upsert runs, u1 is dirtied again (new score) and u3 for the first time
    redirtied = [("u1", 150.0), ("u2", 101.0), ("u3", 151.0)]
    world.store.during_upsert = lambda: world.state.marks.update({(*SHARD, "users"): redirtied})

    stats = await world.reencoder.run_pass([SHARD])

    names = world.names()
    assert names.index("upsert") < names.index("clear_dirty")
    assert names.index("upsert") < names.index("catalog_clear")
    assert world.clears() == {
        (*SHARD, "users"): USER_MARKS,
        (*SHARD, "items"): ITEM_MARKS,
    }
    assert ("catalog_clear", CATALOG_MARKS) in world.log
    # only what was read is gone: the re-dirtied u1 and the new u3 wait for the next pass
    assert world.state.marks[(*SHARD, "users")] == [("u1", 150.0), ("u3", 151.0)]
    assert stats.users_encoded == 3  # u1, u2, and the holder u3
    assert stats.items_encoded == 2
    assert stats.reasons["cold_start"] == 2


async def test_the_upserted_records_carry_the_state_versions_read() -> None:
    world = World()
    await world.reencoder.run_pass([SHARD])
    [records] = world.store.upserts
    labels = {(r.kind, r.entity_id): r.state_version for r in records}
    # items: engagement version 4 + content version 1; users: their version
    assert labels == {
        ("items", "i1"): 5,
        ("items", "i2"): 5,
        **{("users", u): 7 for u in ("u1", "u2", "u3")},
    }
    assert all(np.asarray(r.vector).shape == (DIM,) for r in records)


async def test_the_vector_write_hook_runs_after_the_upsert_and_before_clearing() -> None:
    world = World()
    await world.reencoder.run_pass([SHARD])
    names = world.names()
    hook = names.index("after_vector_write")
    assert names.index("upsert") < names.index("put_bases") < hook
    assert all(i > hook for i, n in enumerate(names) if n in ("clear_dirty", "catalog_clear"))
    assert names.count("after_vector_write") == 1


async def test_a_crash_at_the_hook_leaves_the_marks() -> None:
    world = World()

    def crash() -> None:
        raise RuntimeError("killed after the vector write")

    world.reencoder.on_vector_write(crash)
    with pytest.raises(RuntimeError):
        await world.reencoder.run_pass([SHARD])
    assert "upsert" in world.names()
    assert "clear_dirty" not in world.names()
    assert "catalog_clear" not in world.names()
    assert world.state.marks[(*SHARD, "users")] == USER_MARKS


async def test_an_unreachable_store_while_reading_history_vectors_leaves_the_marks() -> None:
    world = World()

    def unreachable(*_args: object, **_kwargs: object) -> dict[str, StoredPoint]:
        raise VectorStoreUnavailable("qdrant away")

    world.store.get = unreachable  # type: ignore[method-assign]
    with pytest.raises(VectorStoreUnavailable):
        await world.reencoder.run_pass([SHARD])
    assert "upsert" not in world.names()
    assert "clear_dirty" not in world.names()


async def test_an_idle_pass_writes_and_clears_nothing() -> None:
    world = World()
    world.state.marks.clear()
    world.catalog.marks.clear()
    stats = await world.reencoder.run_pass([SHARD])
    assert stats.idle
    assert set(world.names()) == {"dirty"}


async def test_each_shard_is_drained_once_per_kind() -> None:
    world = World()
    await world.reencoder.run_pass([SHARD, SHARD])
    drained = [e[1:] for e in world.log if e[0] == "dirty"]
    assert drained == [(*SHARD, "users"), (*SHARD, "items")]


async def test_fan_out_rebuilds_the_holders_of_its_shards_in_the_pass_own_upsert() -> None:
    world = World()
    stats = await world.reencoder.run_pass([SHARD])
    names = world.names()
    assert names.index("holders") < names.index("upsert") < names.index("put_bases")
    assert names.index("put_bases") < names.index("clear_dirty")
    assert ("holders", ["i1", "i2"]) in world.log
    [records] = world.store.upserts
    users = {r.entity_id for r in records if r.kind == "users"}
    # u1 and u2 are this pass's own; u3 holds i1 in its window; u4 only further back
    assert users == {"u1", "u2", "u3"}
    assert world.state.marks[(*SHARD, "users")] == []  # nothing marked for a later pass here
    # their freshness counts from the event that changed i1 (first dirty at 102, now 1000)
    assert sorted(stats.freshness_s["users"]) == [898.0, 899.0, 900.0]


async def test_holders_in_another_worker_shard_are_marked_for_it_after_the_upsert() -> None:
    """Rebuilt here, u7 could race with its own worker's pass for a newer state of it, built
    from the item vector this pass replaces; a mark after the upsert makes that worker read the
    new one."""
    world = World()
    stats = await world.reencoder.run_pass([SHARD])
    names = world.names()
    assert names.index("upsert") < names.index("mark_dirty") < names.index("put_bases")
    marked = {e[1:4]: e[4] for e in world.log if e[0] == "mark_dirty"}
    assert marked == {(*OTHER_SHARD, "users"): [("u7", 102.0)]}
    assert not any(e[0] == "users" and e[1:3] == OTHER_SHARD for e in world.log)  # not read
    assert (stats.fanout_users, stats.fanout_marked, stats.fanout_dropped) == (1, 1, 0)
    assert stats.users_behind == 1  # u7, until its worker's next pass


async def test_fan_out_is_bounded_per_pass_and_counts_what_it_left_out() -> None:
    world = World(fanout_per_pass=1)
    stats = await world.reencoder.run_pass([SHARD])
    [records] = world.store.upserts
    assert {r.entity_id for r in records if r.kind == "users"} == {"u1", "u2", "u3"}
    # the first shard in order takes the one turn, and its newest holder (u3); u4 and u7 wait
    assert (stats.fanout_users, stats.fanout_marked, stats.fanout_dropped) == (1, 0, 2)
    assert stats.users_behind == 2


async def test_a_failed_holder_read_writes_nothing_and_leaves_every_mark() -> None:
    world = World()
    world.state.fail_holders = VectorStoreUnavailable("redis away")
    with pytest.raises(VectorStoreUnavailable):
        await world.reencoder.run_pass([SHARD])
    for never in ("upsert", "put_bases", "clear_dirty", "catalog_clear", "after_vector_write"):
        assert never not in world.names(), never
    assert world.state.marks[(*SHARD, "items")] == ITEM_MARKS


async def test_a_failed_marking_leaves_every_mark_and_records_no_basis() -> None:
    world = World()
    world.state.fail_marking = VectorStoreUnavailable("redis away")
    with pytest.raises(VectorStoreUnavailable):
        await world.reencoder.run_pass([SHARD])
    for never in ("put_bases", "clear_dirty", "catalog_clear", "after_vector_write"):
        assert never not in world.names(), never
    assert world.state.marks[(*SHARD, "items")] == ITEM_MARKS


async def test_user_records_carry_the_versions_of_the_item_vectors_they_were_built_from() -> None:
    world = World()
    await world.reencoder.run_pass([SHARD])
    [records] = world.store.upserts
    basis = {r.entity_id: r.basis_version for r in records}
    # history i1 (encoded in this pass: 4 + content 1) and i5 (stored with state version 3)
    assert basis == {"i1": 0, "i2": 0, "u1": 8, "u2": 8, "u3": 8}


async def test_with_a_shadow_each_model_rebuilds_the_holders_from_its_own_vectors() -> None:
    """A holder of this worker's shards is built in the new model's collection from that
    model's item vectors, in its own upsert; another worker's holder is marked only after both
    models' upserts, so its rebuild finds the new item vectors in each collection."""

    class NextModel(FakeBundle):
        version = "v2"

    world = World()
    world.reencoder.dual_write(world.reencoder.spawn(cast(EncoderBundle, NextModel())))
    await world.reencoder.run_pass([SHARD])
    names = world.names()
    upserts = [i for i, name in enumerate(names) if name == "upsert"]
    assert [world.log[i][1] for i in upserts] == ["v1", "v2"]
    for records in world.store.upserts:
        assert {r.entity_id for r in records if r.kind == "users"} == {"u1", "u2", "u3"}
    assert upserts[-1] < names.index("mark_dirty") < names.index("put_bases")
    assert names.count("mark_dirty") == 1


async def test_items_join_their_neighbours_readers_as_they_read_the_content_versions() -> None:
    """The other half is the put's: content first, then its readers (state/catalog.py)."""
    world = World()
    await world.reencoder.run_pass([SHARD])
    _, asked, joins = next(e for e in world.log if e[0] == "content_versions")
    assert asked == ["i9"] and set(joins["i9"]) >= {"i1", "i2"}  # no basis yet: all join


async def test_a_neighbour_encoded_in_the_same_pass_is_read_again_after_the_join() -> None:
    """i1 and i2 list each other. Their own content was read with their plans, before the
    join; a put that landed in between (version 2 now) is what each reads of the other."""
    world = World()
    world.inputs.neighbour = {"i1": "i2", "i2": "i1"}
    world.catalog.version_now = 2
    await world.reencoder.run_pass([SHARD])
    reads = [e for e in world.log if e[0] in ("content_versions", "catalog_get")]
    assert reads[0] == ("catalog_get", ["i1", "i2"])  # the plans' own content
    assert reads[1] == ("content_versions", ["i1", "i2"], {"i1": ["i2"], "i2": ["i1"]})
    assert reads[2] == ("catalog_get", ["i1", "i2"])  # version 2 is not cached: read again
