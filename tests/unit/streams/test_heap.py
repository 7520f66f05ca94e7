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


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_leave_later_collections_and_the_young_generation_grows() -> None:
    kept = [[i] for i in range(1000)]  # alive when the worker is wired
    settle_start_up_heap()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    frozen = gc.get_freeze_count()
    later = [[i] for i in range(1000)]  # made by a second worker in the same process
    settle_start_up_heap()
    assert gc.get_freeze_count() >= frozen + len(later)


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    settle_start_up_heap()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    assert gc.collect() >= 2
