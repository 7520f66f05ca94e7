"""Pure-Python reference of the co-engagement rules that `lua/apply_batch.lua` runs in Redis.

Two users: the offline trainer builds neighbour lists with exactly the logic of the stream, and
the tests use it as the oracle for the Lua script. One `CoEngagementGraph` is one shard, i.e. all
events of one Kafka partition; `merge_neighbours` combines shards the way `RedisState` readers do.
Every float expression is written in the same order as in the Lua script so both agree to the
last bits (only libm's exp/pow can differ, by an ulp).

Rules, per event, in order (the Lua script documents the same list):
0. an event whose `event_id` is among its user's last `dedup_window` applied ids is a duplicate
   and changes nothing at all; otherwise its id joins that window (events without an id, such
   as the offline trainer's plain `Event`s, are never duplicates).
1. append (item, action, ts) to the user's sequence, keep the last `seq_len`; bump the user
   version; keep the user's newest ts (`ts_max`).
2. item degree +1 and item version +1.
3. an event older than the user's `ts_max - max_event_age_s` stops here: it is in the sequence
   (so every event's effect is present exactly once) but adds no pairs and no context entry.
4. pair the item with the user's previous `max_pairs` sequence entries, newest first, skipping
   self pairs, items already paired by this event, and entries more than `pair_horizon_s` away
   (either direction, so late-arriving events still pair). Weight sqrt(aw(a1)*aw(a2)) * event
   weight (1 when absent); the increment on i's list for j is damped by (1+deg_j)^-hub_alpha and
   symmetrically for j's list; j's version bumps.
5. a save with a context pairs with the context's last `context_len` saves (same weight rule,
   action "save", no horizon: decay ages them), then joins that context list. Context lists are
   per shard: a context (board, playlist) belongs to one owner whose saves arrive under one user
   id, hence one partition; a context shared across partitions only pairs saves within each.
6. weights use forward decay: stored as w*exp(lambda*(ts - t0_item)), t0 is the first ts the
   item's list saw; a factor above `REBASE_LIMIT` rebases the list first (scores times
   exp(-lambda*(ts - t0)), t0 := ts).
7. trimming: a touched list keeps its top `k_max` (ties: the lexicographically smallest member
   goes first, as Redis ranks them) when the partition's offsets cross into a new block of
   `trim_every` offsets. Blocks are a function of the offsets alone, so the state after a stream
   does not depend on how a runtime cut it into batches or where a crash made it replay: a killed
   and restarted worker ends exactly where an uninterrupted one does. Readers take each shard's
   top `k_max` in the same order, so an untrimmed list reads the same as a trimmed one.
8. holders: an applied event (duplicates excepted, too-old ones included: they are in the
   sequence) makes its user a holder of its item, scored by the event's offset; each item keeps
   its newest `hold_max` holders. Offsets only grow within a shard, so a user's score only
   grows and a holder dropped by the cap could only come back with a newer offset: the kept set
   is the same whenever the cap is applied (per event, per call), like rule 7. A holder stays
   after its action left the user's `seq_len` window (at most one needless re-encode, and the
   cap drops the oldest first); the re-encoder reads holders for its fan-out.

Reads (`merge_relative`, the one function every reader calls): an item's list is handed out with
each weight relative to its strongest entry. Forward decay multiplies every weight of every shard
by the same exp(-lambda*now), so these ratios are the same whenever the list is read: at the
stream's newest event, at wall-clock time, in a replay of a twenty-year-old log. Absolute weights
read far from the origin underflow (a 7-day half-life over 22 years is 2^-1150, zero even in
float64); the ratios are computed in log space per shard, so they never over- or underflow, and
are floored at `MIN_RELATIVE_WEIGHT`, so every listed neighbour stays present for a float32
model. The model divides each list by its strongest entry anyway (encoders/model.py).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from state.config import CONTEXT_ACTION, REBASE_EXPONENT, StateConfig
from state.exceptions import InvalidBatchError

# Relative weights never go below float32's smallest normal number: a listed neighbour, however
# weak next to the strongest, stays present (weight > 0) for a float32 model.
MIN_RELATIVE_WEIGHT = 2.0**-126

Member = TypeVar("Member", str, bytes)  # the hot reader keeps Redis's raw bytes until the top k
ShardList = tuple[float, Sequence[tuple[Member, float]]]  # (t0, stored scores) of one shard
ShardColumns = tuple[float, Sequence[Member], Sequence[float]]  # the same as (t0, members, scores)


class EventLike(Protocol):
    """What the state needs from a decoded engagement event (read-only attributes)."""

    @property
    def user_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def ts(self) -> float: ...
    @property
    def weight(self) -> float | None: ...
    @property
    def context_id(self) -> str | None: ...
    @property
    def event_id(self) -> str | None: ...


@dataclass(frozen=True)
class Event:
    """A plain engagement that satisfies `EventLike`, for callers without a contract object."""

    user_id: str
    item_id: str
    action: str
    ts: float
    weight: float | None = None
    context_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class SeqEntry:
    """One action in a user's sequence."""

    item_id: str
    action: str
    ts: float


