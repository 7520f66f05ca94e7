"""The re-encode scheduler's bookkeeping and decision rules, free of I/O (unit-tested alone).

`material_change` and `item_reason` decide whether a dirty item is encoded again; `vector_moved`
whether its new vector moved enough to rebuild its holders, and `fan_out` which of them;
`PassStats` is what a pass reports for the worker's metrics; `Marks` keeps the marks a pass read
so they are cleared, verbatim, only after the upsert returned.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from encoders.data import FloatArray
from state import EntityKind
from state.encode_inputs import EncodeBasis
from state.keys import DirtyKind

Reason = Literal["neighbours", "content", "neighbour_content", "sequence", "cold_start"]
REASONS: tuple[Reason, ...] = (
    "neighbours",
    "content",
    "neighbour_content",
    "sequence",
    "cold_start",
)
# A pass's steps in order (the re-encoder's module docstring numbers them), each timed on its own
# so a bench can say which one a mark's cost sits in: "shadow" is a model switch's second write.
Stage = Literal[
    "drain", "read", "items", "fan_out", "history", "users", "upsert", "shadow", "record"
]
STAGES: tuple[Stage, ...] = (
    "drain",
    "read",
    "items",
    "fan_out",
    "history",
    "users",
    "upsert",
    "shadow",
    "record",
)
Shard = tuple[str, int]
Holders = Mapping[Shard, Mapping[str, Mapping[str, int]]]  # shard -> item -> user -> offset


@dataclass
class PassStats:
    """What one pass did, for the worker's metrics. Freshness samples are seconds from the
    first event that dirtied an entity (its mark's score) to the upsert's return."""

    marks: int = 0
    more_waiting: bool = False  # a shard's page of marks came back full
    users_encoded: int = 0
    items_encoded: int = 0
    users_skipped: int = 0
    items_skipped: int = 0
    fanout_users: int = 0  # holders of re-encoded items rebuilt in this pass
    fanout_marked: int = 0  # holders in shards other workers drain, marked dirty for them
    fanout_dropped: int = 0  # holders left out by `fanout_per_pass`
    items_still: int = 0  # items encoded whose vector moved less than `fanout_min_change`
    lists_kept: int = 0  # neighbour lists (item, shard) read as unchanged: not sent again
    lists_sent: int = 0  # neighbour lists read in full
    reasons: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    encode_s: float = 0.0
    upsert_s: float = 0.0
    pass_s: float = 0.0  # the whole pass; what encode and upsert leave is Redis (read_s)
    stages_s: dict[Stage, float] = field(default_factory=dict)  # wall time of each step run
    freshness_s: dict[EntityKind, list[float]] = field(
        default_factory=lambda: {"users": [], "items": []}
    )

    @contextmanager
    def stage(self, name: Stage) -> Iterator[None]:
        """Add the wall time of the block to `name`'s (encode and upsert calls inside it count
        in it too: `encode_s` and `upsert_s` cut across the steps)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.stages_s[name] = self.stages_s.get(name, 0.0) + time.perf_counter() - began

    @property
    def idle(self) -> bool:
        """True when the pass found no marks at all."""
        return self.marks == 0

    @property
    def users_behind(self) -> int:
        """Users this pass left built from item vectors older than the current ones: those
        marked for another worker's next pass, and those its fan-out's per-pass bound left out (a
        hub item's cap is counted where the index drops them)."""
        return self.fanout_marked + self.fanout_dropped

    @property
    def read_s(self) -> float:
        """Seconds in Redis: marks, sequences, neighbours, bases and the clear."""
        return max(0.0, self.pass_s - self.encode_s - self.upsert_s)


@dataclass
class Marks:
    """Marks read in one pass, kept verbatim to clear them after the upsert."""

    shards: dict[tuple[str, int, DirtyKind], list[tuple[str, float]]] = field(default_factory=dict)
    catalog: list[tuple[str, float]] = field(default_factory=list)

    def full(self, limit: int) -> bool:
        """Whether any page read hit `limit`, i.e. more marks are probably waiting."""
        pages = [*self.shards.values(), self.catalog]
        return any(len(page) >= limit for page in pages)

    def count(self) -> int:
        return sum(map(len, self.shards.values())) + len(self.catalog)

    def drained(self) -> set[Shard]:
        """The shards this pass drained (this worker's)."""
        return {(topic, partition) for topic, partition, _ in self.shards}

    def items(self) -> dict[str, float]:
        """Dirty items, deduplicated over shards and the catalog: id -> first dirty ts."""
        first: dict[str, float] = {}
        pairs = [m for (_, _, kind), ms in self.shards.items() if kind == "items" for m in ms]
        for item_id, ts in [*pairs, *self.catalog]:
            first[item_id] = min(ts, first.get(item_id, ts))
        return first

    def users(self) -> dict[Shard, dict[str, float]]:
        """Dirty users per shard (a user's sequence lives in its partition's shard)."""
        return {
            (topic, partition): dict(marks)
            for (topic, partition, kind), marks in self.shards.items()
            if kind == "users" and marks
        }


