"""The benchmark's generated stream: deterministic, time-ordered, with the documented mix."""

from __future__ import annotations

import pytest

from state.bench import PARTITIONS, generate, partitioned


def test_generated_stream_has_the_documented_shape() -> None:
    events = generate(20_000)
    assert events == generate(20_000)  # deterministic
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    share = {a: sum(e.action == a for e in events) / len(events) for a in ("view", "click", "save")}
    assert share["view"] == pytest.approx(0.70, abs=0.02)
    assert share["save"] == pytest.approx(0.08, abs=0.01)
    saves = [e for e in events if e.action == "save"]
    assert sum(e.context_id is not None for e in saves) / len(saves) == pytest.approx(0.3, abs=0.04)
    assert all(e.context_id is None for e in events if e.action != "save")


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
