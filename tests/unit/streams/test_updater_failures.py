"""The vector updater under failure: restarted while a store is unreachable, fatal on a bug,
prompt to stop, and `drain` retrying until the backlog is done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from state import StateUnavailableError, VectorStore, VectorStoreUnavailable
from state.retry import Backoff
from streams.metrics import IngestMetrics
from streams.vectors.reencoder import Reencoder
from streams.vectors.rules import PassStats, Shard
from streams.vectors.updater import Updater

FAST = Backoff(0.001, 0.002)
SLOW = Backoff(1000.0, 1000.0)  # a retry wait that would outlast any test
SHARDS: list[Shard] = [("eng", 0), ("eng", 2)]
GUARD_S = 30  # fails a hung test quickly; never reached when the code behaves


def busy_pass() -> PassStats:
    stats = PassStats(marks=3, users_encoded=1, items_encoded=2)
    stats.reasons["sequence"] = 1
    stats.reasons["cold_start"] = 2
    return stats


class FakeReencoder:
    """`Reencoder.run` and `run_until_idle`: each call first raises its queued error, if any.

    A `run` that does not raise waits for `go`, reports one pass through `on_pass`, sets
    `passed`, then waits for its stop event, as the real loop does between passes."""

    def __init__(
        self,
        run_errors: Sequence[BaseException] = (),
        idle_errors: Sequence[BaseException] = (),
    ) -> None:
        self.run_errors, self.idle_errors = list(run_errors), list(idle_errors)
        self.runs = 0
        self.idle_calls: list[list[Shard]] = []
        self.running = asyncio.Event()
        self.go = asyncio.Event()
        self.passed = asyncio.Event()
        self.seen_shards: list[list[Shard]] = []

    async def run(
        self,
        shards: Callable[[], Sequence[Shard]],
        stop: asyncio.Event,
        on_pass: Callable[[PassStats], None] | None = None,
        *,
        catalog: bool = True,
        between: Callable[[], Awaitable[None]] | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self.runs += 1
        self.seen_shards.append(list(shards()))
        if self.run_errors:
            raise self.run_errors.pop(0)
        self.running.set()
        await self.go.wait()
        if on_pass is not None:
            on_pass(busy_pass())
        if between is not None:
            await between()
        self.passed.set()
        await stop.wait()

    async def run_until_idle(self, shards: Sequence[Shard]) -> list[PassStats]:
        self.idle_calls.append(list(shards))
        if self.idle_errors:
            raise self.idle_errors.pop(0)
        return [busy_pass(), PassStats()]


def make(
    reencoder: FakeReencoder, backoff: Backoff = FAST
) -> tuple[Updater, CollectorRegistry, list[str]]:
    registry = CollectorRegistry()
    fatal: list[str] = []
    updater = Updater(
        cast(Reencoder, reencoder),
        lambda: SHARDS,
        IngestMetrics(registry),
        lambda: fatal.append("fatal"),
        cast(VectorStore, object()),
        backoff,
    )
    return updater, registry, fatal


def passes_observed(registry: CollectorRegistry) -> float:
    """Non-idle passes exported (each observes encode seconds once)."""
    return registry.get_sample_value("sagestream_encode_seconds_count") or 0.0


async def test_failing_from_an_unreachable_store_until_the_next_pass() -> None:
    reencoder = FakeReencoder(run_errors=[StateUnavailableError("redis away")])
    updater, registry, fatal = make(reencoder)
    assert updater.failing is False
    updater.start()
    async with asyncio.timeout(GUARD_S):
        await reencoder.running.wait()  # restarted after the failure, no pass done yet
        assert updater.failing is True
        reencoder.go.set()
        await reencoder.passed.wait()
        assert updater.failing is False
        await updater.stop()
    assert reencoder.runs == 2
    assert reencoder.seen_shards == [SHARDS, SHARDS]
    assert fatal == []
    assert passes_observed(registry) == 1
    assert registry.get_sample_value("sagestream_reencodes_total", {"reason": "cold_start"}) == 2


async def test_an_unreachable_vector_store_is_retried_like_redis() -> None:
    reencoder = FakeReencoder(
        run_errors=[VectorStoreUnavailable("qdrant away"), StateUnavailableError("redis away")]
    )
    updater, _, fatal = make(reencoder)
    updater.start()
    async with asyncio.timeout(GUARD_S):
        await reencoder.running.wait()
        assert updater.failing is True
        reencoder.go.set()
        await reencoder.passed.wait()
        await updater.stop()
    assert reencoder.runs == 3
    assert updater.failing is False
    assert fatal == []


async def test_a_bug_in_a_pass_calls_on_fatal_and_is_not_retried() -> None:
    reencoder = FakeReencoder(run_errors=[ZeroDivisionError("bug")])
    updater, registry, fatal = make(reencoder)
    updater.start()
    async with asyncio.timeout(GUARD_S):
        while not fatal:
            await asyncio.sleep(0)
        # the supervisor re-raises after on_fatal: stopping surfaces the bug
        with pytest.raises(ZeroDivisionError):
            await updater.stop()
    assert fatal == ["fatal"]
    assert reencoder.runs == 1
    assert updater.failing is False  # a bug is not an unreachable dependency
    assert passes_observed(registry) == 0


async def test_stop_returns_promptly_while_waiting_to_retry() -> None:
    reencoder = FakeReencoder(run_errors=[StateUnavailableError("down")] * 3)
    updater, _, fatal = make(reencoder, SLOW)
    updater.start()
    async with asyncio.timeout(GUARD_S):
        while not updater.failing:  # set by on_retry, right before the retry wait starts
            await asyncio.sleep(0)
        await updater.stop()  # the wait is >= 500 s: only the stop event can end it
    assert reencoder.runs == 1
    assert fatal == []


async def test_stop_before_start_and_twice_is_harmless() -> None:
    updater, _, _ = make(FakeReencoder())
    await updater.stop()
    await updater.stop()


async def test_stop_ends_a_running_updater() -> None:
    reencoder = FakeReencoder()
    updater, _, fatal = make(reencoder)
    updater.start()
    async with asyncio.timeout(GUARD_S):
        await reencoder.running.wait()
        reencoder.go.set()
        await reencoder.passed.wait()
        await updater.stop()
    assert reencoder.runs == 1
    assert fatal == []


async def test_drain_retries_until_idle_through_an_unreachable_store() -> None:
    reencoder = FakeReencoder(
        idle_errors=[StateUnavailableError("redis away"), VectorStoreUnavailable("qdrant away")]
    )
    updater, registry, fatal = make(reencoder)
    async with asyncio.timeout(GUARD_S):
        await updater.drain(asyncio.Event())
    assert reencoder.idle_calls == [SHARDS, SHARDS, SHARDS]
    assert passes_observed(registry) == 1  # the busy pass; the idle one is not exported
    assert reencoder.runs == 0  # drain never starts the background loop
    assert fatal == []


async def test_drain_stops_the_background_loop_first() -> None:
    reencoder = FakeReencoder()
    updater, _, _ = make(reencoder)
    updater.start()
    async with asyncio.timeout(GUARD_S):
        await reencoder.running.wait()
        reencoder.go.set()
        await updater.drain(asyncio.Event())
    assert reencoder.passed.is_set()
    assert reencoder.idle_calls == [SHARDS]


async def test_drain_gives_up_quietly_when_the_worker_is_told_to_stop() -> None:
    reencoder = FakeReencoder(idle_errors=[StateUnavailableError("down")] * 5)
    updater, registry, _ = make(reencoder, SLOW)
    stopping = asyncio.Event()
    stopping.set()
    async with asyncio.timeout(GUARD_S):
        await updater.drain(stopping)  # Stopped is swallowed: nothing to report
    assert reencoder.idle_calls == [SHARDS]
    assert passes_observed(registry) == 0


async def test_drain_raises_a_bug() -> None:
    reencoder = FakeReencoder(idle_errors=[KeyError("bug")])
    updater, _, _ = make(reencoder)
    with pytest.raises(KeyError):
        await updater.drain(asyncio.Event())
    assert len(reencoder.idle_calls) == 1
