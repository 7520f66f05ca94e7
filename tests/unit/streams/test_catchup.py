"""Catch-up: a worker applying a backlog lets its passes wait for the ingest, never past
`catchup_hold_s` and never while backpressure pauses consumption."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from itertools import pairwise
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from streams.metrics import IngestMetrics
from streams.runtimes.backpressure import Backpressure
from streams.runtimes.catchup import CatchUp
from streams.settings import ReencodeSettings
from streams.vectors import reencoder as reencoder_module
from streams.vectors.reencoder import Reencoder
from streams.vectors.rules import PassStats

BATCH_MAX = 100


def catch_up(max_backlog: int = 10) -> tuple[CatchUp, Backpressure, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    backpressure = Backpressure(max_backlog, metrics)
    return CatchUp(BATCH_MAX, backpressure, metrics), backpressure, registry


@pytest.mark.parametrize(
    ("sizes", "lags", "behind"),
    [
        ((), (), False),  # nothing came
        ((40, 60), (0, 3), False),  # a live batch
        ((BATCH_MAX - 1,), (BATCH_MAX,), False),
        ((5, BATCH_MAX), (0, 0), True),  # a partition filled its share
        ((5, 7), (0, BATCH_MAX + 1), True),  # more than a batch waits behind one
    ],
)
def test_a_backlog_batch_is_full_or_leaves_more_than_a_batch_behind(
    sizes: Sequence[int], lags: Sequence[int], behind: bool
) -> None:
    verdict, _, registry = catch_up()
    verdict.fetched(sizes, lags)
    assert verdict.holds() is behind
    verdict.applied()
    assert verdict.holds() is behind
    assert registry.get_sample_value("sagestream_catching_up") == int(behind)


def test_the_last_batch_of_a_backlog_is_applied_before_passes_go_on() -> None:
    verdict, _, _ = catch_up()
    verdict.fetched([BATCH_MAX, BATCH_MAX], [BATCH_MAX // 2, 0])
    verdict.applied()
    verdict.fetched([BATCH_MAX // 2], [0])  # the rest of the backlog: not full, nothing behind it
    assert verdict.holds()  # still being applied
    verdict.applied()
    assert not verdict.holds()
    verdict.fetched([], [])  # and an empty fetch after a backlog batch is caught up
    verdict.applied()
    assert not verdict.holds()


def test_passes_never_wait_while_backpressure_pauses_consumption() -> None:
    verdict, backpressure, _ = catch_up(max_backlog=10)
    verdict.fetched([BATCH_MAX], [BATCH_MAX * 5])
    verdict.applied()
    backpressure.observe_backlog(11)
    assert backpressure.check()  # paused: the passes are what lets the ingest go on
    assert not verdict.holds()
    backpressure.observe_backlog(0)
    assert not backpressure.check()
    assert verdict.holds()


class Clock:
    """The re-encoder's `time.monotonic` (its own, not asyncio's): `step` seconds later each time
    it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def passes_of(hold_s: float, holds: list[bool], clock: Clock, wanted: int) -> list[str]:
    """Run the re-encoder's loop until `wanted` passes ran; the order of hold checks and passes.
    `holds` answers the hold checks in turn (then True forever)."""
    seen: list[str] = []
    stop = asyncio.Event()
    reencoder = Reencoder.__new__(Reencoder)  # the loop needs only its settings and run_pass
    reencoder._cfg = ReencodeSettings(window_s=0.001, catchup_hold_s=hold_s)

    async def run_pass(_shards: object, *, catalog: bool = True) -> PassStats:
        seen.append(f"pass@{clock.now:.0f}")
        if sum(s.startswith("pass") for s in seen) == wanted:
            stop.set()
        return PassStats(marks=1, more_waiting=True)  # a full page: the next pass comes at once

    def hold() -> bool:
        seen.append("hold")
        return holds.pop(0) if holds else True

    reencoder.run_pass = run_pass  # type: ignore[method-assign]
    await asyncio.wait_for(reencoder.run(lambda: [("eng", 0)], stop, hold=hold), 10)
    return seen


async def test_a_pass_waits_while_the_ingest_catches_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(step=0.0)  # time stands still: only the verdict ends the hold
    monkeypatch.setattr(reencoder_module, "time", SimpleNamespace(monotonic=clock))
    seen = await passes_of(5.0, [True, True, True, False], clock, wanted=1)
    assert seen == ["hold", "hold", "hold", "hold", "pass@1000"]


async def test_a_worker_that_stays_behind_still_passes_every_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock(step=1.0)  # each read of the clock is a second later
    monkeypatch.setattr(reencoder_module, "time", SimpleNamespace(monotonic=clock))
    seen = await passes_of(2.5, [], clock, wanted=3)
    passes = [float(s.removeprefix("pass@")) for s in seen if s.startswith("pass")]
    assert len(passes) == 3
    assert all(b - a >= 2.5 for a, b in pairwise(passes))
    assert seen.count("hold") >= 2 * 2  # between passes it waited, not passed at once


async def test_a_hold_of_zero_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(step=0.0)
    monkeypatch.setattr(reencoder_module, "time", SimpleNamespace(monotonic=clock))
    seen = await passes_of(0.0, [], clock, wanted=3)
    assert seen == ["pass@1000"] * 3
