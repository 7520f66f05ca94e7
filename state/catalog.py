"""Item content in Redis, so any worker can re-encode any item at any time.

The catalog topic delivers an item's content once (or again when it changes); encoding an item
needs its own content and its neighbours' content long after that message was consumed, on
whichever worker drains the item's dirty marks. So the content lives beside the state: one hash
per item under the item's own hash tag (see `state.keys.ItemKeys`), plus a "content arrived"
dirty mark the re-encoder drains like the shards' marks.

Each `put` bumps the item's content version (`cv`). An item's vector also reads its neighbours'
content, so a put also bumps `nc` of every item whose encode listed the item put (its readers,
joined in `versions`) and marks them like an arrival: an item encoded while a neighbour had no
content yet, or older content, is encoded again. The re-encoder adds both counters to the item's
engagement version, so an item's state version grows with any of the three changes and never
decreases (all three only grow).

Why the readers index cannot miss one: the re-encoder adds an item to its neighbours' readers
and only then reads their content (every read of a neighbour's content for that encode, of a
neighbour encoded in the same pass too); a put stores the content and only then reads the
readers. Whichever comes second sees the other's write: the encode reads the new content, or
the put bumps and marks the reader.

An item with no catalog record encodes from `CatalogRecord.empty`: no title or text and the id as
its one category token, exactly the stand-in the offline trainer uses for items missing from the
catalog (`streams.training.data._NoContent`), so training and serving see the same input.

Crash safety: `put` writes the content, then the version, then the mark, in that order on one
connection. A crash part way leaves the catalog message uncommitted, so it is put again; a
reader that sees new content before its mark re-encodes again when the mark lands.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from state import keys
from state.config import ID_PATTERN
from state.exceptions import InvalidBatchError
from state.redis_io import load_lua, redis_errors_as_state, text, wait_for_replicas


class ContentItem(Protocol):
    """What `put` needs from a catalog message (``streams.wire.events.CatalogItem`` fits)."""

    @property
    def item_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def categories(self) -> tuple[str, ...]: ...
    @property
    def features(self) -> Mapping[str, tuple[float, ...]] | None: ...


@dataclass(frozen=True)
class CatalogRecord:
    """An item's stored content; `content_version` is 0 and `put_ts` None when never put."""

    item_id: str
    title: str
    text: str = ""
    categories: tuple[str, ...] = ()
    features: Mapping[str, tuple[float, ...]] | None = None
    content_version: int = 0
    put_ts: float | None = None
    # content puts of the items its encodes listed as neighbours (see the module docstring)
    neighbour_content: int = 0

    @classmethod
    def empty(cls, item_id: str, neighbour_content: int = 0) -> CatalogRecord:
        """The stand-in for an item without content: its id as its only token (see module doc)."""
        return cls(
            item_id=item_id,
            title="",
            categories=(f"id:{item_id}",),
            neighbour_content=neighbour_content,
        )

    @property
    def input_version(self) -> int:
        """What the item's label counts of content: its own puts and its neighbours'."""
        return self.content_version + self.neighbour_content


