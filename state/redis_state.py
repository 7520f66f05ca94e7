"""Redis state store: user sequences, sharded co-engagement lists, watermarks and dirty marks.

Every write is one Lua script call on one shard (one Kafka partition's hash tag), so it is
atomic, idempotent through the watermark, and valid on Redis Cluster. Reads that span shards
(item neighbours, item versions, backlog) pipeline one request per shard and item; holders, read
for hundreds of items per re-encode pass, take one script call per shard and page of items
(`lua/read_holders.lua`), the shards concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline

from state import keys
from state.coengagement import EventLike, SeqEntry, ShardList, merge_relative
from state.config import CONTEXT_ACTION, REBASE_EXPONENT, StateConfig
from state.exceptions import InvalidBatchError, StateError
from state.keys import DirtyKind, ShardKeys
from state.redis_io import (
    clears_by_itself,
    load_lua,
    redis_errors_as_state,
    text,
    wait_for_replicas,
)

MARK_PAGE = 500  # marks per mark_dirty call: well below Lua's unpack limit
HOLDERS_PAGE = 500  # items per read_holders call: bounds one call's time inside Redis


@dataclass(frozen=True)
class ApplyResult:
    """What one `apply` did: events applied, events skipped as replays, the partition's watermark,
    events skipped as duplicates of a recent event id (coengagement rule 0), and users taken out
    of a hub item's holders by the `hold_max` cap (rule 8: fan-out no longer reaches them).

    `watermark` is -1 when the partition has never had an event applied.
    """

    applied: int
    skipped: int
    watermark: int
    duplicates: int = 0
    holders_capped: int = 0


def queue_shard_list(pipe: Pipeline, shard: ShardKeys, item_id: str, k_max: int) -> None:
    """Queue one shard's top `k_max` of an item, as a trim would leave it (coengagement rule 7)."""
    pipe.zrange(shard.neighbours(item_id), 0, k_max - 1, desc=True, withscores=True)


def reply_list(
    flat: Sequence[tuple[bytes | str, float]], raw_t0: bytes | str | None
) -> ShardList[str] | None:
    """One shard's (stored list, t0) reply as `merge_relative` takes it (None: no list there)."""
    if raw_t0 is None or not flat:
        return None
    return float(text(raw_t0)), [(text(member), float(score)) for member, score in flat]


def decode_holders(page: Sequence[str], flat: Sequence[Any]) -> dict[str, dict[str, int]]:
    """The items of one `read_holders.lua` reply (per item n, then n pairs user, offset) that
    have holders. Offsets go through float as redis-py's ZRANGE WITHSCORES reads scores."""
    out = {}
    at = 0
    for item_id in page:
        end = at + 1 + 2 * int(flat[at])
        if end > at + 1:
            pairs = flat[at + 1 : end]
            out[item_id] = {
                text(user): int(float(offset))
                for user, offset in zip(pairs[0::2], pairs[1::2], strict=True)
            }
        at = end
    return out


