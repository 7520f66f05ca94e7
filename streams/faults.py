"""Crash hooks for the reliability tests, off unless settings name a point.

A hook fires on the n-th time the pipeline passes its point: `kill` is a SIGKILL of the worker
itself (a power cut: nothing after it runs), `raise` is an unexpected exception (a bug), which
must never let the runtime ack or commit the batch.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TypeVar

from qdrant_client import QdrantClient

from state import VectorStore, VectorStoreConfig
from streams.settings import FaultSettings

T = TypeVar("T")

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by a `raise` hook; nothing may treat it as transient."""


class Faults:
    def __init__(self, settings: FaultSettings) -> None:
        self._settings = settings
        self._passes = 0

    def at(self, point: str) -> None:
        """Call at a named point; fires on the configured pass, otherwise does nothing."""
        if self._settings.point != point:
            return
        self._passes += 1
        if self._passes != self._settings.after:
            return
        log.warning(
            "fault injected at %s (pass %d): %s", point, self._passes, self._settings.action
        )
        if self._settings.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(f"injected at {point}")


class OutageStore(VectorStore):
    """A vector store that is unreachable for `outage_s` from its first upsert (scenario 6).

    The failure is raised inside the store's own retry loop as a refused connection, so the
    retries, the `VectorStoreUnavailable` deadline and the worker's pause all run for real.
    """

    def __init__(self, config: VectorStoreConfig, outage_s: float) -> None:
        super().__init__(config)
        self._outage_s = outage_s
        self._began: float | None = None

    def _call(self, what: str, action: Callable[[QdrantClient], T]) -> T:
        def maybe_down(client: QdrantClient) -> T:
            now = time.monotonic()
            if self._began is None and what.startswith("upsert"):
                self._began = now
                log.warning("fault injected: vector store down for %.1fs", self._outage_s)
            if self._began is not None and now - self._began < self._outage_s:
                raise ConnectionRefusedError(f"injected outage during {what}")
            return action(client)

        return super()._call(what, maybe_down)
