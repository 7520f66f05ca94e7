"""What a runtime hands the ingest core: raw records and where they came from, nothing Faust."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


class _Message(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def records_of(fetched: Mapping[Any, Iterable[_Message]]) -> list[SourceRecord]:
    """The records of an aiokafka `getmany` result (timestamps in milliseconds)."""
    return [
        SourceRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
        for messages in fetched.values()
        for m in messages
    ]
