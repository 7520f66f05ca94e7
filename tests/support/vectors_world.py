"""A test world for the re-encoder: real Redis, a vector store, a model, and the oracle.

The oracle recomputes every vector from scratch: the stream's own graph rules in Python
(`CoEngagementGraph`, one per partition, merged like the readers), the catalog, and the same
model, with none of the scheduler's code (RELIABILITY I2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import redis.asyncio as aioredis

from encoders.data import ACTION_CODES, FloatArray
from encoders.runtime import EncoderBundle
from state import CoEngagementGraph, RedisState, VectorStore, merge_neighbours
from state.catalog import CatalogRecord, CatalogStore
from state.encode_inputs import EncodeInputs
from streams.settings import Settings
from streams.vectors.reencoder import Reencoder
from streams.wire.events import CatalogItem, Engagement

PARTITIONS = 3


def partition_of(user_id: str) -> int:
    return int(user_id.removeprefix("u")) % PARTITIONS


class World:
    """One test's Redis state, catalog, vector store and scheduler, plus the applied events."""

    def __init__(
        self, client: aioredis.Redis, settings: Settings, bundle: EncoderBundle, store: VectorStore
    ) -> None:
        prefix = settings.redis.key_prefix
        self.client, self.settings, self.bundle, self.store = client, settings, bundle, store
        self.topic = settings.topics.engagements
        self.state = RedisState(client, settings.state, prefix)
        self.catalog = CatalogStore(client, prefix)
        self.inputs = EncodeInputs(client, settings.state, prefix)
        self.reencoder = Reencoder.connect(
            client, settings.state, prefix, store, bundle, settings.reencode
        )
        self.events: dict[int, list[Engagement]] = {p: [] for p in range(PARTITIONS)}
        self.owner: dict[str, int] = {}  # user -> partition, for worlds fed by Kafka
        self.content: dict[str, CatalogItem] = {}

    @property
    def shards(self) -> list[tuple[str, int]]:
        return [(self.topic, p) for p in self.events]

    def partition(self, user_id: str) -> int:
        return self.owner[user_id] if user_id in self.owner else partition_of(user_id)

    def replayed(self, events: dict[int, list[Engagement]]) -> None:
        """Take the events a worker applied from Kafka (per partition, in offset order)."""
        self.events = {p: list(evs) for p, evs in events.items()}
        self.owner = {e.user_id: p for p, evs in events.items() for e in evs}

    async def apply(self, events: Sequence[Engagement]) -> None:
        for p in range(PARTITIONS):
            mine = [e for e in events if partition_of(e.user_id) == p]
            start = len(self.events[p])
            await self.state.apply(self.topic, p, list(enumerate(mine, start)))
            self.events[p].extend(mine)

    async def put(self, items: Sequence[CatalogItem]) -> None:
        await self.catalog.put(items)
        self.content.update({i.item_id: i for i in items})

    def vectors(
        self, kind: str, ids: Sequence[str], version: str | None = None
    ) -> dict[str, tuple[FloatArray, int, float]]:
        version = version or self.bundle.version
        found = self.store.get(kind, ids, version=version)  # type: ignore[arg-type]
        return {
            e: (p.vector, int(p.payload["state_version"]), float(p.payload["updated_at"]))
            for e, p in found.items()
        }

    def engaged(self) -> tuple[list[str], list[str]]:
        every = [e for evs in self.events.values() for e in evs]
        return sorted({e.user_id for e in every}), sorted({e.item_id for e in every})


# -- the oracle ------------------------------------------------------------------------------


def _graphs(world: World) -> dict[int, CoEngagementGraph]:
    graphs = {}
    for p in world.events:
        graph = CoEngagementGraph(world.settings.state)
        graph.add_many(world.events[p], range(len(world.events[p])))
        graphs[p] = graph
    return graphs


def rows(vectors: list[FloatArray], width: int) -> FloatArray:
    return np.stack(vectors) if vectors else np.zeros((0, width), dtype=np.float32)


def oracle(
    world: World,
    bundle: EncoderBundle | None = None,
    graphs: dict[int, CoEngagementGraph] | None = None,
) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
    """Every engaged item's and user's vector, recomputed from the events and the catalog."""
    bundle, graphs = bundle or world.bundle, graphs or _graphs(world)
    users, items = world.engaged()
    everything = sorted(set(items) | set(world.content))
    records = [world.content.get(i) or CatalogRecord.empty(i) for i in everything]
    content = dict(zip(everything, bundle.content_vectors(records), strict=True))
    lists = {i: merge_neighbours(list(graphs.values()), i, bundle.neighbours) for i in everything}
    item_vecs = bundle.item_vectors(
        np.stack([content[i] for i in everything]),
        [rows([content[n] for n, _ in lists[i]], bundle.content_dim) for i in everything],
        [np.asarray([w for _, w in lists[i]], dtype=np.float32) for i in everything],
        np.asarray(
            [sum(g.item_degree(i) for g in graphs.values()) for i in everything], np.float32
        ),
    )
    item_vectors = dict(zip(everything, item_vecs, strict=True))
    histories = []
    for user in users:
        seq = graphs[world.partition(user)].sequence(user)[-(bundle.seq_len + 1) :]
        histories.append(
            (
                np.stack([item_vectors[e.item_id] for e in seq]),
                np.asarray([ACTION_CODES[e.action] for e in seq]),
                np.asarray([e.ts for e in seq]),
            )
        )
    user_vectors = dict(zip(users, bundle.user_vectors(histories), strict=True))
    return user_vectors, item_vectors