@dataclass
class _UserState:
    version: int = 0
    ts_max: float | None = None
    recent_ids: deque[str] = field(default_factory=deque)  # the dedup window, oldest first


@dataclass
class _ItemState:
    version: int = 0
    degree: int = 0
    t0: float | None = None


@dataclass
class Changed:
    """Entities of one shard whose state an apply changed: what a worker holding the shard
    writes to its changelog before it commits the offsets (`CoEngagementGraph.take_changed`)."""

    users: set[str] = field(default_factory=set)
    items: set[str] = field(default_factory=set)
    contexts: set[str] = field(default_factory=set)


def stored_top(scores: Mapping[str, float], k_max: int) -> list[tuple[str, float]]:
    """A shard's top `k_max` as Redis's ZREVRANGE gives them (score, then member, descending).

    Exactly the members a trim keeps, so a list read before its trim reads as after it.
    """
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k_max]


def merge_relative(
    shards: Iterable[ShardList[Member]], lam: float, k: int
) -> list[tuple[Member, float]]:
    """One item's top k over its shards' stored lists, each weight relative to the strongest.

    `shards` are (t0, stored scores) pairs, in the order their sums are taken. A shard's scores
    read at any time T are ``score * exp(-lam * (T - t0))``; every shard is brought to the strongest
    shard's scale in log space (``ln max_score + lam * t0`` compared between shards, the t0s as
    differences so no large exponent is formed), weights are summed per neighbour, the top k kept
    (ties by member), then divided by the strongest and floored at `MIN_RELATIVE_WEIGHT`. No time
    is read: the result is what any reading time would give (see the module docstring). A list
    whose scores are all 0 (zero-weight events only) has no strongest entry and reads empty.

    Each shard keeps only its own top `k_max`, so a neighbour just below the cut in every shard
    is missing from the merge although its summed weight could rank it in; with user-partitioned
    traffic an item's strong neighbours are strong in most shards, and the loss is in the tail.
    """
    columns = [(t0, [m for m, _ in top], [s for _, s in top]) for t0, top in shards]
    return merge_columns(columns, lam, k)


def merge_columns(
    shards: Iterable[ShardColumns[Member]], lam: float, k: int
) -> list[tuple[Member, float]]:
    """`merge_relative` on (t0, members, scores) columns: the same floats, bit for bit, without
    a tuple per entry. The re-encoder merges every dirty item of a pass, 4 shards x `k_max`
    entries each, so this is its hottest loop."""
    total: dict[Member, float] = {}
    for members, scores, peak, scale in _shard_scales(shards, lam):
        weights = [score / peak * scale for score in scores]  # <= 1: nothing overflows
        if not total:  # the first shard: nothing to add to (0.0 + w is w for w >= 0)
            total = dict(zip(members, weights, strict=True))
            continue
        get = total.get
        for member, weight in zip(members, weights, strict=True):
            total[member] = get(member, 0.0) + weight
    if k <= 0 or not total:
        return []
    # the k smallest (-weight, member) pairs (ties by member), built only for the candidates:
    # those at least as heavy as the k-th heaviest weight
    cut = heapq.nlargest(k, total.values())[-1] if len(total) > k else -math.inf
    best = sorted([(-weight, member) for member, weight in total.items() if weight >= cut])[:k]
    top_weight = -best[0][0]
    return [(member, max(-weight / top_weight, MIN_RELATIVE_WEIGHT)) for weight, member in best]


