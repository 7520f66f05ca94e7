"""Catch-up, owned here: whether re-encode passes may wait while the ingest works off a backlog.

A pass that runs while a backlog is still being applied encodes the users and items it finds
dirty, and encodes most of them again once their later events are in: in a drained run of
20,000 events, two passes encoded 2,835 user vectors for 1,556 users. Held until the backlog is
in, one pass encodes each of them once, and the ingest has the cores to itself meanwhile.

A batch comes from a backlog when a partition filled it (`ingest.batch_max` records) or left
more than that waiting behind it. A stream the worker keeps up with does neither; a restart
after downtime, a replay or an overload does. The verdict of such a batch holds until the next
batch is applied too, so the last batch of a backlog, which is not full, is in before a pass
reads. The hold is bounded (`reencode.catchup_hold_s`, in reencoder.py), so a worker that stays
behind still passes that often, and it never holds while backpressure pauses consumption: then
the passes are what lets the ingest go on.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.metrics import IngestMetrics
from streams.runtimes.backpressure import Backpressure


class CatchUp:
    def __init__(self, batch_max: int, backpressure: Backpressure, metrics: IngestMetrics) -> None:
        self._batch_max = batch_max
        self._backpressure = backpressure
        self._metrics = metrics
        self._behind = False  # what a pass reads
        self._fetched = False  # the verdict of the batch being applied

    def fetched(self, sizes: Iterable[int], lags: Iterable[int]) -> None:
        """A batch came: its records per partition and the lag behind each of them. A backlog
        batch holds passes from now on; any other keeps the verdict until it is applied."""
        limit = self._batch_max
        self._fetched = max(sizes, default=0) >= limit or max(lags, default=0) > limit
        self._set(self._behind or self._fetched)

    def applied(self) -> None:
        """The batch is in Redis: the verdict is now its own."""
        self._set(self._fetched)

    def holds(self) -> bool:
        """Whether a pass may wait now: behind, and consuming (not paused by backpressure)."""
        return self._behind and self._backpressure.since is None

    def _set(self, behind: bool) -> None:
        self._behind = behind
        self._metrics.catching_up.set(int(behind))