async def _item_inputs(
    world: World, item_id: str, graphs: dict[int, CoEngagementGraph], bundle: EncoderBundle
) -> str:
    """What an item whose vector differs was encoded from (its recorded basis) and what Redis
    holds now, each against the oracle's inputs: a failure names the input that went wrong."""
    k = bundle.neighbours
    want = _Inputs(
        sum(g.item_degree(item_id) for g in graphs.values()),
        merge_neighbours(list(graphs.values()), item_id, k),
    )
    now = (await world.inputs.items([item_id], k))[item_id]
    basis = (await world.inputs.bases([item_id])).get(item_id)
    said = [f"redis: {_Inputs(now.degree, now.neighbours).against(want)}"]
    if basis is None:
        said.append("no basis recorded")
    else:
        encoded = _Inputs(basis.degree, list(zip(basis.neighbours, basis.weights, strict=True)))
        said.append(f"basis v{basis.state_version}: {encoded.against(want)}")
        if basis.content_version == 0 and item_id in world.content:
            said.append("encoded without its content, which the oracle has")
    return "; ".join(said)


class _Inputs(NamedTuple):
    degree: int
    neighbours: list[tuple[str, float]]

    def against(self, want: _Inputs) -> str:
        """How these inputs differ from `want` ("as the oracle" when they do not)."""
        found = []
        if self.degree != want.degree:
            found.append(f"degree {self.degree} not {want.degree}")
        mine, theirs = dict(self.neighbours), dict(want.neighbours)
        if set(mine) != set(theirs):
            found.append(
                f"neighbours +{sorted(set(mine) - set(theirs))} -{sorted(set(theirs) - set(mine))}"
            )
        shared = set(mine) & set(theirs)
        gap = max((abs(mine[n] - theirs[n]) for n in shared), default=0.0)
        if gap > 1e-9:
            found.append(f"weights off by up to {gap:.3g}")
        return ", ".join(found) or "as the oracle"


def cosine(got: FloatArray, want: FloatArray) -> float:
    a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_close(got: FloatArray, want: FloatArray, what: str) -> None:
    assert cosine(got, want) >= CLOSE, f"{what}: cosine {cosine(got, want)}"


CLOSE = 0.99999  # cosine of a stored vector to its from-scratch one
# Users, tighter: with the test model a user built from item vectors that changed since is
# within 1e-5..3e-6 of its from-scratch vector (its history is pooled), an exact one within
# 3e-8 (float32 batches; stored item vectors differ from fresh ones by up to 1e-6).
USER_CLOSE = 1 - 5e-7


async def assert_matches_oracle(world: World, bundle: EncoderBundle | None = None) -> int:
    """I2: every engaged entity's stored vector of `bundle`'s model (default the world's)
    equals the from-scratch one, labelled with the state version Redis holds; returns the
    vectors checked (all of them)."""
    checked, problems = await vector_mismatches(world, bundle)
    assert problems == [], problems[:5]
    return checked


async def vector_mismatches(
    world: World, bundle: EncoderBundle | None = None
) -> tuple[int, list[str]]:
    """(vectors checked, what differs). Every item and every user is checked exactly: a user
    built before one of its history items was re-encoded is rebuilt by the fan-out
    (streams/vectors/fanout.py), so after a drain none is left on older item vectors."""
    users, items = world.engaged()
    model = (bundle or world.bundle).version
    graphs = _graphs(world)
    want_users, want_items = oracle(world, bundle, graphs)
    stored_users = world.vectors("users", users, model)
    stored_items = world.vectors("items", items, model)
    problems = [f"user {u}: no vector" for u in sorted(set(users) - set(stored_users))]
    problems += [f"item {i}: no vector" for i in sorted(set(items) - set(stored_items))]
    contents = await world.catalog.get(items)
    for item_id, (vector, version, _) in stored_items.items():
        cv = contents[item_id].input_version if item_id in contents else 0
        if version != await world.state.item_version(item_id) + cv:
            problems.append(f"item {item_id}: state version {version}")
        elif cosine(vector, want_items[item_id]) < CLOSE:
            why = await _item_inputs(world, item_id, graphs, bundle or world.bundle)
            problems.append(f"item {item_id}: cosine {cosine(vector, want_items[item_id])} ({why})")
    for user_id, (vector, version, _) in stored_users.items():
        p = world.partition(user_id)
        if version != await world.state.user_version(world.topic, p, user_id):
            problems.append(f"user {user_id}: state version {version}")
        elif cosine(vector, want_users[user_id]) < USER_CLOSE:
            problems.append(f"user {user_id}: cosine {cosine(vector, want_users[user_id])}")
    return len(stored_items) + len(stored_users), problems
