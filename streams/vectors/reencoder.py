"""The re-encode scheduler: dirty marks in, fresh vectors in Qdrant out, marks cleared last.

Transport-agnostic: a runtime calls `Reencoder.run_pass(shards)` (or `run`, which repeats it every
`window_s`, so marks written meanwhile coalesce into one encode per entity). One pass:

1. drain up to `marks_per_shard` user and item marks from each given shard and, when asked, the
   catalog's "content arrived" marks; entities are deduplicated across shards;
2. items: read their state (version first, then degree and merged neighbours), their recorded
   basis and their content; decide (`item_reason`): never encoded by this model -> ``cold_start``;
   content arrived or changed -> ``content``; a neighbour's content put (state/catalog.py) ->
   ``neighbour_content``;
   top-K neighbour ids changed, or a weight (relative to the strongest) or the degree moved by
   at least `item_min_change` relatively -> ``neighbours``; otherwise skipped (the stored
   vector stands);
3. users: read version, newest ts and the encoder's window of the sequence; every dirty user
   re-encodes (``sequence``);
4. fan-out (streams/vectors/fanout.py): once the items are encoded, the holders, in every
   shard, of the items whose vector moved by at least `fanout_min_change` from the one their
   holders were built from (`rules.vector_moved`), read in one round trip: in this worker's
   shards, the holders whose encoder window holds one are read like dirty users and rebuilt in
   this pass from the new item vectors (at most `fanout_per_pass`, the newest holders first);
   in other shards they are marked for their worker once every upsert returned (step 8);
5. the item vectors a user's history needs come, in this order, from this pass's micro-batch
   (the freshest there is), else from Qdrant in the collection of the model being written (never
   through the alias: during a model switch that could be another model, and a user vector must
   be built from item vectors of its own model), else - an item that has no vector of this model
   yet, e.g. its mark waits in a shard this worker does not drain - it is encoded now from its
   full state like any cold item and upserted with the batch. The last case is rare; computing
   it in full rather than content-only keeps the user vector equal to what an oracle computes;
6. micro-batches: content vectors (cached per (item, content version)), item vectors, user
   vectors, each `encode_batch` rows per onnxruntime call, in a worker thread;
7. one guarded upsert (`wait=True`) of every record, labelled with the state version read
   before encoding: users `user_version`; items `item_version + content_version +
   neighbour_content` (state/catalog.py), a sum of three counters that only grow, so it never
   decreases. Before an item's neighbours' content is read, the item is added to their readers,
   so a content put that lands meanwhile marks it again. A user also carries its
   `basis_version`, the sum of the state versions of the item vectors it was built from;
8. only after the upserts returned (the shadow's too, during a switch): mark the holders of
   other workers' shards, record the encoded items' bases, then clear exactly the marks read in
   step 1 (a mark dirtied again meanwhile stays). A crash anywhere before re-does the pass,
   fan-out included: at-least-once, made idempotent by the store's guard on (state version,
   basis version).

With `item_min_change = 0` no item is ever skipped, so every vector equals a from-scratch encode
of the current state (RELIABILITY I2); above 0, a skipped item keeps the vector and payload
state_version of its last material encode, and its basis in Redis says what that was, and its
holders are not re-encoded (the stored vector they were built from still stands).
A user rebuilt by fan-out has the same state version as its stored vector but a higher basis
version, which the store's guard lets through; a replay or a late writer that read older item
vectors has a lower or equal one and is skipped. Holders are kept per item and shard up to
`StateConfig.hold_max` (the newest first): a user beyond that cap on a hub item, or over the
per-pass bound, stays built from the older item vectors until its own next event; both are
counted (`sagestream_fanout_dropped_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import redis.asyncio as aioredis

from encoders.data import ACTION_CODES, FloatArray, encoder_window
from encoders.runtime import EncoderBundle
from state import RedisState, StateConfig, VectorRecord, VectorStore
from state.catalog import CatalogRecord, CatalogStore
from state.encode_inputs import EncodeBasis, EncodeInputs, UserInputs
from state.vectors import material_version
from streams.settings import ReencodeSettings
from streams.vectors.encoding import ContentCache, content_rows, item_rows, user_rows
from streams.vectors.fanout import FanOut
from streams.vectors.marks import MarkBook
from streams.vectors.plans import ItemPlan, ItemPlanner, unread_neighbours
from streams.vectors.rules import (
    REASONS,
    Marks,
    PassStats,
    Reason,
    Shard,
    vector_moved,
)

__all__ = ["REASONS", "PassStats", "Reason", "Reencoder", "Shard", "Written"]


class UserRow(NamedTuple):
    """A user read by a pass, and the window of its sequence the encoder reads."""

    user: UserInputs
    history: list[tuple[str, int, float]]  # encoders.data.encoder_window


Users = dict[Shard, dict[str, UserRow]]


@dataclass(frozen=True)
class Written:
    """One model's write of a pass: the items it encoded (their plans), and the holders of them
    in shards other workers drain, to be marked for those workers (streams/vectors/fanout.py)."""

    plans: dict[str, ItemPlan]
    elsewhere: dict[Shard, dict[str, float]]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _earliest(
    a: Mapping[Shard, Mapping[str, float]], b: Mapping[Shard, Mapping[str, float]]
) -> dict[Shard, dict[str, float]]:
    """Two user -> first dirty ts maps per shard in one, keeping each user's earliest ts."""
    out = {shard: dict(users) for shard, users in a.items()}
    for shard, users in b.items():
        mine = out.setdefault(shard, {})
        for user_id, ts in users.items():
            mine[user_id] = min(ts, mine.get(user_id, ts))
    return out


