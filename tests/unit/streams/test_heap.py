"""The worker's collector policy (streams/runtimes/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.runtimes.heap import YOUNG_THRESHOLD, settle_start_up_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def collectable(objects: list[list[int]]) -> int:
    """How many of `objects` a collection still examines (a frozen one is in no generation).

    Asked of the objects themselves, not of `gc.get_freeze_count()`: a frozen object freed by
    its reference count leaves the count, so after a long test session the count grew by fewer
    than the objects frozen (CI: 980 of 1,000)."""
    ids = {id(o) for o in objects}
    return sum(id(o) in ids for o in gc.get_objects())


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_leave_later_collections_and_the_young_generation_grows() -> None:
    kept = [[i] for i in range(1000)]  # alive when the worker is wired
    assert collectable(kept) == len(kept)
    settle_start_up_heap()
    assert collectable(kept) == 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    later = [[i] for i in range(1000)]  # made by a second worker in the same process
    assert collectable(later) == len(later)
    settle_start_up_heap()
    assert collectable(later) == 0


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    settle_start_up_heap()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    assert gc.collect() >= 2
