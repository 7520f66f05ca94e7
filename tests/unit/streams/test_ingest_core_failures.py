"""IngestCore under failure: transient errors retried in place, order of steps kept, bugs raised."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from state import ApplyResult
from state.retry import Backoff
from streams.ingest.core import IngestCore
from streams.metrics import IngestMetrics
from streams.seams import NO_SEAMS, Seams
from streams.wire.events import Engagement
from tests.unit.streams.fakes import FakeSink, FakeState, engagement, record, sample

FAST = Backoff(0.001, 0.002)
RETRIES = "sagestream_transient_retries_total"


def make_core(
    state: FakeState, sink: FakeSink, seams: Seams | None = None
) -> tuple[IngestCore, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    core = IngestCore(state, sink, metrics, FAST, seams or NO_SEAMS)  # type: ignore[arg-type]
    return core, registry


async def test_apply_is_retried_through_redis_connection_errors() -> None:
    state = FakeState(errors=[RedisConnectionError("down"), RedisConnectionError("still down")])
    core, registry = make_core(state, FakeSink())
    records = [record(0), record(1, engagement(item="i2")), record(2, engagement(item="i3"))]

    outcome = await core.process(records)

    assert outcome.applied == 3
    assert outcome.replayed == 0
    assert outcome.dead_lettered == 0
    assert outcome.next_offsets == {("eng", 0): 3}
    assert sample(registry, RETRIES, step="state_apply") == 2
    assert sample(registry, RETRIES, step="dead_letter") == 0
    assert sample(registry, "sagestream_events_applied_total") == 3
    # the same batch, in offset order, on every try
    assert len(state.batches) == 3
    assert all(b == state.batches[0] for b in state.batches)
    assert [offset for offset, _ in state.batches[0][2]] == [0, 1, 2]


async def test_dead_letters_are_retried_and_sent_before_any_apply() -> None:
    calls: list[object] = []
    state = FakeState(calls)
    sink = FakeSink(calls, errors=[KafkaConnectionError("broker away")])
    core, registry = make_core(state, sink)
    records = [record(0), record(1, b"{not json"), record(2, b""), record(3, b"[]")]

    outcome = await core.process(records)

    assert calls == ["send", "send", ("apply", "eng", 0)]
    assert outcome.dead_lettered == 3
    assert outcome.applied == 1
    assert len(sink.sent) == 1  # the letters were accepted once, as one batch
    assert [letter.record.offset for letter in sink.sent[0]] == [1, 2, 3]
    assert sample(registry, RETRIES, step="dead_letter") == 1
    # counted once, not once per try
    assert sample(registry, "sagestream_events_dead_lettered_total", topic="eng") == 3
    assert sample(registry, "sagestream_events_consumed_total", topic="eng") == 4


async def test_a_batch_with_letters_and_flaky_state_keeps_the_order() -> None:
    calls: list[object] = []
    points: list[str] = []
    state = FakeState(calls, errors=[OSError("reset"), RedisConnectionError("refused")])
    sink = FakeSink(calls, errors=[TimeoutError("slow ack")])

    def at(point: str) -> None:
        calls.append(point)
        points.append(point)

    core, _ = make_core(state, sink, Seams(at=at))
    await core.process([record(0, b"nope"), record(1)])
    assert calls == [
        "send",
        "send",
        "after_dead_letters",
        ("apply", "eng", 0),
        ("apply", "eng", 0),
        ("apply", "eng", 0),
        "after_state_write",
    ]
    assert points == ["after_dead_letters", "after_state_write"]


async def test_a_non_transient_error_from_apply_propagates_without_retry() -> None:
    calls: list[object] = []
    state = FakeState(calls, errors=[ValueError("script refused the batch")])
    core, registry = make_core(state, FakeSink(calls), Seams(at=calls.append))

    with pytest.raises(ValueError, match="script refused"):
        await core.process([record(0), record(1)])

    assert calls == ["after_dead_letters", ("apply", "eng", 0)]  # no after_state_write
    assert sample(registry, RETRIES, step="state_apply") == 0
    assert sample(registry, "sagestream_events_applied_total") == 0


async def test_a_non_transient_error_from_the_sink_propagates_before_any_apply() -> None:
    calls: list[object] = []
    state = FakeState(calls)
    sink = FakeSink(calls, errors=[RuntimeError("serializer bug")])
    core, registry = make_core(state, sink, Seams(at=calls.append))

    with pytest.raises(RuntimeError, match="serializer bug"):
        await core.process([record(0, b"{bad"), record(1)])

    assert calls == ["send"]
    assert state.batches == []
    assert sample(registry, "sagestream_events_dead_lettered_total", topic="eng") == 0


async def test_seams_are_passed_in_order_even_without_dead_letters() -> None:
    points: list[str] = []
    core, _ = make_core(FakeState(), FakeSink(), Seams(at=points.append))
    await core.process([record(0), record(1)])
    assert points == ["after_dead_letters", "after_state_write"]


async def test_an_empty_batch_does_nothing() -> None:
    calls: list[object] = []
    core, registry = make_core(FakeState(calls), FakeSink(calls), Seams(at=calls.append))
    outcome = await core.process([])
    assert calls == []
    assert outcome.next_offsets == {}
    assert outcome.applied == outcome.replayed == outcome.dead_lettered == 0
    assert registry.get_sample_value("sagestream_batch_size_count") == 0


async def test_next_offsets_are_the_highest_offset_plus_one_per_partition() -> None:
    state = FakeState()
    core, _ = make_core(state, FakeSink())
    records = [
        record(7, partition=1),
        record(3, partition=0),
        record(9, b"{bad", partition=1),  # dead-lettered records are done too
        record(5, partition=1),
        record(0, partition=0),
        record(41, topic="other", partition=0),
        record(40, topic="other", partition=0),
    ]

    outcome = await core.process(records)

    assert outcome.next_offsets == {("eng", 0): 4, ("eng", 1): 10, ("other", 0): 42}
    applied = {(topic, p): [o for o, _ in batch] for topic, p, batch in state.batches}
    assert applied == {("eng", 0): [0, 3], ("eng", 1): [5, 7], ("other", 0): [40, 41]}
    assert outcome.applied == 6
    assert outcome.dead_lettered == 1


async def test_replays_reported_by_the_state_are_counted() -> None:
    class ReplayingState(FakeState):
        async def apply(
            self, topic: str, partition: int, batch: Sequence[tuple[int, Engagement]]
        ) -> ApplyResult:
            result = await super().apply(topic, partition, batch)
            return ApplyResult(0, len(batch), result.watermark)

    core, registry = make_core(ReplayingState(), FakeSink())
    outcome = await core.process([record(0), record(1)])
    assert (outcome.applied, outcome.replayed) == (0, 2)
    assert sample(registry, "sagestream_events_replayed_total") == 2


async def test_holders_taken_out_by_the_hub_cap_are_counted_as_fan_out_drops() -> None:
    class CappingState(FakeState):
        async def apply(
            self, topic: str, partition: int, batch: Sequence[tuple[int, Engagement]]
        ) -> ApplyResult:
            result = await super().apply(topic, partition, batch)
            return ApplyResult(len(batch), 0, result.watermark, holders_capped=3)

    core, registry = make_core(CappingState(), FakeSink())
    outcome = await core.process([record(0), record(1)])
    assert outcome.holders_capped == 3
    assert sample(registry, "sagestream_fanout_dropped_total", reason="hub_cap") == 3
