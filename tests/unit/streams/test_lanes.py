"""Re-encode lanes: how a worker's shards are dealt, and that one failing pass of a round
cancels the others and surfaces as itself (the updater retries on the error's type)."""

from __future__ import annotations

import asyncio

import pytest

from state import StateUnavailableError
from streams.vectors.reencoder import _together, lanes_of
from streams.vectors.rules import PassStats

SHARDS = [("eng", p) for p in range(5)]


def test_shards_are_dealt_in_turn_and_no_lane_is_empty() -> None:
    assert lanes_of(SHARDS, 1) == [SHARDS]
    assert lanes_of(SHARDS, 2) == [SHARDS[0::2], SHARDS[1::2]]
    assert lanes_of(SHARDS[:2], 4) == [[SHARDS[0]], [SHARDS[1]]]
    dealt = lanes_of(SHARDS, 3)
    assert sorted(s for lane in dealt for s in lane) == SHARDS


def test_no_shard_is_one_lane_that_drains_only_the_catalog() -> None:
    assert lanes_of([], 1) == [[]]
    assert lanes_of([], 3) == [[]]


async def test_a_round_returns_every_pass_in_lane_order() -> None:
    async def one(marks: int, wait: float) -> PassStats:
        await asyncio.sleep(wait)
        return PassStats(marks=marks)

    done = await _together([one(1, 0.02), one(2, 0.0)])
    assert [stats.marks for stats in done] == [1, 2]


async def test_a_failing_pass_cancels_the_others_and_raises_as_itself() -> None:
    cancelled = asyncio.Event()

    async def slow() -> PassStats:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return PassStats()

    async def failing() -> PassStats:
        await asyncio.sleep(0)
        raise StateUnavailableError("redis went away")

    with pytest.raises(StateUnavailableError, match="redis went away"):
        await _together([slow(), failing()])
    assert cancelled.is_set()