class RedisState:
    """Async access to the state of the engagements stream, sharded by Kafka partition."""

    def __init__(
        self,
        client: aioredis.Redis,
        config: StateConfig,
        prefix: str = "ss",
        *,
        wait_replicas: int = 0,
        wait_timeout_s: float = 2.0,
    ) -> None:
        """`wait_replicas`: replicas that must hold an applied batch before `apply` returns
        (see `redis_io.wait_for_replicas`); 0 returns once the master has it."""
        self._client = client
        self._wait = (wait_replicas, wait_timeout_s)
        self._cfg = config
        self._prefix = keys.check_prefix(prefix)
        self._lam = config.decay_lambda
        self._apply_script = client.register_script(load_lua(keys.SCRIPT_APPLY))
        self._read_dirty_script = client.register_script(load_lua(keys.SCRIPT_READ_DIRTY))
        self._clear_dirty_script = client.register_script(load_lua(keys.SCRIPT_CLEAR_DIRTY))
        self._mark_dirty_script = client.register_script(load_lua(keys.SCRIPT_MARK_DIRTY))
        self._read_holders_script = client.register_script(load_lua(keys.SCRIPT_READ_HOLDERS))
        self._layout = keys.lua_layout()
        self._apply_args = self._static_apply_args(config)
        self._known_shards: set[str] = set()

    @property
    def config(self) -> StateConfig:
        return self._cfg

    @staticmethod
    def _static_apply_args(config: StateConfig) -> list[str]:
        """ARGV[1..15] of the apply script; floats as repr so Lua reads the exact same doubles."""
        numbers: list[float] = [
            config.seq_len,
            config.k_max,
            config.decay_lambda,
            config.pair_horizon_s,
            config.max_pairs,
            config.max_event_age_s,
            config.hub_alpha,
            config.context_len,
            REBASE_EXPONENT,
            config.trim_every,
            config.dedup_window,
            config.hold_max,
        ]
        weights = json.dumps(dict(config.action_weights))
        return [keys.lua_layout(), *(repr(n) for n in numbers), weights, CONTEXT_ACTION]

    def _shard(self, topic: str, partition: int) -> ShardKeys:
        return ShardKeys(self._prefix, keys.shard_tag(topic, partition))

    # -- writes ---------------------------------------------------------------------------

    async def apply(
        self, topic: str, partition: int, batch: Sequence[tuple[int, EventLike]]
    ) -> ApplyResult:
        """Apply (offset, event) pairs of one partition, in offset order, one script per slice.

        Each slice is atomic; after a failure the earlier slices stay applied and their offsets
        are in the watermark, so retrying the whole batch re-applies only what is missing.
        """
        shard = self._shard(topic, partition)
        if not batch:
            current = await self.watermark(topic, partition)
            return ApplyResult(0, 0, -1 if current is None else current)
        await self._register_shard(shard)
        applied = skipped = duplicates = capped = 0
        watermark = -1
        size = self._cfg.slice_size
        for start in range(0, len(batch), size):
            result = await self._apply_slice(shard, batch[start : start + size])
            applied += result.applied
            skipped += result.skipped
            duplicates += result.duplicates
            capped += result.holders_capped
            watermark = result.watermark
        await wait_for_replicas(self._client, [shard.watermark()], *self._wait)
        return ApplyResult(applied, skipped, watermark, duplicates, capped)

    async def _register_shard(self, shard: ShardKeys) -> None:
        """Make the shard visible to readers before its first write (idempotent SADD)."""
        if shard.tag in self._known_shards:
            return
        with redis_errors_as_state("register shard"):
            await self._client.sadd(keys.shards_key(self._prefix), shard.tag)
        self._known_shards.add(shard.tag)

    async def _apply_slice(
        self, shard: ShardKeys, events: Sequence[tuple[int, EventLike]]
    ) -> ApplyResult:
        rows = [
            [off, ev.user_id, ev.item_id, ev.action, ev.ts, ev.weight, ev.context_id, ev.event_id]
            for off, ev in events
        ]
        try:
            # allow_nan=False: a NaN or infinite ts or weight is refused, never sent as null
            payload = json.dumps(rows, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidBatchError(f"cannot encode batch: {exc}") from exc
        return await self._run_apply(shard, payload)

    async def check_access(self) -> None:
        """Raise `StateError` naming NOPERM unless this client may run the apply script on this
        prefix's keys. The probe is an empty batch on a shard no topic has: Redis checks the
        command and the declared key before the script runs, and the script then refuses the
        batch before it touches a key, so nothing is written."""
        probe = ShardKeys(self._prefix, keys.shard_tag("sagestream-access-check", 0))
        with contextlib.suppress(InvalidBatchError):
            await self._run_apply(probe, "[]")

    async def _run_apply(self, shard: ShardKeys, payload: str) -> ApplyResult:
        """One apply script call with an already-encoded batch (tests feed malformed ones)."""
        with redis_errors_as_state("apply"):
            try:
                reply = await self._apply_script(
                    keys=[shard.watermark()], args=[*self._apply_args, payload]
                )
            except redis_errors.NoPermissionError as exc:
                raise StateError(
                    f"the Redis user may not run the apply script on {shard.tag}: {exc}"
                ) from exc
            except redis_errors.ResponseError as exc:
                if clears_by_itself(exc):  # OOM, READONLY, CLUSTERDOWN...: not the batch's fault
                    raise
                raise InvalidBatchError(f"apply refused on shard {shard.tag}: {exc}") from exc
        applied, skipped, watermark, duplicates, capped = reply
        return ApplyResult(
            int(applied), int(skipped), int(text(watermark)), int(duplicates), int(capped)
        )

    # -- reads: one shard ---------------------------------------------------------------------

    async def watermark(self, topic: str, partition: int) -> int | None:
        """Highest applied offset of the partition, or None before its first apply."""
        with redis_errors_as_state("watermark"):
            raw = await self._client.get(self._shard(topic, partition).watermark())
        return None if raw is None else int(text(raw))

    async def user_sequence(self, topic: str, partition: int, user_id: str) -> list[SeqEntry]:
        """The user's stored actions, oldest first."""
        with redis_errors_as_state("user_sequence"):
            raw = await self._client.lrange(self._shard(topic, partition).sequence(user_id), 0, -1)
        entries = []
        for value in raw:
            item_id, action, ts = text(value).split(keys.ENTRY_SEP)
            entries.append(SeqEntry(item_id, action, float(ts)))
        return entries

    async def user_version(self, topic: str, partition: int, user_id: str) -> int:
        """Bumped once per applied event of the user; 0 for an unknown user."""
        key = self._shard(topic, partition).user(user_id)
        with redis_errors_as_state("user_version"):
            raw = await self._client.hget(key, keys.FIELD_VERSION)
        return 0 if raw is None else int(text(raw))

    # -- reads: all shards ------------------------------------------------------------------

    async def _shards(self) -> list[ShardKeys]:
        with redis_errors_as_state("shards"):
            tags = await self._client.smembers(keys.shards_key(self._prefix))
        return [ShardKeys(self._prefix, text(tag)) for tag in sorted(text(t) for t in tags)]

    async def item_neighbours(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """The item's top-k neighbours over shards, weights relative to the strongest.

        Read with `state.coengagement.merge_relative`, like every reader: no clock is involved.
        """
        shards = await self._shards()
        if not shards:
            return []
        with redis_errors_as_state("item_neighbours"):
            async with self._client.pipeline(transaction=False) as pipe:
                for shard in shards:
                    queue_shard_list(pipe, shard, item_id, self._cfg.k_max)
                    pipe.hget(shard.item(item_id), keys.FIELD_T0)
                replies = await pipe.execute()
        pairs = zip(replies[0::2], replies[1::2], strict=True)
        lists = [found for flat, t0 in pairs if (found := reply_list(flat, t0)) is not None]
        return merge_relative(lists, self._lam, k)

    async def item_version(self, item_id: str) -> int:
        """Sum of the item's per-shard versions: grows with every change in any shard."""
        shards = await self._shards()
        if not shards:
            return 0
        with redis_errors_as_state("item_version"):
            async with self._client.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.hget(shard.item(item_id), keys.FIELD_VERSION)
                replies = await pipe.execute()
        return sum(int(text(raw)) for raw in replies if raw is not None)

    async def holders(
        self, item_ids: Sequence[str]
    ) -> dict[tuple[str, int], dict[str, dict[str, int]]]:
        """Who holds each item, per shard: (topic, partition) -> item -> user -> offset of the
        user's newest action on it (coengagement rule 8); items and shards holding nobody are
        left out. One script call per shard and page of items, each in its shard's slot (valid
        on a cluster, where a pipeline cannot carry scripts); shards are read concurrently."""
        shards = await self._shards()
        ids = list(dict.fromkeys(item_ids))
        if not shards or not ids:
            return {}
        with redis_errors_as_state("holders"):
            per_shard = await asyncio.gather(*(self._shard_holders(s, ids) for s in shards))
        return {
            keys.parse_shard_tag(shard.tag): held
            for shard, held in zip(shards, per_shard, strict=True)
            if held
        }

    async def _shard_holders(
        self, shard: ShardKeys, ids: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """One shard's holders of the items that have any, a page per script call."""
        held: dict[str, dict[str, int]] = {}
        for start in range(0, len(ids), HOLDERS_PAGE):
            page = ids[start : start + HOLDERS_PAGE]
            flat = await self._read_holders_script(
                keys=[shard.watermark()], args=[self._layout, *page]
            )
            held.update(decode_holders(page, flat))
        return held

    async def dirty_backlog(self) -> dict[str, int]:
        """Number of pending dirty marks per kind over all shards (for a gauge)."""
        shards = await self._shards()
        backlog: dict[str, int] = dict.fromkeys(keys.DIRTY_KINDS, 0)
        if not shards:
            return backlog
        with redis_errors_as_state("dirty_backlog"):
            async with self._client.pipeline(transaction=False) as pipe:
                for shard in shards:
                    for kind in keys.DIRTY_KINDS:
                        pipe.zcard(shard.dirty(kind))
                replies = await pipe.execute()
        for index, count in enumerate(replies):
            backlog[keys.DIRTY_KINDS[index % len(keys.DIRTY_KINDS)]] += int(count)
        return backlog

    # -- dirty marks ------------------------------------------------------------------------

    async def dirty(
        self, topic: str, partition: int, kind: DirtyKind, limit: int
    ) -> list[tuple[str, float]]:
        """Up to `limit` oldest marks (entity id, first dirty ts) of one shard.

        Not a pure read: it resets the marks' "dirtied again" flags, which is what lets
        `clear_dirty` keep a mark that was dirtied after this call.
        """
        if limit < 1:
            return []
        shard = self._shard(topic, partition)
        with redis_errors_as_state("dirty"):
            flat = await self._read_dirty_script(
                keys=[shard.dirty(kind), shard.redirty(kind)], args=[limit]
            )
        return [(text(flat[i]), float(text(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def mark_dirty(
        self, topic: str, partition: int, kind: DirtyKind, marks: Sequence[tuple[str, float]]
    ) -> int:
        """Mark (entity id, first dirty ts) pairs dirty as an apply would: a new mark keeps the
        ts, an existing one is flagged "dirtied again" (so a pass that read it encodes it once
        more). Returns the marks added; one script call per `MARK_PAGE` marks."""
        shard = self._shard(topic, partition)
        added = 0
        for start in range(0, len(marks), MARK_PAGE):
            args: list[str] = []
            for member, score in marks[start : start + MARK_PAGE]:
                if not math.isfinite(score):
                    raise StateError(f"dirty mark score must be finite, got {score!r}")
                args += [repr(float(score)), member]
            with redis_errors_as_state("mark_dirty"):
                added += int(
                    await self._mark_dirty_script(
                        keys=[shard.dirty(kind), shard.redirty(kind)], args=args
                    )
                )
        return added

    async def clear_dirty(
        self,
        topic: str,
        partition: int,
        kind: DirtyKind,
        marks: Sequence[tuple[str, float]],
        *,
        rescore: float | None = None,
    ) -> int:
        """Remove handled marks, unless their entity was dirtied again since `dirty` read them;
        those stay, scored from `rescore` (when later), the time they were read: the pass took
        away everything that had dirtied them before it (see clear_dirty.lua)."""
        if not marks:
            return 0
        shard = self._shard(topic, partition)
        if rescore is not None and not math.isfinite(rescore):
            raise StateError(f"rescore must be finite, got {rescore!r}")
        args: list[str] = ["" if rescore is None else repr(float(rescore))]
        for member, score in marks:
            if not math.isfinite(score):
                raise StateError(f"dirty mark score must be finite, got {score!r}")
            args += [member, repr(float(score))]
        with redis_errors_as_state("clear_dirty"):
            removed = await self._clear_dirty_script(
                keys=[shard.dirty(kind), shard.redirty(kind)], args=args
            )
        return int(removed)
