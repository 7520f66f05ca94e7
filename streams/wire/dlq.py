"""Dead letters: each rejected record goes to `<topic>.dlq` with where it came from and why.

A record too big to copy whole (a producer may write up to the broker's limit, about 1 MB by
default, and a copy with its headers would be over it) goes as a truncated copy with its size
and SHA-256 in headers: refusing it would block its partition on every restart (a poison pill).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer

from streams.wire.events import Rejection
from streams.wire.records import SourceRecord

MAX_COPY_BYTES = 256 * 1024  # well under every default request and message limit
MAX_DETAIL_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: SourceRecord
    rejection: Rejection

    def headers(self) -> list[tuple[str, bytes]]:
        r = self.record
        headers = [
            ("source.topic", r.topic.encode()),
            ("source.partition", str(r.partition).encode()),
            ("source.offset", str(r.offset).encode()),
            ("error.reason", self.rejection.reason.encode()),
            ("error.detail", self.rejection.detail.encode()[:MAX_DETAIL_BYTES]),
        ]
        value = r.value or b""
        if len(value) > MAX_COPY_BYTES:
            headers += [
                ("copy.truncated_to", str(MAX_COPY_BYTES).encode()),
                ("original.size", str(len(value)).encode()),
                ("original.sha256", hashlib.sha256(value).hexdigest().encode()),
            ]
        return headers

    def value(self) -> bytes:
        """The record's bytes, or their first MAX_COPY_BYTES (the headers then say so)."""
        return (self.record.value or b"")[:MAX_COPY_BYTES]

    def key(self) -> bytes | None:
        key = self.record.key
        return key[:MAX_DETAIL_BYTES] if key is not None else None


class DeadLetterSink(Protocol):
    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Return only when every letter is acknowledged by the broker."""


class KafkaDeadLetterSink:
    """Writes to `<source topic><suffix>`, keeps the original key and bytes, awaits every ack."""

    def __init__(self, producer: AIOKafkaProducer, suffix: str) -> None:
        self._producer = producer
        self._suffix = suffix

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Every acknowledgement is awaited, even after one failed: the first failure is
        raised, and no future is left with an exception nobody retrieved."""
        futures = [
            await self._producer.send(
                f"{letter.record.topic}{self._suffix}",
                value=letter.value(),
                key=letter.key(),
                headers=letter.headers(),
            )
            for letter in letters
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
