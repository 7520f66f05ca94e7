"""Checkpoint: the commit order (core, then before_commit, then commit), and no commit on error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

from state.retry import Backoff
from streams.ingest.core import BatchOutcome, IngestCore
from streams.metrics import IngestMetrics
from streams.runtimes.checkpoint import Checkpoint, Commit, faust_acks_on_next_batch
from streams.seams import Point, Seams
from streams.wire.records import SourceRecord
from tests.unit.streams.fakes import FakeSink, FakeState, record

OFFSETS = {("eng", 0): 8, ("eng", 3): 2}


class FakeCore:
    """`IngestCore.process`: logs the call, then returns a fixed outcome or raises."""

    def __init__(self, calls: list[object], error: BaseException | None = None) -> None:
        self.calls, self.error = calls, error
        self.outcome = BatchOutcome(next_offsets=dict(OFFSETS), applied=5)

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        self.calls.append(("core", len(records)))
        if self.error is not None:
            raise self.error
        return self.outcome


def recorder(calls: list[object]) -> Commit:
    async def commit(offsets: dict[tuple[str, int], int]) -> None:
        calls.append(("commit", dict(offsets)))

    return commit


def checkpoint(core: FakeCore, calls: list[object], seams: Seams) -> Checkpoint:
    return Checkpoint(cast(IngestCore, core), recorder(calls), seams)


async def test_core_then_seam_then_commit_of_the_cores_offsets() -> None:
    calls: list[object] = []
    core = FakeCore(calls)
    outcome = await checkpoint(core, calls, Seams(at=calls.append)).process([record(7)])
    assert calls == [("core", 1), "before_commit", ("commit", OFFSETS)]
    assert outcome is core.outcome


async def test_no_commit_when_the_core_raises() -> None:
    calls: list[object] = []
    core = FakeCore(calls, error=ConnectionError("redis away past the policy"))
    with pytest.raises(ConnectionError):
        await checkpoint(core, calls, Seams(at=calls.append)).process([record(7)])
    assert calls == [("core", 1)]


async def test_no_commit_when_the_seam_raises() -> None:
    calls: list[object] = []

    def crash(point: Point) -> None:
        calls.append(point)
        if point == "before_commit":
            raise RuntimeError("killed before commit")

    with pytest.raises(RuntimeError, match="killed before commit"):
        await checkpoint(FakeCore(calls), calls, Seams(at=crash)).process([record(7)])
    assert calls == [("core", 1), "before_commit"]


async def test_a_failing_commit_propagates() -> None:
    calls: list[object] = []

    async def commit(_offsets: dict[tuple[str, int], int]) -> None:
        raise OSError("coordinator gone")

    cp = Checkpoint(cast(IngestCore, FakeCore(calls)), commit, Seams(at=calls.append))
    with pytest.raises(OSError):
        await cp.process([record(7)])
    assert calls == [("core", 1), "before_commit"]


async def test_the_whole_order_with_a_real_core() -> None:
    calls: list[object] = []
    state, sink = FakeState(calls), FakeSink(calls)
    core = IngestCore(
        state,  # type: ignore[arg-type]
        sink,
        IngestMetrics(CollectorRegistry()),
        Backoff(0.001, 0.002),
        Seams(at=calls.append),
    )
    cp = Checkpoint(core, recorder(calls), Seams(at=calls.append))
    await cp.process([record(0, b"junk"), record(1), record(2, partition=1)])
    assert calls == [
        "send",
        "after_dead_letters",
        ("apply", "eng", 0),
        ("apply", "eng", 1),
        "after_state_write",
        "before_commit",
        ("commit", {("eng", 0): 2, ("eng", 1): 3}),
    ]


async def test_no_commit_when_a_real_core_hits_a_bug() -> None:
    calls: list[object] = []
    state = FakeState(calls, errors=[ValueError("bug")])
    core = IngestCore(
        state,  # type: ignore[arg-type]
        FakeSink(calls),
        IngestMetrics(CollectorRegistry()),
        Backoff(0.001, 0.002),
    )
    cp = Checkpoint(core, recorder(calls), Seams(at=calls.append))
    with pytest.raises(ValueError):
        await cp.process([record(0)])
    assert not any(isinstance(c, tuple) and c[0] == "commit" for c in calls)
    assert "before_commit" not in calls


async def test_under_faust_the_commit_step_calls_nothing() -> None:
    calls: list[object] = []
    cp = Checkpoint(cast(IngestCore, FakeCore(calls)), faust_acks_on_next_batch)
    outcome = await cp.process([record(7)])
    assert calls == [("core", 1)]
    assert outcome.next_offsets == OFFSETS