def _shard_scales(
    shards: Iterable[ShardColumns[Member]], lam: float
) -> list[tuple[Sequence[Member], Sequence[float], float, float]]:
    """(members, scores, peak, scale) per non-empty shard: a score over its shard's peak times
    `scale` is its weight over the strongest shard's peak at any common reading time. Both
    factors are at most 1. A shard of zero scores keeps its members at weight 0 (scale 0)."""
    lists = [(t0, members, scores, max(scores)) for t0, members, scores in shards if scores]
    live = [(t0, peak) for t0, _, _, peak in lists if peak > 0.0]
    if not live:
        return []
    newest = max(t0 for t0, _ in live)
    strongest = max(math.log(peak) - lam * (newest - t0) for t0, peak in live)
    out = []
    for t0, members, scores, peak in lists:
        if peak > 0.0:
            scale = math.exp(math.log(peak) - lam * (newest - t0) - strongest)
            out.append((members, scores, peak, scale))
        else:
            out.append((members, scores, 1.0, 0.0))
    return out


class CoEngagementGraph:
    """One shard of user sequences and co-engagement neighbour lists, in memory."""

    def __init__(self, config: StateConfig) -> None:
        self._cfg = config
        self._lam = config.decay_lambda
        self._seqs: dict[str, list[SeqEntry]] = {}
        self._users: dict[str, _UserState] = {}
        self._items: dict[str, _ItemState] = {}
        self._nbs: dict[str, dict[str, float]] = {}
        self._contexts: dict[str, list[tuple[str, float]]] = {}
        self._holders: dict[str, dict[str, int]] = {}
        self._pending_trim: set[str] = set()
        self._block: int | None = None
        self._next_offset = 0
        self.duplicates = 0  # events skipped by rule 0
        self._changed = Changed()

    # -- writes ---------------------------------------------------------------------------

    def add(self, event: EventLike, offset: int | None = None) -> None:
        """Apply one event at `offset` (default: one past the previous event's offset)."""
        self.add_many([event], None if offset is None else [offset])

    def add_many(self, events: Iterable[EventLike], offsets: Iterable[int] | None = None) -> None:
        """Apply events in order; `offsets` are their Kafka offsets (default: consecutive)."""
        offset_iter = iter(offsets) if offsets is not None else None
        for event in events:
            offset = next(offset_iter) if offset_iter is not None else self._next_offset
            self._next_offset = offset + 1
            self._enter_block(offset // self._cfg.trim_every)
            self._apply_event(event, offset, self._pending_trim)

    def _enter_block(self, block: int) -> None:
        if self._block is None:
            self._block = block
        elif block > self._block:
            for item_id in sorted(self._pending_trim):
                if self._trim(item_id):
                    self._changed.items.add(item_id)
            self._pending_trim.clear()
            self._block = block

    def _apply_event(self, event: EventLike, offset: int, touched: set[str]) -> None:
        if event.action not in self._cfg.action_weights:
            raise InvalidBatchError(f"unknown action {event.action!r}")
        if self._duplicate(event):
            self.duplicates += 1
            return
        self._changed.users.add(event.user_id)
        self._changed.items.add(event.item_id)
        self._hold(event.item_id, event.user_id, offset)
        prev, too_old = self._user_step(event)
        item = self._items.setdefault(event.item_id, _ItemState())
        item.degree += 1
        item.version += 1
        if too_old:
            return
        ev_weight = 1.0 if event.weight is None else float(event.weight)
        seen: set[str] = set()
        for entry in reversed(prev):
            if entry.item_id == event.item_id or entry.item_id in seen:
                continue
            if abs(event.ts - entry.ts) > self._cfg.pair_horizon_s:
                continue
            seen.add(entry.item_id)
            self._pair(event, entry.item_id, entry.action, ev_weight, touched)
        if event.context_id is not None and event.action == CONTEXT_ACTION:
            self._context_step(event, event.context_id, ev_weight, seen, touched)

    def _duplicate(self, event: EventLike) -> bool:
        """Rule 0: is the event's id in its user's window? If not, the id joins it."""
        window = self._cfg.dedup_window
        if event.event_id is None or window == 0:
            return False
        recent = self._users.setdefault(event.user_id, _UserState()).recent_ids
        if event.event_id in recent:
            return True
        recent.append(event.event_id)
        if len(recent) > window:
            recent.popleft()
        return False

    def _hold(self, item_id: str, user_id: str, offset: int) -> None:
        """Rule 8; the cap is applied when twice over it (the kept set does not depend on when)."""
        cap = self._cfg.hold_max
        if cap == 0:
            return
        held = self._holders.setdefault(item_id, {})
        held[user_id] = offset
        if len(held) > 2 * cap:
            self._holders[item_id] = dict(self.holders(item_id))

    def _user_step(self, event: EventLike) -> tuple[list[SeqEntry], bool]:
        seq = self._seqs.setdefault(event.user_id, [])
        prev = seq[-self._cfg.max_pairs :]
        seq.append(SeqEntry(event.item_id, event.action, float(event.ts)))
        if len(seq) > self._cfg.seq_len:
            del seq[: len(seq) - self._cfg.seq_len]
        user = self._users.setdefault(event.user_id, _UserState())
        user.version += 1
        too_old = user.ts_max is not None and event.ts < user.ts_max - self._cfg.max_event_age_s
        if user.ts_max is None or event.ts > user.ts_max:
            user.ts_max = float(event.ts)
        return prev, too_old

    def _context_step(
        self, event: EventLike, context_id: str, ev_weight: float, seen: set[str], touched: set[str]
    ) -> None:
        saves = self._contexts.setdefault(context_id, [])
        self._changed.contexts.add(context_id)
        for other, _ts in reversed(saves[-self._cfg.context_len :]):
            if other == event.item_id or other in seen:
                continue
            seen.add(other)
            self._pair(event, other, CONTEXT_ACTION, ev_weight, touched)
        saves.append((event.item_id, float(event.ts)))
        if len(saves) > self._cfg.context_len:
            del saves[: len(saves) - self._cfg.context_len]

    def _pair(
        self, event: EventLike, other: str, other_action: str, ev_weight: float, touched: set[str]
    ) -> None:
        weights = self._cfg.action_weights
        base = math.sqrt(weights[event.action] * weights[other_action]) * ev_weight
        self._add_edge(event.item_id, other, base, event.ts)
        self._add_edge(other, event.item_id, base, event.ts)
        self._items.setdefault(other, _ItemState()).version += 1
        touched.add(event.item_id)
        touched.add(other)
        self._changed.items.add(other)

    def _add_edge(self, item_id: str, other: str, base: float, ts: float) -> None:
        """Add `base`, hub-damped by the other's degree and forward-decayed, to item's list."""
        other_state = self._items.get(other)
        degree = other_state.degree if other_state is not None else 0
        damp = (1 + degree) ** (-self._cfg.hub_alpha)
        state = self._items.setdefault(item_id, _ItemState())
        scores = self._nbs.setdefault(item_id, {})
        if state.t0 is None:
            state.t0 = float(ts)
        elif self._lam * (ts - state.t0) > REBASE_EXPONENT:
            factor = math.exp(-self._lam * (ts - state.t0))
            for member in scores:
                scores[member] = scores[member] * factor
            state.t0 = float(ts)
        growth = math.exp(self._lam * (ts - state.t0))
        scores[other] = scores.get(other, 0.0) + base * damp * growth

    def _trim(self, item_id: str) -> bool:
        """Keep the list's top `k_max`; True when that removed any."""
        scores = self._nbs.get(item_id, {})
        excess = len(scores) - self._cfg.k_max
        if excess <= 0:
            return False
        for member, _score in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))[:excess]:
            del scores[member]
        return True

    # -- reads ----------------------------------------------------------------------------

    def sequence(self, user_id: str) -> list[SeqEntry]:
        """The user's stored actions, oldest first."""
        return list(self._seqs.get(user_id, []))

    def user_version(self, user_id: str) -> int:
        user = self._users.get(user_id)
        return user.version if user is not None else 0

    def holders(self, item_id: str) -> list[tuple[str, int]]:
        """The item's newest `hold_max` holders, (user, offset of its newest action on it),
        newest first (rule 8)."""
        held = self._holders.get(item_id, {})
        return sorted(held.items(), key=lambda kv: kv[1], reverse=True)[: self._cfg.hold_max]

    def item_version(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return item.version if item is not None else 0

    def item_degree(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return item.degree if item is not None else 0

    @property
    def decay_lambda(self) -> float:
        return self._lam

    def item_t0(self, item_id: str) -> float | None:
        """The forward-decay origin of the item's list (moves forward on a rebase)."""
        item = self._items.get(item_id)
        return item.t0 if item is not None else None

    def shard_list(self, item_id: str) -> ShardList[str] | None:
        """The item's forward-decay origin and stored top `k_max` (None while it has no list).

        Stored scores are weights at time t0; read at time T each is multiplied by
        ``exp(-decay_lambda * (T - t0))``. Readers hand this to `merge_relative`.
        """
        t0 = self.item_t0(item_id)
        scores = self._nbs.get(item_id)
        if t0 is None or not scores:
            return None
        return t0, stored_top(scores, self._cfg.k_max)

    def neighbours(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """The item's top-k neighbours in this shard, weights relative to the strongest."""
        return merge_neighbours([self], item_id, k)

    # -- changelog ------------------------------------------------------------------------
    #
    # A worker that held its partitions' state in memory (instead of Redis) would survive a crash
    # by writing each changed entity's whole state to a compacted topic, keyed by entity, before
    # committing the offsets, and by replaying that topic on start. These three methods are that
    # record format for the reference, so its cost can be measured (the state bench) and its
    # completeness tested: a graph restored from its records applies the rest of the stream
    # exactly as the graph it came from. A graph never asked (the trainer's) keeps its changed
    # sets until it goes: at most one reference per entity it already holds.

    def take_changed(self) -> Changed:
        """The entities changed since the last call (`to_records` adds the partition's own
        record, its offsets and pending trims, to any)."""
        changed, self._changed = self._changed, Changed()
        return changed

    def to_records(self, changed: Changed) -> list[tuple[str, bytes]]:
        """(key, value) of each changed entity's whole state, then the partition's meta record."""
        out = []
        for user_id in sorted(changed.users):
            user = self._users[user_id]
            seq = [[e.item_id, e.action, e.ts] for e in self._seqs.get(user_id, [])]
            body = {"s": seq, "v": user.version, "t": user.ts_max, "r": list(user.recent_ids)}
            out.append(("u:" + user_id, orjson.dumps(body)))
        for item_id in sorted(changed.items):
            item = self._items[item_id]
            body = {
                "v": item.version,
                "d": item.degree,
                "t0": item.t0,
                "n": self._nbs.get(item_id, {}),
                "h": self._holders.get(item_id, {}),
            }
            out.append(("i:" + item_id, orjson.dumps(body)))
        for context_id in sorted(changed.contexts):
            out.append(("c:" + context_id, orjson.dumps(self._contexts[context_id])))
        meta = {
            "o": self._next_offset,
            "b": self._block,
            "p": sorted(self._pending_trim),
            "dup": self.duplicates,
        }
        out.append(("m", orjson.dumps(meta)))
        return out

    @classmethod
    def from_records(
        cls, config: StateConfig, records: Iterable[tuple[str, bytes]]
    ) -> CoEngagementGraph:
        """A graph rebuilt from a changelog replayed in order (a later record of a key wins)."""
        graph = cls(config)
        for key, raw in records:
            graph._load(key, orjson.loads(raw))
        graph.take_changed()  # what it was rebuilt from is already in the log
        return graph

    def _load(self, key: str, body: Any) -> None:
        kind, _, entity = key.partition(":")
        if kind == "u":
            self._seqs[entity] = [SeqEntry(i, a, ts) for i, a, ts in body["s"]]
            self._users[entity] = _UserState(body["v"], body["t"], deque(body["r"]))
        elif kind == "i":
            self._items[entity] = _ItemState(body["v"], body["d"], body["t0"])
            if body["n"]:
                self._nbs[entity] = body["n"]
            if body["h"]:
                self._holders[entity] = body["h"]
        elif kind == "c":
            self._contexts[entity] = [(i, ts) for i, ts in body]
        elif kind == "m":
            self._next_offset, self._block = body["o"], body["b"]
            self._pending_trim = set(body["p"])
            self.duplicates = body["dup"]
        else:
            raise ValueError(f"not a changelog key: {key!r}")


def merge_neighbours(
    graphs: Iterable[CoEngagementGraph], item_id: str, k: int
) -> list[tuple[str, float]]:
    """One item's top-k neighbours over shards, as every reader of the stream's state reads them
    (`merge_relative`: summed over shards in the order given, relative to the strongest)."""
    shards = list(graphs)
    if not shards:
        return []
    lists = [found for g in shards if (found := g.shard_list(item_id)) is not None]
    return merge_relative(lists, shards[0].decay_lambda, k)
