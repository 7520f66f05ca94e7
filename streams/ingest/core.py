"""The ingest core: a function over a batch of raw records, with no knowledge of the runtime.

It runs steps 1 and 2 of the commit order (streams/runtimes/checkpoint.py), each awaited before
the next. A transient failure is retried here under the one retry policy (state/retry.py), for
as long as it takes, so the runtime never sees a half-done batch succeed; anything else
propagates and the runtime must stop without committing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, RequestTimedOutError
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from state import ApplyResult, RedisState, StateUnavailableError
from state.retry import Backoff, of_types, retry_async
from streams.metrics import IngestMetrics
from streams.seams import NO_SEAMS, Seams
from streams.wire.dlq import DeadLetter, DeadLetterSink
from streams.wire.events import Engagement, Rejection, decode_engagements
from streams.wire.records import SourceRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    OSError,
    TimeoutError,
    StateUnavailableError,
    KafkaConnectionError,
    KafkaTimeoutError,
    RequestTimedOutError,
)
is_transient = of_types(*TRANSIENT)


@dataclass
class BatchOutcome:
    """What a batch did; `next_offsets` are safe to commit once `process` returned."""

    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    applied: int = 0
    replayed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    holders_capped: int = 0  # users a hub item's holder cap took out (no fan-out reaches them)


def validate(
    records: Sequence[SourceRecord],
) -> tuple[list[tuple[SourceRecord, Engagement]], list[DeadLetter]]:
    """Split a batch into valid events and dead letters; nothing is dropped silently."""
    decoded = decode_engagements([r.value or b"" for r in records])
    valid: list[tuple[SourceRecord, Engagement]] = []
    letters: list[DeadLetter] = []
    for record, result in zip(records, decoded, strict=True):
        if record.value is None:
            letters.append(DeadLetter(record, Rejection("empty_value", "record has no value")))
        elif isinstance(result, Rejection):
            letters.append(DeadLetter(record, result))
        elif record.key is None:
            # Without the user id as key, the producer's partitioner spreads one user's events
            # over several partitions: their sequence would split between owners.
            detail = f"record has no key; produce it keyed by its user_id {result.user_id!r}"
            letters.append(DeadLetter(record, Rejection("missing_key", detail)))
        elif record.key != result.user_id.encode():
            # Partitioning by user id is what keeps a user's sequence in order (one owner).
            detail = f"key {record.key[:64]!r} is not the event's user_id {result.user_id!r}"
            letters.append(DeadLetter(record, Rejection("key_mismatch", detail)))
        else:
            valid.append((record, result))
    return valid, letters


def by_partition(
    valid: Sequence[tuple[SourceRecord, Engagement]],
) -> dict[tuple[str, int], list[tuple[int, Engagement]]]:
    groups: dict[tuple[str, int], list[tuple[int, Engagement]]] = defaultdict(list)
    for record, event in valid:
        groups[(record.topic, record.partition)].append((record.offset, event))
    for batch in groups.values():
        batch.sort(key=lambda pair: pair[0])
    return groups


class IngestCore:
    """Decode, validate, dead-letter and apply one batch; see the module docstring for order."""

    def __init__(
        self,
        state: RedisState,
        dead_letters: DeadLetterSink,
        metrics: IngestMetrics,
        backoff: Backoff,
        seams: Seams = NO_SEAMS,
    ) -> None:
        self._state = state
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._backoff = backoff
        self._seams = seams

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        outcome = BatchOutcome()
        if not records:
            return outcome
        self._count_consumed(records)
        valid, letters = validate(records)
        if letters:
            await self._retrying("dead_letter", lambda: self._dead_letters.send(letters))
            self._count_dead_letters(letters)
            outcome.dead_lettered = len(letters)
        self._seams.at("after_dead_letters")
        started = time.perf_counter()
        # Partitions are independent shards: applied at once, Redis runs one partition's script
        # while this process encodes the next one's (on a cluster, masters run them in parallel).
        groups = by_partition(valid)
        applies = (self._apply(t, p, b) for (t, p), b in groups.items())
        results = await asyncio.gather(*applies, return_exceptions=True)
        for result in results:  # all have ended: a failure leaves no apply running behind it
            if isinstance(result, BaseException):
                raise result
        for result in cast(list[ApplyResult], results):
            outcome.applied += result.applied
            outcome.replayed += result.skipped
            outcome.duplicates += result.duplicates
            outcome.holders_capped += result.holders_capped
        self._seams.at("after_state_write")
        self._metrics.apply_seconds.observe(time.perf_counter() - started)
        self._metrics.applied.inc(outcome.applied)
        self._metrics.replayed.inc(outcome.replayed)
        self._metrics.duplicates.inc(outcome.duplicates)
        self._metrics.fanout_dropped.labels(reason="hub_cap").inc(outcome.holders_capped)
        for record in records:
            tp = (record.topic, record.partition)
            outcome.next_offsets[tp] = max(outcome.next_offsets.get(tp, 0), record.offset + 1)
        return outcome

    async def _apply(
        self, topic: str, partition: int, batch: list[tuple[int, Engagement]]
    ) -> ApplyResult:
        return await self._retrying(
            "state_apply", lambda: self._state.apply(topic, partition, batch)
        )

    def _count_consumed(self, records: Sequence[SourceRecord]) -> None:
        self._metrics.batch_size.observe(len(records))
        per_topic: dict[str, int] = defaultdict(int)
        for record in records:
            per_topic[record.topic] += 1
        for topic, count in per_topic.items():
            self._metrics.consumed.labels(topic=topic).inc(count)

    def _count_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        for letter in letters:
            self._metrics.invalid.labels(reason=letter.rejection.reason).inc()
            self._metrics.dead_lettered.labels(topic=letter.record.topic).inc()
        log.warning("dead-lettered %d records (first: %s)", len(letters), letters[0].rejection)

    async def _retrying(self, step: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures for as long as it takes: the waiting is the backpressure."""

        def counted(_error: BaseException, _attempt: int, _wait: float) -> None:
            self._metrics.retries.labels(step=step).inc()

        return await retry_async(
            call, what=step, backoff=self._backoff, transient=is_transient, on_retry=counted
        )
