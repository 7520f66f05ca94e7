"""Small in-process fakes of the worker's dependencies, faked at their Python method level.

Each fake appends what it was asked to a shared `calls` log (when given one), so a test can check
the order of steps across fakes: dead letters before state, state before commit, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from state import ApplyResult
from streams.wire.dlq import DeadLetter
from streams.wire.events import Engagement, encode_engagement
from streams.wire.records import SourceRecord


def engagement(user: str = "u1", item: str = "i1", ts: float = 1_700_000_000.0) -> bytes:
    return encode_engagement(Engagement(f"e-{user}-{item}-{ts}", user, item, "click", ts))


def record(
    offset: int,
    value: bytes | None = None,
    *,
    partition: int = 0,
    topic: str = "eng",
    key: bytes | None = b"u1",
) -> SourceRecord:
    """A record of a valid engagement unless `value` says otherwise, keyed by its user."""
    return SourceRecord(topic, partition, offset, key, engagement() if value is None else value)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when the series was never touched."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class FakeState:
    """`RedisState.apply`: raises the queued errors first (one per call), then applies."""

    def __init__(
        self, calls: list[object] | None = None, errors: Sequence[BaseException] = ()
    ) -> None:
        self.calls = calls if calls is not None else []
        self.errors = list(errors)
        self.batches: list[tuple[str, int, list[tuple[int, Engagement]]]] = []

    async def apply(
        self, topic: str, partition: int, batch: Sequence[tuple[int, Engagement]]
    ) -> ApplyResult:
        self.calls.append(("apply", topic, partition))
        self.batches.append((topic, partition, list(batch)))
        if self.errors:
            raise self.errors.pop(0)
        return ApplyResult(len(batch), 0, batch[-1][0] if batch else -1)


class FakeSink:
    """`DeadLetterSink.send`: raises the queued errors first (one per call), then accepts."""

    def __init__(
        self, calls: list[object] | None = None, errors: Sequence[BaseException] = ()
    ) -> None:
        self.calls = calls if calls is not None else []
        self.errors = list(errors)
        self.sent: list[list[DeadLetter]] = []

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        self.calls.append("send")
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(list(letters))
