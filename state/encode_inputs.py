"""Batched reads of what re-encoding needs, and the basis each item was last encoded from.

`RedisState` reads one entity per call; the re-encoder needs hundreds per micro-batch, so these
readers read a whole batch in a few calls with the same rules (each shard's top `k_max`, merged
by `state.coengagement.merge_relative`; versions summed over shards). The integration tests
check they agree with `RedisState.item_neighbours`, `item_version` and `user_sequence`.

Items are read with one script call per shard and page (`lua/read_items.lua`), so each shard's
version, degree and list of an item are one snapshot. Shards and pages are read concurrently,
each call on its own: an apply that lands on a shard after its read makes the item newer than
the label read, bumps its version and re-dirties it, so it is encoded again with a higher
version; the label never claims more than the inputs hold, so the store's guard never refuses
a correct vector as "not newer".
Users are read the same way, one script call per page of one shard's users
(`lua/read_users.lua`), for the same reason: a user's version, newest ts and sequence are one
snapshot, so the sequence never lags the version that labels it (the pipelined reads before
it got this by reading versions first, then sequences). Its reply is one flat array per page,
so the client parses one reply, not two commands per user.

The basis (`EncodeBasis`) is what an item's current vector was computed from: neighbour ids,
their weights relative to the strongest, the degree and the content version (its own; its
neighbours' puts reach it through `CatalogStore`'s readers index). It lives in Redis
(``P:{i:<item>}:enc``) rather than in the Qdrant payload: it is read for every dirty item in one
pipelined round trip next to the state reads, needs no vector-store read on the hot path, and the
payload schema stays the downstream readers' contract. It is written only after the vector was
upserted, so a crash in between re-encodes rather than skipping an item whose vector is missing.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from state import keys
from state.coengagement import SeqEntry, ShardColumns, merge_columns
from state.config import StateConfig
from state.keys import ItemKeys, ShardKeys
from state.list_cache import ListCache
from state.redis_io import is_cluster, load_lua, redis_errors_as_state, text

READ_PAGE = 500  # items or users per read script call: bounds one call's time inside Redis
CLUSTER_CONCURRENCY = 64  # script calls in flight at once where a pipeline cannot carry them
READ_CONCURRENCY = 16  # item read calls in flight at once (pages x shards), each a connection
_SEP = keys.ENTRY_SEP.encode()  # between the members of a list read_items.lua returns


@dataclass(frozen=True)
class ItemInputs:
    """An item's engagement state: version and degree summed over shards, merged neighbours."""

    item_id: str
    version: int
    degree: int
    neighbours: list[tuple[str, float]]  # weights relative to the strongest (merge_relative)


@dataclass(frozen=True)
class UserInputs:
    """A user's version, newest event ts and stored sequence (oldest first) in one shard."""

    user_id: str
    version: int
    ts_max: float | None
    sequence: list[SeqEntry]


@dataclass(frozen=True)
class EncodeBasis:
    """What an item's stored vector was encoded from (see the module docstring)."""

    state_version: int
    model_version: str
    neighbours: tuple[str, ...]
    weights: tuple[float, ...]  # relative to the strongest neighbour, as the model reads them
    degree: int
    content_version: int
    # the state version at which the item's vector last moved enough to rebuild its holders,
    # and that vector (float32 bytes): what the next encode is compared with (fan-out)
    material_version: int = 0
    material: bytes = b""
    # content puts of its neighbours counted when it was encoded (`CatalogRecord`)
    neighbour_content: int = 0
    # the item is among every neighbour's readers (`CatalogStore.versions`); False for bases
    # recorded before the readers index existed, whose neighbours are added again once
    readers_added: bool = False

    def to_json(self) -> bytes:
        """orjson, as every basis of a pass is written and every dirty item's read (a pass reads
        hundreds): about five times the standard library's speed, the same JSON."""
        body: dict[str, object] = {
            "n": list(self.neighbours),
            "w": list(self.weights),
            "d": self.degree,
            "cv": self.content_version,
        }
        if self.neighbour_content:
            body["nc"] = self.neighbour_content
        if self.readers_added:
            body["r"] = 1
        if self.material:
            body["mv"] = self.material_version
            body["m"] = base64.b64encode(self.material).decode("ascii")
        if not all(math.isfinite(w) for w in self.weights):  # orjson would write null
            raise ValueError(f"a basis weight is not finite: {self.weights}")
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, state_version: int, model_version: str, raw: bytes | str) -> EncodeBasis:
        body = orjson.loads(raw)
        return cls(
            state_version=state_version,
            model_version=model_version,
            neighbours=tuple(body["n"]),
            weights=tuple(body["w"]),
            degree=int(body["d"]),
            content_version=int(body["cv"]),
            material_version=int(body.get("mv", 0)),
            material=base64.b64decode(body["m"]) if "m" in body else b"",
            neighbour_content=int(body.get("nc", 0)),
            readers_added=bool(body.get("r", 0)),
        )


