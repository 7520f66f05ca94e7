"""Every entity the state knows, in pages: what a backfill must encode for a new model.

Users live in their partition's shard (``P:{T}:u:<user>``); items appear in every shard that saw
them (``P:{T}:i:<item>``) and in the catalog (``P:{i:<item>}:cat``), so item ids are
deduplicated across the scans. SCAN visits every key that exists for the whole scan at least
once; a key created meanwhile may be missed, which a backfill tolerates because the entity's
new state also leaves a dirty mark that the live (dual-writing) passes encode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from state import keys
from state.keys import ShardKeys
from state.redis_io import is_cluster, redis_errors_as_state, text

Shard = tuple[str, int]


def parse_tag(tag: str) -> Shard:
    """``engagements.3`` -> ("engagements", 3): the inverse of `keys.shard_tag`."""
    topic, _, partition = tag.rpartition(".")
    return topic, int(partition)


async def shard_list(client: aioredis.Redis, prefix: str) -> list[Shard]:
    """Every (topic, partition) whose events were ever applied."""
    with redis_errors_as_state("shards"):
        tags = await client.smembers(keys.shards_key(keys.check_prefix(prefix)))
    return sorted(parse_tag(text(tag)) for tag in tags)


SCAN_COUNT = 1000  # keys SCAN visits per call: the pattern matches a few of them


async def _scan(client: aioredis.Redis, match: str, page: int) -> AsyncIterator[list[str]]:
    """Key names matching `match`, `page` at a time (the last page may be shorter)."""
    names: list[str] = []
    async for found in _scan_replies(client, match):
        names.extend(text(k) for k in found)
        while len(names) >= page:
            yield names[:page]
            names = names[page:]
    if names:
        yield names


async def _scan_replies(client: aioredis.Redis, match: str) -> AsyncIterator[list[Any]]:
    """SCAN's replies; on a cluster, redis-py's scan_iter visits every master in turn (a
    cursor belongs to one node)."""
    if is_cluster(client):
        with redis_errors_as_state("scan"):
            async for key in client.scan_iter(match=match, count=SCAN_COUNT):
                yield [key]
        return
    cursor: int = 0
    while True:
        with redis_errors_as_state("scan"):
            cursor, found = await client.scan(cursor, match=match, count=SCAN_COUNT)
        yield found
        if cursor == 0:
            return


async def user_pages(
    client: aioredis.Redis, prefix: str, page: int
) -> AsyncIterator[tuple[Shard, list[str]]]:
    """Pages of user ids, each from one shard."""
    for topic, partition in await shard_list(client, prefix):
        head = ShardKeys(prefix, keys.shard_tag(topic, partition)).user("")
        async for names in _scan(client, head + "*", page):
            yield (topic, partition), [name[len(head) :] for name in names]


async def item_pages(client: aioredis.Redis, prefix: str, page: int) -> AsyncIterator[list[str]]:
    """Pages of item ids engaged in any shard or present in the catalog, each id once."""
    seen: set[str] = set()
    heads = [
        ShardKeys(prefix, keys.shard_tag(topic, partition)).item("")
        for topic, partition in await shard_list(client, prefix)
    ]
    catalog_head = keys.ItemKeys(prefix, "").base.removesuffix("}" + keys.SEP)
    patterns = [(head + "*", head, "") for head in heads]
    patterns.append((catalog_head + "*", catalog_head, "}" + keys.SEP + keys.CATALOG))
    for match, head, tail in patterns:
        matcher = match + tail
        async for names in _scan(client, matcher, page):
            ids = [name[len(head) : len(name) - len(tail)] for name in names]
            fresh = [i for i in ids if i not in seen]
            seen.update(fresh)
            if fresh:
                yield fresh
