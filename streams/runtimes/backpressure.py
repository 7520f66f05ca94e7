"""Backpressure, owned here: why consumption is paused, since when, and what resumes it.

Consumption pauses for any of three reasons and resumes when none is left:

* ``store``: the vector store's last call failed (`VectorStore.failing_since`); a successful call
  clears it;
* ``updater``: a re-encode pass failed on an unreachable dependency; a successful pass clears it;
* ``backlog``: more dirty marks wait than `max_backlog` (read by the runtime's tick every few
  seconds); it clears once fewer than half the bound wait, so a worker near the bound does not
  flap.

While paused, Kafka keeps what is not yet consumed and the worker's memory stays bounded. Both
runtimes ask `check()` before taking the next batch; the batch loop pauses its partitions, the
Faust agent holds the batch it has (Faust's bounded buffer then stops its fetcher).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streams.metrics import IngestMetrics

log = logging.getLogger(__name__)
Probe = Callable[[], bool]


def _never() -> bool:
    return False


class Backpressure:
    def __init__(self, max_backlog: int, metrics: IngestMetrics) -> None:
        self._max_backlog = max_backlog
        self._metrics = metrics
        self._store_failing: Probe = _never
        self._updater_failing: Probe = _never
        self._over_backlog = False
        self.since: float | None = None  # monotonic time consumption paused, None while flowing

    def watch(self, store_failing: Probe, updater_failing: Probe) -> None:
        """Follow a vector updater's health (a worker without a model has none to follow)."""
        self._store_failing, self._updater_failing = store_failing, updater_failing

    def observe_backlog(self, waiting: int) -> None:
        """The dirty backlog as last counted: over the bound pauses, under half resumes."""
        if waiting > self._max_backlog:
            self._over_backlog = True
        elif 2 * waiting < self._max_backlog:  # not `// 2`: a bound of 1 must resume at 0
            self._over_backlog = False

    @property
    def reasons(self) -> tuple[str, ...]:
        found = (
            ("store", self._store_failing()),
            ("updater", self._updater_failing()),
            ("backlog", self._over_backlog),
        )
        return tuple(name for name, on in found if on)

    def check(self) -> bool:
        """Whether to hold consumption now; logs and sets the gauge when that changes."""
        reasons = self.reasons
        paused = bool(reasons)
        if paused and self.since is None:
            self.since = time.monotonic()
            log.warning("consumption paused: vector updates are behind (%s)", ", ".join(reasons))
            self._metrics.paused.set(1)
        elif not paused and self.since is not None:
            log.warning("consumption resumed after %.1fs", time.monotonic() - self.since)
            self.since = None
            self._metrics.paused.set(0)
        return paused
