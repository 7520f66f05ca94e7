"""The state bench's stream: the project generator, deterministic, time-ordered, partitioned."""

from __future__ import annotations

from state.config import StateConfig
from streams.devtools.bench.state import (
    PARTITIONS,
    compacted,
    generate,
    in_process_run,
    partitioned,
)


def test_generated_stream_has_the_documented_shape() -> None:
    events = generate(20_000)
    assert events == generate(20_000)  # deterministic
    assert len(events) == 20_000
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert {e.action for e in events} == {"view", "click", "save"}
    assert any(e.context_id is not None for e in events)  # board contexts make context pairs


def test_partitions_number_their_events_from_zero() -> None:
    parts = partitioned(generate(2_000))
    assert sorted(parts) == list(range(PARTITIONS))
    for batch in parts.values():
        assert [off for off, _ in batch] == list(range(len(batch)))
        users = {e.user_id for _, e in batch}
        assert all(
            users.isdisjoint({e.user_id for _, e in other})
            for other in parts.values()
            if other is not batch
        )


def test_in_process_reference_applies_every_event_and_reads_every_item() -> None:
    events = generate(3_000)
    parts = partitioned(events)
    run = in_process_run(parts, StateConfig())
    assert run.applied == len(events)
    assert run.items == len({e.item_id for e in events})
    assert run.apply_s > 0 and run.read_s > 0


def test_a_compacted_log_keeps_each_keys_newest_record_in_offset_order() -> None:
    log = [("a", b"1"), ("b", b"1"), ("a", b"2"), ("c", b"1"), ("b", b"2")]
    assert compacted(log) == [("a", b"2"), ("c", b"1"), ("b", b"2")]
    assert compacted([]) == []