def _int(value: bytes | str | None) -> int:
    return 0 if value is None else int(text(value))


def seq_entry(value: bytes | str) -> SeqEntry:
    """One stored sequence entry, "item|action|ts"."""
    item_id, action, ts = text(value).split(keys.ENTRY_SEP)
    return SeqEntry(item_id, action, float(ts))


def decode_users(page: Sequence[str], flat: Sequence[Any]) -> dict[str, UserInputs]:
    """The users of one `read_users.lua` reply: per user version, ts_max, n, then n entries."""
    out = {}
    at = 0
    for user_id in page:
        raw_v, raw_ts, n = flat[at], flat[at + 1], int(flat[at + 2])
        sequence = [seq_entry(value) for value in flat[at + 3 : at + 3 + n]]
        at += 3 + n
        ts_max = None if raw_ts is None else float(text(raw_ts))
        out[user_id] = UserInputs(user_id, _int(raw_v), ts_max, sequence)
    return out


class EncodeInputs:
    """Batched multi-entity reads of the state, and the items' encode bases."""

    def __init__(
        self, client: aioredis.Redis, config: StateConfig, prefix: str = "ss", *, lists: int = 0
    ) -> None:
        """`lists`: neighbour lists kept between reads (state/list_cache.py); 0 reads every
        list every time."""
        self._client = client
        self._cfg = config
        self._prefix = keys.check_prefix(prefix)
        self.lists = ListCache(lists)
        self._put_basis = client.register_script(load_lua(keys.SCRIPT_PUT_BASIS))
        self._read_items = client.register_script(load_lua(keys.SCRIPT_READ_ITEMS))
        self._read_users = client.register_script(load_lua(keys.SCRIPT_READ_USERS))
        self._layout = keys.lua_layout()

    async def _shards(self) -> list[ShardKeys]:
        with redis_errors_as_state("shards"):
            tags = await self._client.smembers(keys.shards_key(self._prefix))
        return [ShardKeys(self._prefix, t) for t in sorted(text(tag) for tag in tags)]

    async def items(self, item_ids: Iterable[str], k: int) -> dict[str, ItemInputs]:
        """Version, degree and top-k neighbours (relative to the strongest) of each item."""
        ids = list(dict.fromkeys(item_ids))
        shards = await self._shards()
        if not ids or not shards:
            return {i: ItemInputs(i, 0, 0, []) for i in ids}
        # Every page of every shard at once (a bounded number of calls in flight): Redis always
        # has a script queued while this process parses a reply or merges a page whose shards
        # all answered. One shard's pages one after another left Redis idle half the time.
        calls = asyncio.Semaphore(READ_CONCURRENCY)
        pages = [ids[start : start + READ_PAGE] for start in range(0, len(ids), READ_PAGE)]
        with redis_errors_as_state("item inputs"):
            merged = await asyncio.gather(*(self._read_page(shards, p, k, calls) for p in pages))
        return {item_id: inputs for page in merged for item_id, inputs in page.items()}

    async def _read_page(
        self, shards: Sequence[ShardKeys], page: Sequence[str], k: int, calls: asyncio.Semaphore
    ) -> dict[str, ItemInputs]:
        """One page of items read from every shard, then merged."""
        per_shard = await asyncio.gather(*(self._read_shard(s, page, calls) for s in shards))
        return {
            item_id: self._merge(item_id, [replies[col] for replies in per_shard], k)
            for col, item_id in enumerate(page)
        }

    async def _read_shard(
        self, shard: ShardKeys, page: Sequence[str], calls: asyncio.Semaphore
    ) -> list[Any]:
        """Each item's (version, degree, t0, members, packed scores) in one shard, one script
        call."""
        async with calls:
            held = self.lists.known(shard.tag, page)
            args = [a for i in page for a in (i, held[i][0] if i in held else "")]
            replies = await self._read_items(
                keys=[shard.watermark()], args=[self._layout, self._cfg.k_max, *args]
            )
        return [
            self.lists.settle(shard.tag, i, reply, held.get(i))
            for i, reply in zip(page, replies, strict=True)
        ]

    def _merge(self, item_id: str, replies: Sequence[Any], k: int) -> ItemInputs:
        """One item over all shards, as `RedisState.item_neighbours` and `item_version` read it:
        the same merge over the shards in the same order (`merge_columns`), on raw reply bytes
        (ids are ASCII, so byte order is id order); only the k kept are decoded."""
        version = degree = 0
        lists: list[ShardColumns[bytes]] = []
        for raw_v, raw_deg, raw_t0, members, packed in replies:  # int(), float() take bytes
            if raw_v is not None:
                version += int(raw_v)
            if raw_deg is not None:
                degree += int(raw_deg)
            if raw_t0 is not None and members:
                ids = members.split(_SEP)  # read_items.lua joins them, and packs the scores
                lists.append((float(raw_t0), ids, struct.unpack(f"<{len(ids)}d", packed)))
        best = merge_columns(lists, self._cfg.decay_lambda, k)
        return ItemInputs(item_id, version, degree, [(text(m), w) for m, w in best])

    async def users(
        self, topic: str, partition: int, user_ids: Iterable[str], *, tail: int | None = None
    ) -> dict[str, UserInputs]:
        """Version, newest ts and sequence of users of one shard (one snapshot per page); with
        `tail`, only the sequences' last `tail` actions (what an encoder window can read).
        A user with no state reads as version 0, no ts and an empty sequence."""
        ids = list(dict.fromkeys(user_ids))
        first = 0 if tail is None else -max(1, tail)  # LRANGE's start index
        if not ids:
            return {}
        shard = ShardKeys(self._prefix, keys.shard_tag(topic, partition))
        out: dict[str, UserInputs] = {}
        with redis_errors_as_state("user inputs"):
            for start in range(0, len(ids), READ_PAGE):
                page = ids[start : start + READ_PAGE]
                flat = await self._read_users(
                    keys=[shard.watermark()], args=[self._layout, first, *page]
                )
                out.update(decode_users(page, flat))
        return out

    async def bases(self, item_ids: Iterable[str]) -> dict[str, EncodeBasis]:
        """The recorded bases of the items that have one."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        fields = (keys.FIELD_VERSION, keys.FIELD_MODEL, keys.FIELD_BASIS)
        with redis_errors_as_state("encode bases"):
            async with self._client.pipeline(transaction=False) as pipe:
                for item_id in ids:
                    pipe.hmget(ItemKeys(self._prefix, item_id).basis(), fields)
                replies = await pipe.execute()
        out = {}
        for item_id, (raw_v, raw_m, raw_b) in zip(ids, replies, strict=True):
            if raw_v is not None and raw_m is not None and raw_b is not None:
                out[item_id] = EncodeBasis.from_json(_int(raw_v), text(raw_m), raw_b)
        return out

    async def put_bases(self, bases: Mapping[str, EncodeBasis]) -> int:
        """Record bases, each unless a newer one of the same model is there; returns writes."""
        if not bases:
            return 0
        fields = (keys.FIELD_VERSION, keys.FIELD_MODEL, keys.FIELD_BASIS)
        calls: list[tuple[list[str], list[str | int | bytes]]] = [
            (
                [ItemKeys(self._prefix, item_id).basis()],
                [basis.state_version, basis.model_version, basis.to_json(), *fields],
            )
            for item_id, basis in bases.items()
        ]
        with redis_errors_as_state("put bases"):
            if is_cluster(self._client):
                # a cluster pipeline cannot carry scripts: each item is its own slot anyway, so
                # the calls go concurrently, a bounded number at a time
                replies = []
                for start in range(0, len(calls), CLUSTER_CONCURRENCY):
                    replies += await asyncio.gather(
                        *(
                            self._put_basis(keys=k, args=a)
                            for k, a in calls[start : start + CLUSTER_CONCURRENCY]
                        )
                    )
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for k, a in calls:
                        await self._put_basis(keys=k, args=a, client=pipe)
                    replies = await pipe.execute()
        return sum(int(r) for r in replies)
