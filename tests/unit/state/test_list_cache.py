"""The kept neighbour lists (state/list_cache.py): what a reply turns into, and the bound."""

from __future__ import annotations

import pytest

from state.list_cache import ListCache


def full(version: bytes, member: bytes) -> list[object]:
    """A full reply of read_items.lua: head, then the joined members and packed scores."""
    return [version, b"1", b"0", member, b"\x00" * 8]


def test_a_head_alone_is_completed_from_the_list_held() -> None:
    cache = ListCache(4)
    assert cache.settle("p0", "a", full(b"3", b"x"), None) == full(b"3", b"x")
    held = cache.known("p0", ["a", "b"])
    assert list(held) == ["a"]
    assert cache.settle("p0", "a", [b"3", b"1", b"0"], held["a"]) == full(b"3", b"x")
    assert cache.hits == 1


def test_a_head_alone_without_a_list_held_is_an_error() -> None:
    with pytest.raises(ValueError, match="held nothing"):
        ListCache(4).settle("p0", "a", [b"3", b"1", b"0"], None)


def test_the_least_recently_read_list_goes_first() -> None:
    cache = ListCache(2)
    cache.settle("p0", "a", full(b"1", b"x"), None)
    cache.settle("p1", "a", full(b"1", b"y"), None)
    cache.settle("p0", "a", [b"1", b"1", b"0"], cache.known("p0", ["a"])["a"])  # read again
    cache.settle("p0", "b", full(b"1", b"z"), None)
    assert len(cache) == 2
    assert cache.known("p1", ["a"]) == {}
    assert set(cache.known("p0", ["a", "b"])) == {"a", "b"}


def test_a_list_evicted_while_its_read_was_in_flight_is_still_answered() -> None:
    cache = ListCache(1)
    cache.settle("p0", "a", full(b"1", b"x"), None)
    held = cache.known("p0", ["a"])
    cache.settle("p0", "b", full(b"1", b"z"), None)  # evicts a
    assert cache.settle("p0", "a", [b"1", b"1", b"0"], held["a"]) == full(b"1", b"x")


def test_off_keeps_nothing_and_an_absent_item_is_not_kept() -> None:
    off = ListCache(0)
    off.settle("p0", "a", full(b"1", b"x"), None)
    assert len(off) == 0 and off.known("p0", ["a"]) == {}
    on = ListCache(4)
    on.settle("p0", "gone", [None, None, None, b"", b""], None)
    assert len(on) == 0
