"""Crash hooks for the reliability tests, off unless settings name a point.

A hook fires on the n-th time the pipeline passes its point: `kill` is a SIGKILL of the worker
itself (a power cut: nothing after it runs), `raise` is an unexpected exception (a bug), which
must never let the runtime ack or commit the batch.
"""

from __future__ import annotations

import logging
import os
import signal

from streams.settings import FaultSettings

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
