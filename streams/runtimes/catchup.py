"""Catch-up, owned here: whether re-encode passes may wait while the ingest works off a backlog.

A pass that runs while a backlog is still being applied encodes the users and items it finds
dirty, and encodes most of them again once their later events are in: in a drained run of
20,000 events, two passes encoded 2,835 user vectors for 1,556 users. Held until the backlog is
in, one pass encodes each of them once, and the ingest has the cores to itself meanwhile.

A worker counts as behind only while a partition of its last batch had more than a full batch
(`ingest.batch_max`) still waiting behind it. A stream the worker keeps up with never leaves that
much, so live freshness does not change; a restart after downtime, a replay or an overload does.
The hold is bounded (`reencode.catchup_hold_s`, in reencoder.py), so a worker that stays behind
still passes that often, and it never holds while backpressure pauses consumption: then the
passes are what lets the ingest go on.
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
        self._behind = False

    def observe(self, lags: Iterable[int]) -> None:
        """The lags behind the batch just applied, one per partition in it (none: caught up)."""
        self._behind = max(lags, default=0) > self._batch_max
        self._metrics.catching_up.set(int(self._behind))

    def holds(self) -> bool:
        """Whether a pass may wait now: behind, and consuming (not paused by backpressure)."""
        return self._behind and self._backpressure.since is None
