"""The commit order, owned here and stated once.

For each batch of engagement records, every step awaited before the next:

1. decode and validate; dead letters sent and acknowledged by the broker (acks=all);
2. the state applied in Redis, one script call per partition, which stores the partition's
   offset watermark with the state and writes the dirty marks (durable: AOF);
3. the offsets committed: the batch loop commits the offsets the core returned for the
   partitions it still owns (one revoked meanwhile is replayed by its new owner, a no-op on the
   watermark); Faust acks the batch when its agent moves on and commits acked offsets on its
   interval;
4. later, in the updater: a dirty mark is cleared only after the vectors it implies were
   upserted with ``wait=True`` (streams/vectors/reencoder.py).

A crash before 3 leaves offsets uncommitted: the batch is read again, and the watermark makes the
replay a no-op. A crash before 4 leaves the marks: the next owner of the partition re-encodes
them, and the state-version guard in Qdrant makes a repeat a no-op. So nothing acknowledged is
lost and no vector moves back. Steps 1-2 are `IngestCore.process`; an error it raises must stop
the worker before step 3.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from streams.ingest.core import BatchOutcome, IngestCore
from streams.seams import NO_SEAMS, Seams
from streams.wire.records import SourceRecord

Commit = Callable[[dict[tuple[str, int], int]], Awaitable[None]]


async def faust_acks_on_next_batch(_offsets: dict[tuple[str, int], int]) -> None:
    """Step 3 under Faust: nothing to call, the agent taking its next batch acks this one."""


class Checkpoint:
    def __init__(self, core: IngestCore, commit: Commit, seams: Seams = NO_SEAMS) -> None:
        self._core = core
        self._commit = commit
        self._seams = seams

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Steps 1-3 for one batch; the returned offsets are committed (or handed to Faust)."""
        outcome = await self._core.process(records)
        self._seams.at("before_commit")
        await self._commit(outcome.next_offsets)
        return outcome