def _moved(old: float, new: float, threshold: float) -> bool:
    return abs(new - old) >= threshold * max(abs(old), 1e-12)


def material_change(
    basis: EncodeBasis, neighbours: Sequence[tuple[str, float]], degree: int, threshold: float
) -> bool:
    """Whether an item's relative neighbour list or degree moved enough to re-encode it.

    The top-K ids as a set (the encoder pools neighbours without positions), each relative
    weight, and the degree, each compared with `threshold` relatively; 0 makes any state a change.
    """
    if threshold <= 0.0:
        return True
    if {n for n, _ in neighbours} != set(basis.neighbours):
        return True
    old = dict(zip(basis.neighbours, basis.weights, strict=True))
    if any(_moved(old[n], w, threshold) for n, w in neighbours):
        return True
    return _moved(float(basis.degree), float(degree), threshold)


def vector_moved(
    previous: EncodeBasis | None, model_version: str, vector: FloatArray, threshold: float
) -> bool:
    """Whether an item's new vector moved from the one its holders were built from (the
    basis's material vector) by at least `threshold` in 1 - cosine, so they must be rebuilt;
    0 makes every new vector a move (exact mode), as does a basis without one."""
    if threshold <= 0.0 or previous is None or not previous.material:
        return True
    if previous.model_version != model_version:
        return True
    old = np.frombuffer(previous.material, dtype=np.float32).astype(np.float64)
    new = np.asarray(vector, dtype=np.float64)
    if old.shape != new.shape:
        return True
    norms = float(np.linalg.norm(old) * np.linalg.norm(new))
    return norms == 0.0 or 1.0 - float(old @ new) / norms >= threshold


def item_reason(
    basis: EncodeBasis | None,
    model_version: str,
    content_arrived: bool,
    content_version: int,
    changed: bool,
    neighbour_content: int = 0,
) -> Reason | None:
    """Why an item must be encoded now, or None when its stored vector still stands: its own
    content before a neighbour's (state/catalog.py), and a "content arrived" mark with neither
    changed (a mark read again after a crash) as its own."""
    if basis is None or basis.model_version != model_version:
        return "cold_start"
    if basis.content_version != content_version:
        return "content"
    if basis.neighbour_content != neighbour_content:
        return "neighbour_content"
    if content_arrived:
        return "content"
    return "neighbours" if changed else None


def fan_out(
    holders: Holders,
    changed: Mapping[str, float],
    exclude: Mapping[Shard, Collection[str]],
    limit: int,
) -> tuple[dict[Shard, list[tuple[str, float]]], int]:
    """Which holders of the `changed` items (item -> first dirty ts) to rebuild, per shard,
    each with the earliest first dirty ts among the changed items it holds; and how many were
    left out by `limit`. Users in `exclude` (encoded by this very pass, from these item vectors)
    are left out. In each shard the newest holders (highest offset) come first, and shards
    take turns, so one shard's hub cannot take the whole bound."""
    ranked: list[tuple[int, int, Shard, str, float]] = []
    for turn, shard in enumerate(sorted(holders)):
        skip = exclude.get(shard, ())
        users: dict[str, tuple[int, float]] = {}
        for item_id, held in holders[shard].items():
            ts = changed[item_id]
            for user_id, offset in held.items():
                if user_id in skip:
                    continue
                newest, first = users.get(user_id, (offset, ts))
                users[user_id] = (max(newest, offset), min(first, ts))
        by_recency = sorted(users.items(), key=lambda kv: (-kv[1][0], kv[0]))
        ranked += [(rank, turn, shard, u, ts) for rank, (u, (_, ts)) in enumerate(by_recency)]
    ranked.sort(key=lambda row: row[:2])
    chosen: dict[Shard, list[tuple[str, float]]] = {}
    for _, _, shard, user_id, ts in ranked[:limit]:
        chosen.setdefault(shard, []).append((user_id, ts))
    return chosen, max(0, len(ranked) - limit)