def _fields(item: ContentItem, now: float) -> dict[str, str]:
    if not isinstance(item.item_id, str) or not ID_PATTERN.fullmatch(item.item_id):
        raise InvalidBatchError(f"invalid item id {item.item_id!r}")
    features = {name: list(values) for name, values in (item.features or {}).items()}
    try:
        feats = json.dumps(features, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:
        raise InvalidBatchError(f"{item.item_id}: non-finite feature value") from exc
    return {
        keys.FIELD_TITLE: item.title,
        keys.FIELD_TEXT: item.text,
        keys.FIELD_CATEGORIES: json.dumps(list(item.categories), separators=(",", ":")),
        keys.FIELD_FEATURES: feats,
        keys.FIELD_PUT_TS: repr(now),
    }


def _record(item_id: str, raw: Mapping[bytes | str, bytes | str]) -> CatalogRecord | None:
    fields = {text(k): text(v) for k, v in raw.items()}
    neighbour_content = int(fields.get(keys.FIELD_NEIGHBOUR_CONTENT, "0"))
    if keys.FIELD_TITLE not in fields:
        return CatalogRecord.empty(item_id, neighbour_content) if neighbour_content else None
    features = json.loads(fields.get(keys.FIELD_FEATURES, "{}"))
    return CatalogRecord(
        item_id=item_id,
        title=fields[keys.FIELD_TITLE],
        text=fields.get(keys.FIELD_TEXT, ""),
        categories=tuple(json.loads(fields.get(keys.FIELD_CATEGORIES, "[]"))),
        features={k: tuple(v) for k, v in features.items()} or None,
        content_version=int(fields.get(keys.FIELD_CONTENT_VERSION, "0")),
        put_ts=float(fields[keys.FIELD_PUT_TS]) if keys.FIELD_PUT_TS in fields else None,
        neighbour_content=neighbour_content,
    )


class CatalogStore:
    """Item content and "content arrived" marks, shared by every worker."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "ss",
        *,
        wait_replicas: int = 0,
        wait_timeout_s: float = 2.0,
    ) -> None:
        """`wait_replicas`: replicas that must hold a put before it returns (Redis WAIT)."""
        self._client = client
        self._wait = (wait_replicas, wait_timeout_s)
        self._prefix = keys.check_prefix(prefix)
        self._dirty = keys.catalog_dirty_key(self._prefix)
        self._redirty = keys.catalog_redirty_key(self._prefix)
        # The shards' mark scripts serve this zset unchanged (the redirty hash stays empty).
        self._read_script = client.register_script(load_lua(keys.SCRIPT_READ_DIRTY))
        self._clear_script = client.register_script(load_lua(keys.SCRIPT_CLEAR_DIRTY))
        self._last_ts = 0.0

    def _stamp(self) -> float:
        """A wall time strictly above the previous one, so a re-put always changes the mark's
        score and `clear_dirty` (which compares scores) cannot drop a mark it did not read."""
        now = max(time.time(), math.nextafter(self._last_ts, math.inf))
        self._last_ts = now
        return now

    async def put(self, items: Iterable[ContentItem]) -> int:
        """Store items' content (the last one wins for a repeated id) and mark them dirty."""
        latest = {item.item_id: item for item in items}
        if not latest:
            return 0
        stamped = {item_id: (self._stamp(), item) for item_id, item in latest.items()}
        rows = {item_id: _fields(item, ts) for item_id, (ts, item) in stamped.items()}
        with redis_errors_as_state("catalog put"):
            async with self._client.pipeline(transaction=False) as pipe:
                for item_id, fields in rows.items():
                    key = keys.ItemKeys(self._prefix, item_id).catalog()
                    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                    pipe.hincrby(key, keys.FIELD_CONTENT_VERSION, 1)
                pipe.zadd(self._dirty, {i: ts for i, (ts, _) in stamped.items()})
                await pipe.execute()
        readers = await self._readers(rows)
        written = [self._dirty, *(keys.ItemKeys(self._prefix, i).catalog() for i in rows)]
        written += [keys.ItemKeys(self._prefix, i).catalog() for i in readers]
        await wait_for_replicas(self._client, written, *self._wait)
        return len(rows)

    async def _readers(self, put: Iterable[str]) -> list[str]:
        """Bump `nc` of the items that read the content just put and mark them; returns them.

        Only after the content is stored (the module docstring says why), in its own round trip.
        """
        ids = list(put)
        with redis_errors_as_state("catalog readers"):
            async with self._client.pipeline(transaction=False) as pipe:
                for item_id in ids:
                    pipe.smembers(keys.ItemKeys(self._prefix, item_id).readers())
                replies = await pipe.execute()
            readers = sorted({text(m) for members in replies for m in members})
            if not readers:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for reader in readers:
                    key = keys.ItemKeys(self._prefix, reader).catalog()
                    pipe.hincrby(key, keys.FIELD_NEIGHBOUR_CONTENT, 1)
                pipe.zadd(self._dirty, {reader: self._stamp() for reader in readers})
                await pipe.execute()
        return readers

    async def get(self, item_ids: Iterable[str]) -> dict[str, CatalogRecord]:
        """Stored content of the items that have some (one pipelined round trip)."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        with redis_errors_as_state("catalog get"):
            async with self._client.pipeline(transaction=False) as pipe:
                for item_id in ids:
                    pipe.hgetall(keys.ItemKeys(self._prefix, item_id).catalog())
                replies = await pipe.execute()
        found = {}
        for item_id, raw in zip(ids, replies, strict=True):
            record = _record(item_id, raw)
            if record is not None:
                found[item_id] = record
        return found

    async def versions(
        self, item_ids: Iterable[str], *, readers: Mapping[str, Iterable[str]] | None = None
    ) -> dict[str, int]:
        """Content versions of the items that have content, one pipelined round trip.

        `readers[n]`: items about to read n's content, added to n's readers first, in the same
        pipeline. The set and the content share n's hash tag, so one node runs the add before
        the read, on a cluster too; the module docstring says why that order matters.
        """
        ids = list(dict.fromkeys(item_ids))
        joins = {n: sorted(set(r)) for n, r in (readers or {}).items()}
        joins = {n: r for n, r in joins.items() if r}
        if not ids and not joins:
            return {}
        with redis_errors_as_state("catalog versions"):
            async with self._client.pipeline(transaction=False) as pipe:
                for item_id, joining in joins.items():
                    pipe.sadd(keys.ItemKeys(self._prefix, item_id).readers(), *joining)
                for item_id in ids:
                    pipe.hget(
                        keys.ItemKeys(self._prefix, item_id).catalog(), keys.FIELD_CONTENT_VERSION
                    )
                replies = (await pipe.execute())[len(joins) :]
        return {i: int(text(raw)) for i, raw in zip(ids, replies, strict=True) if raw is not None}

    async def dirty(self, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` oldest "content arrived" marks as (item id, put wall time)."""
        if limit < 1:
            return []
        with redis_errors_as_state("catalog dirty"):
            flat = await self._read_script(keys=[self._dirty, self._redirty], args=[limit])
        return [(text(flat[i]), float(text(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def clear_dirty(self, marks: Sequence[tuple[str, float]]) -> int:
        """Remove handled marks; one put again since `dirty` read it has a new score and stays."""
        if not marks:
            return 0
        args: list[str] = [""]  # no rescore: a put again keeps its own new score
        for member, score in marks:
            args += [member, repr(float(score))]
        with redis_errors_as_state("catalog clear"):
            removed = await self._clear_script(keys=[self._dirty, self._redirty], args=args)
        return int(removed)

    async def backlog(self) -> int:
        """Number of items waiting for a content re-encode (for a gauge)."""
        with redis_errors_as_state("catalog backlog"):
            return int(await self._client.zcard(self._dirty))
