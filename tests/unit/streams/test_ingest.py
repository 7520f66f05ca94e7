"""The ingest core's validation: what becomes an event, what becomes a dead letter, and why."""

from __future__ import annotations

from streams.ingest.core import by_partition, validate
from streams.wire.events import Engagement, encode_engagement
from streams.wire.records import SourceRecord


def record(
    offset: int, value: bytes | None, key: bytes | None = b"u1", partition: int = 0
) -> SourceRecord:
    return SourceRecord("eng", partition, offset, key, value)


def event(user: str = "u1", item: str = "i1") -> bytes:
    return encode_engagement(Engagement("e1", user, item, "click", 1_700_000_000.0))


def test_valid_records_pass_and_keep_their_coordinates() -> None:
    valid, letters = validate([record(5, event()), record(6, event(user="u2"), key=b"u2")])
    assert [r.offset for r, _ in valid] == [5, 6]
    assert letters == []


def test_every_rejection_is_a_dead_letter_with_a_reason() -> None:
    records = [
        record(1, b"{not json"),
        record(2, None),
        record(3, event(user="u2")),  # keyed u1: would land in another user's partition
        record(4, event()),
        record(5, event(), key=None),  # the partitioner would spread the user's events
    ]
    valid, letters = validate(records)
    assert [r.offset for r, _ in valid] == [4]
    reasons = {letter.record.offset: letter.rejection.reason for letter in letters}
    assert reasons == {1: "bad_json", 2: "empty_value", 3: "key_mismatch", 5: "missing_key"}
    headers = dict(letters[0].headers())
    assert headers["source.topic"] == b"eng"
    assert headers["source.offset"] == b"1"
    assert headers["error.reason"] == b"bad_json"


def test_batches_are_grouped_by_partition_in_offset_order() -> None:
    records = [
        record(9, event(), partition=1),
        record(3, event(), partition=0),
        record(7, event(), partition=1),
    ]
    valid, _ = validate(records)
    groups = by_partition(valid)
    assert {tp: [off for off, _ in batch] for tp, batch in groups.items()} == {
        ("eng", 0): [3],
        ("eng", 1): [7, 9],
    }