class Reencoder:
    """Drains dirty marks, encodes what changed materially, upserts, then clears the marks."""

    def __init__(
        self,
        state: RedisState,
        inputs: EncodeInputs,
        catalog: CatalogStore,
        store: VectorStore,
        bundle: EncoderBundle,
        settings: ReencodeSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state, self._inputs, self._catalog = state, inputs, catalog
        self._store, self._cfg, self._clock = store, settings, clock
        self._marks = MarkBook(state, catalog)
        self._fanout = FanOut(state, settings.fanout_per_pass, clock)
        self._planner = ItemPlanner(inputs, catalog, settings.item_min_change)
        self._content = ContentCache(settings.content_cache)
        self._prepared: str | None = None
        self.bundle = bundle
        self._shadow: Reencoder | None = None  # the next model while a switch dual-writes
        self._after_vector_write: Callable[[], None] = lambda: None

    @classmethod
    def connect(
        cls,
        client: aioredis.Redis,
        state_config: StateConfig,
        prefix: str,
        store: VectorStore,
        bundle: EncoderBundle,
        settings: ReencodeSettings,
    ) -> Reencoder:
        """A scheduler over one Redis client (the worker's), with the settings' knobs."""
        return cls(
            RedisState(client, state_config, prefix),
            EncodeInputs(client, state_config, prefix, lists=settings.list_cache),
            CatalogStore(client, prefix),
            store,
            bundle,
            settings,
        )

    def on_vector_write(self, hook: Callable[[], None]) -> None:
        """Call `hook` after each pass's upserts, before its marks are cleared (crash tests)."""
        self._after_vector_write = hook

    def dual_write(self, shadow: Reencoder | None) -> None:
        """From the next pass on, also write every pass with `shadow` (None ends it)."""
        self._shadow = shadow

    def swap(self, bundle: EncoderBundle) -> None:
        """Encode with another model version from the next pass on (cached content is its own).

        Call it between passes (e.g. from `run`'s `on_pass`), never while a pass is awaited."""
        self.bundle = bundle
        self._content.clear()

    # -- loop ----------------------------------------------------------------------------------

    async def run(
        self,
        shards: Callable[[], Sequence[Shard]],
        stop: asyncio.Event,
        on_pass: Callable[[PassStats], None] | None = None,
        *,
        catalog: bool = True,
        between: Callable[[], Awaitable[None]] | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        """Pass after pass until `stop`: right away while a pass drains full pages of marks,
        otherwise `window_s` after the previous pass began, so new marks coalesce. `between`
        runs after each pass (model lifecycle steps), never while a pass is in flight. While
        `hold()` says the ingest is catching up (streams/runtimes/catchup.py), the next pass
        waits for it, up to `catchup_hold_s` after the previous one began."""
        began = time.monotonic()
        while not stop.is_set():
            if hold is not None and self._holding(hold, began):
                await _wait(stop, self._cfg.window_s)
                continue
            began = time.monotonic()
            stats = await self.run_pass(shards(), catalog=catalog)
            if on_pass is not None:
                on_pass(stats)
            if between is not None:
                await between()
            if stats.more_waiting:
                continue
            wait = self._cfg.window_s - (time.monotonic() - began)
            if wait > 0:
                await _wait(stop, wait)

    def _holding(self, hold: Callable[[], bool], began: float) -> bool:
        return time.monotonic() - began < self._cfg.catchup_hold_s and hold()

    async def run_until_idle(
        self, shards: Sequence[Shard], *, catalog: bool = True, max_passes: int = 1000
    ) -> list[PassStats]:
        """Passes until one finds no marks (burst mode, tests); the idle pass is included."""
        done: list[PassStats] = []
        for _ in range(max_passes):
            done.append(await self.run_pass(shards, catalog=catalog))
            if done[-1].idle:
                return done
        raise RuntimeError(f"marks still pending after {max_passes} passes")

    # -- one pass --------------------------------------------------------------------------------

    async def run_pass(self, shards: Sequence[Shard], *, catalog: bool = True) -> PassStats:
        """Drain, write every target, clear; see the module docstring."""
        stats = PassStats()
        began = time.perf_counter()
        read_at = self._clock()
        lists = self._inputs.lists
        kept, sent = lists.hits, lists.sent
        with stats.stage("drain"):
            marks = await self._marks.drain(shards, self._cfg.marks_per_shard, catalog=catalog)
        stats.marks = marks.count()
        stats.more_waiting = marks.full(self._cfg.marks_per_shard)
        if stats.idle:
            return stats
        written = await self.write(marks, stats, fan_out=True)
        elsewhere = written.elsewhere
        if self._shadow is not None:  # a model switch is under way: dual writes
            shadow = PassStats()
            with stats.stage("shadow"):
                also = await self._shadow.write(marks, shadow, primary=False, fan_out=True)
            elsewhere = _earliest(elsewhere, also.elsewhere)
            stats.encode_s += shadow.encode_s
            stats.upsert_s += shadow.upsert_s
        # after every model's upsert: another worker's holders must find the new item vectors in
        # each collection; then the bases, since a re-done pass skips an item whose basis is
        # recorded and would then not fan out
        with stats.stage("record"):
            await self._fanout.mark(elsewhere, stats)
            await self._inputs.put_bases({i: p.basis for i, p in written.plans.items()})
            self._after_vector_write()
            await self._marks.clear(marks, read_at)
        stats.lists_kept, stats.lists_sent = lists.hits - kept, lists.sent - sent
        stats.pass_s = time.perf_counter() - began
        return stats

    async def write(
        self,
        marks: Marks,
        stats: PassStats,
        *,
        primary: bool = True,
        fan_out: bool = False,
        insert_only: bool = False,
        refresh: bool = False,
    ) -> Written:
        """Encode what `marks` name with this model and upsert it (steps 2-7); returns the
        items encoded, whose bases `run_pass` records, and the holders it left to the workers
        of other shards, which `run_pass` marks.

        The primary (serving) model skips immaterial item changes and records freshness; a
        shadow (the next model during a switch) and a backfill encode every item named, since the
        recorded bases belong to the primary model. `fan_out` rebuilds the holders of the items
        encoded (step 4). `insert_only` and `refresh` are the store's write modes
        (`VectorStore.upsert`).
        """
        await self._prepare()
        arrived = {item_id for item_id, _ in marks.catalog}
        dirty, items = marks.users(), marks.items()
        with stats.stage("read"):
            plans, users = await asyncio.gather(
                self._planner.dirty(self.bundle, items, arrived, stats, skip=primary),
                self._users(dirty),
            )
        with stats.stage("items"):
            vectors = await self._encode_items(plans, stats)
        with stats.stage("fan_out"):
            moved = self._settle(plans, vectors, stats, primary=primary)
            elsewhere: dict[Shard, dict[str, float]] = {}
            if fan_out:
                changed = {i: plans[i] for i in moved}
                holders = await self._fanout.read(changed)
                wanted = self._fanout.choose(holders, changed, users, stats)
                mine = marks.drained()
                elsewhere = {s: held for s, held in wanted.items() if s not in mine}
                here = {s: held for s, held in wanted.items() if s in mine}
                dirty = _earliest(dirty, await self._rebuild(here, changed, users, stats))
        with stats.stage("history"):
            stored, versions, cold = await self._history_vectors(users, plans)
            if cold:  # no vector of this model yet, so no holder was built from one: no fan-out
                cold_vectors = await self._encode_items(cold, stats)
                self._settle(cold, cold_vectors, stats, primary=False)
                plans.update(cold)
                vectors.update(cold_vectors)
        versions.update({i: plan.basis.material_version for i, plan in plans.items()})
        records = [plan.record(vectors[i]) for i, plan in plans.items()]
        with stats.stage("users"):
            records += await self._encode_users(users, {**stored, **vectors}, versions, stats)
        with stats.stage("upsert"):
            await self._upsert(records, stats, insert_only=insert_only, refresh=refresh)
        if primary:
            self._freshness(stats, plans, dirty)
        return Written(plans, elsewhere)

    def spawn(self, bundle: EncoderBundle) -> Reencoder:
        """A scheduler for another model on the same state and store (a switch's shadow)."""
        return Reencoder(
            self._state, self._inputs, self._catalog, self._store, bundle, self._cfg, self._clock
        )

    async def _prepare(self) -> None:
        """Create this model's collections once per bundle (idempotent on the store's side)."""
        if self._prepared != self.bundle.version:
            await asyncio.to_thread(self._store.prepare, self.bundle.version, self.bundle.dim)
            self._prepared = self.bundle.version

    # -- items -----------------------------------------------------------------------------------

    async def _encode_items(
        self, plans: Mapping[str, ItemPlan], stats: PassStats
    ) -> dict[str, FloatArray]:
        """Item vectors of every plan: own and neighbour content, relative weights, degree."""
        if not plans:
            return {}
        ids = list(plans)
        own = await self._content_vectors({i: plans[i].content for i in ids}, stats)
        content = await self._neighbour_content(plans, stats)
        own_rows = np.stack([own[i] for i in ids])
        nbr = [self._neighbour_rows(plans[i].basis, content) for i in ids]
        weights = [np.asarray(plans[i].basis.weights, dtype=np.float32) for i in ids]
        degrees = np.asarray([plans[i].state.degree for i in ids], dtype=np.float32)
        out = await self._timed(
            stats, item_rows, self.bundle, own_rows, nbr, weights, degrees, self._cfg.encode_batch
        )
        for plan in plans.values():
            stats.items_encoded += 1
            stats.reasons[plan.reason] += 1
        return dict(zip(ids, out, strict=True))

    def _neighbour_rows(self, basis: EncodeBasis, content: Mapping[str, FloatArray]) -> FloatArray:
        if not basis.neighbours:
            return np.zeros((0, self.bundle.content_dim), dtype=np.float32)
        return np.stack([content[n] for n in basis.neighbours])

    async def _neighbour_content(
        self, plans: Mapping[str, ItemPlan], stats: PassStats
    ) -> dict[str, FloatArray]:
        """Content vectors of every neighbour the plans list (planned ones too: their plan's
        content was read before this join), read only once the plans joined the neighbours'
        readers (state/catalog.py says why). The join and the versions are one round trip, and
        most versions are cached (a list names ten or so items per dirty item); the records of
        the others are read after."""
        ids = {n for plan in plans.values() for n in plan.basis.neighbours}
        versions = await self._catalog.versions(ids, readers=unread_neighbours(plans))
        found = {i: self._content.get(i, versions.get(i, 0)) for i in ids}
        cached = {i: vector for i, vector in found.items() if vector is not None}
        missing = ids - set(cached)
        records = await self._catalog.get(missing)
        stand_ins = {n: records.get(n) or CatalogRecord.empty(n) for n in missing}
        return {**cached, **await self._content_vectors(stand_ins, stats)}

    async def _content_vectors(
        self, records: Mapping[str, CatalogRecord], stats: PassStats
    ) -> dict[str, FloatArray]:
        """Content vectors, from the cache when the item's content version is unchanged."""
        out: dict[str, FloatArray] = {}
        missing = []
        for item_id, record in records.items():
            vector = self._content.get(item_id, record.content_version)
            if vector is None:
                missing.append(record)
            else:
                out[item_id] = vector
        if missing:
            rows = await self._timed(
                stats, content_rows, self.bundle, missing, self._cfg.encode_batch
            )
            for record, row in zip(missing, rows, strict=True):
                out[record.item_id] = row
                self._content.put(record.item_id, record.content_version, row)
        return out

    # -- users -----------------------------------------------------------------------------------

    async def _users(self, shards: Mapping[Shard, Collection[str]]) -> Users:
        """The users' inputs and encoder windows, every shard's read at once (the window is
        taken once per user: three steps of a pass read it)."""
        tail = self._user_tail()
        read = await asyncio.gather(
            *(self._inputs.users(*shard, ids, tail=tail) for shard, ids in shards.items())
        )
        seq_len = self.bundle.seq_len
        return {
            shard: {
                user_id: UserRow(user, encoder_window(user.sequence, seq_len))
                for user_id, user in users.items()
            }
            for shard, users in zip(shards, read, strict=True)
        }

    async def _rebuild(
        self,
        wanted: Mapping[Shard, Mapping[str, float]],
        plans: Mapping[str, ItemPlan],
        users: Users,
        stats: PassStats,
    ) -> dict[Shard, dict[str, float]]:
        """Step 4: the `wanted` holders whose encoder window holds an item of `plans` join
        `users`; returns them with the first dirty ts their freshness counts from."""
        rebuilt: dict[Shard, dict[str, float]] = {}
        for shard, read in (await self._users(wanted)).items():
            for user_id, row in read.items():
                if any(item_id in plans for item_id, _, _ in row.history):
                    users.setdefault(shard, {})[user_id] = row
                    rebuilt.setdefault(shard, {})[user_id] = wanted[shard][user_id]
        stats.fanout_users += sum(map(len, rebuilt.values()))
        return rebuilt

    def _user_tail(self) -> int | None:
        """How much of a sequence to read: the encoder's window, when every action the state
        stores is one the encoder reads (else the window's actions may reach further back)."""
        if set(self._state.config.action_weights) <= set(ACTION_CODES):
            return self.bundle.seq_len + 1
        return None

    async def _history_vectors(
        self,
        users: Users,
        plans: Mapping[str, ItemPlan],
    ) -> tuple[dict[str, FloatArray], dict[str, int], dict[str, ItemPlan]]:
        """Stored vectors and their material versions of history items not encoded in this
        pass, and plans for the items with no vector of this model (step 5 of the module
        docstring)."""
        needed = {
            item_id
            for shard_users in users.values()
            for row in shard_users.values()
            for item_id, _, _ in row.history
        } - set(plans)
        if not needed:
            return {}, {}, {}
        found = await asyncio.to_thread(
            self._store.get, "items", needed, version=self.bundle.version
        )
        cold = await self._planner.cold(self.bundle, sorted(needed - set(found)))
        vectors = {item_id: point.vector for item_id, point in found.items()}
        versions = {item_id: material_version(point.payload) for item_id, point in found.items()}
        return vectors, versions, cold

    def _settle(
        self,
        plans: dict[str, ItemPlan],
        vectors: Mapping[str, FloatArray],
        stats: PassStats,
        *,
        primary: bool,
    ) -> set[str]:
        """Settle each plan's material version and vector (`ItemPlan.settled`); returns the
        items whose vector moved by at least `fanout_min_change` from the one their holders
        were built from. Only the primary model has recorded bases to compare with."""
        threshold = self._cfg.fanout_min_change if primary else 0.0
        version = self.bundle.version
        moved = {
            item_id
            for item_id, plan in plans.items()
            if vector_moved(plan.previous, version, vectors[item_id], threshold)
        }
        for item_id, plan in plans.items():
            plans[item_id] = plan.settled(vectors[item_id], item_id in moved)
        stats.items_still += len(plans) - len(moved)
        return moved

    async def _encode_users(
        self,
        users: Users,
        item_vectors: Mapping[str, FloatArray],
        item_versions: Mapping[str, int],
        stats: PassStats,
    ) -> list[VectorRecord]:
        """One record per dirty user with a usable history; the others are skipped. Its basis
        version sums the state versions of the distinct items of its history."""
        rows = [
            row for shard_users in users.values() for row in shard_users.values() if row.history
        ]
        stats.users_skipped += sum(map(len, users.values())) - len(rows)
        if not rows:
            return []
        # one table of the items the histories name, indexed per user: cheaper than stacking
        # each history's vectors
        needed = dict.fromkeys(i for _, history in rows for i, _, _ in history)
        index = {item_id: k for k, item_id in enumerate(needed)}
        table = np.stack([item_vectors[i] for i in needed])
        histories = [
            (
                table[[index[i] for i, _, _ in history]],
                np.fromiter((a for _, a, _ in history), np.int64, len(history)),
                np.fromiter((t for _, _, t in history), np.float64, len(history)),
            )
            for _, history in rows
        ]
        out = await self._timed(stats, user_rows, self.bundle, histories, self._cfg.encode_batch)
        stats.users_encoded += len(rows)
        stats.reasons["sequence"] += len(rows)
        return [
            VectorRecord(
                "users",
                user.user_id,
                vector,
                user.version,
                self._user_ts(user),
                basis_version=sum(item_versions[i] for i in {i for i, _, _ in history}),
            )
            for (user, history), vector in zip(rows, out, strict=True)
        ]

    @staticmethod
    def _user_ts(user: UserInputs) -> float:
        if user.ts_max is not None:
            return user.ts_max
        return max((e.ts for e in user.sequence), default=0.0)

    # -- writes and bookkeeping --------------------------------------------------------------------

    async def _upsert(
        self, records: Sequence[VectorRecord], stats: PassStats, *, insert_only: bool, refresh: bool
    ) -> None:
        if not records:
            return
        began = time.perf_counter()
        write = functools.partial(self._store.upsert, insert_only=insert_only, refresh=refresh)
        await asyncio.to_thread(write, self.bundle.version, records)
        stats.upsert_s += time.perf_counter() - began

    def _freshness(
        self,
        stats: PassStats,
        plans: Mapping[str, ItemPlan],
        users: Mapping[Shard, Mapping[str, float]],
    ) -> None:
        """Upsert wall time minus each encoded entity's first dirty ts (one sample each)."""
        now = self._clock()
        for plan in plans.values():
            if plan.first_ts is not None:
                stats.freshness_s["items"].append(now - plan.first_ts)
        for first in users.values():
            stats.freshness_s["users"].extend(now - ts for ts in first.values())

    async def _timed(
        self, stats: PassStats, work: Callable[..., FloatArray], *args: object
    ) -> FloatArray:
        """Run onnxruntime work in a thread (it releases the GIL) and count its seconds."""
        began = time.perf_counter()
        out = await asyncio.to_thread(work, *args)
        stats.encode_s += time.perf_counter() - began
        return out
