"""Dead letters: each rejected record goes to `<topic>.dlq` with where it came from and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer

from streams.wire.events import Rejection
from streams.wire.records import SourceRecord


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: SourceRecord
    rejection: Rejection

    def headers(self) -> list[tuple[str, bytes]]:
        r = self.record
        return [
            ("source.topic", r.topic.encode()),
            ("source.partition", str(r.partition).encode()),
            ("source.offset", str(r.offset).encode()),
            ("error.reason", self.rejection.reason.encode()),
            ("error.detail", self.rejection.detail.encode()),
        ]


class DeadLetterSink(Protocol):
    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Return only when every letter is acknowledged by the broker."""


class KafkaDeadLetterSink:
    """Writes to `<source topic><suffix>`, keeps the original key and bytes, awaits every ack."""

    def __init__(self, producer: AIOKafkaProducer, suffix: str) -> None:
        self._producer = producer
        self._suffix = suffix

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        futures = [
            await self._producer.send(
                f"{letter.record.topic}{self._suffix}",
                value=letter.record.value or b"",
                key=letter.record.key,
                headers=letter.headers(),
            )
            for letter in letters
        ]
        for future in futures:
            await future
