"""Bounded run modes, shared by both runtimes, so tests and the CLI are deterministic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunLimits:
    max_events: int | None = None  # stop after this many records
    until_idle_s: float | None = None  # burst mode: stop once no record arrived for this long
