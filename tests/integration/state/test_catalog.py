"""CatalogStore on a real redis-server: round trip, versions, and marks that survive a re-put."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from state import CatalogRecord, CatalogStore
from state.exceptions import InvalidBatchError
from streams.wire.events import CatalogItem

pytestmark = pytest.mark.integration


async def test_round_trip_and_content_versions(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    store = CatalogStore(redis_client, key_prefix)
    item = CatalogItem("i1", "Title", "body", ("a", "b"), {"img": (0.5, -1.0)})
    assert await store.put([item, CatalogItem("i2", "other")]) == 2
    got = await store.get(["i1", "i2", "nope"])
    assert set(got) == {"i1", "i2"}
    assert (got["i1"].title, got["i1"].text, got["i1"].categories) == ("Title", "body", ("a", "b"))
    assert got["i1"].features == {"img": (0.5, -1.0)}
    assert got["i2"].features is None and got["i1"].content_version == 1
    await store.put([item])
    assert (await store.get(["i1"]))["i1"].content_version == 2
    assert CatalogRecord.empty("x").categories == ("id:x",)


async def test_a_mark_put_again_after_its_read_is_kept(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    store = CatalogStore(redis_client, key_prefix)
    await store.put([CatalogItem("i1", "v1"), CatalogItem("i2", "v1")])
    read = await store.dirty(10)
    assert [i for i, _ in read] == ["i1", "i2"]
    await store.put([CatalogItem("i1", "v2")])  # arrives while the first content is encoded
    assert await store.clear_dirty(read) == 1
    assert [i for i, _ in await store.dirty(10)] == ["i1"]
    assert await store.backlog() == 1


async def test_refuses_ids_that_would_break_the_hash_tag(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    with pytest.raises(InvalidBatchError):
        await CatalogStore(redis_client, key_prefix).put([CatalogItem("a}b", "t")])


async def test_a_put_marks_the_items_that_read_it_and_counts_the_put_in_their_label(
    redis_client: aioredis.Redis, key_prefix: str
) -> None:
    store = CatalogStore(redis_client, key_prefix)
    await store.put([CatalogItem("i1", "with content")])
    await store.clear_dirty(await store.dirty(10))
    # i1 and i3 (no content of its own) read i2; i3 also reads i4; they join, then read
    joins = {"i2": ["i1", "i3"], "i4": ["i3"], "i5": []}
    assert await store.versions(["i1", "i2", "i4"], readers=joins) == {"i1": 1}
    assert await store.versions([], readers={"i2": ["i1"]}) == {}  # joined again: still once
    assert await redis_client.scard(f"{key_prefix}:{{i:i2}}:readers") == 2
    await store.put([CatalogItem("i2", "late"), CatalogItem("i4", "late too")])
    assert sorted(i for i, _ in await store.dirty(10)) == ["i1", "i2", "i3", "i4"]
    got = await store.get(["i1", "i3"])
    assert (got["i1"].content_version, got["i1"].neighbour_content) == (1, 1)
    assert got["i1"].input_version == 2 and got["i1"].title == "with content"
    # one put of two of its neighbours counts once; it has no content, so it is the stand-in
    assert got["i3"] == CatalogRecord.empty("i3", neighbour_content=1)
    assert await store.versions(["i1", "i3"]) == {"i1": 1}  # own content only (cache key)
    await store.put([CatalogItem("i2", "later")])
    assert (await store.get(["i3"]))["i3"].input_version == 2
