"""The one retry policy of the worker: every Redis, Kafka and Qdrant call waits the same way.

Capped exponential backoff with jitter (each wait drawn from the upper half of its step, so many
workers that failed together do not retry together). Callers say which errors are transient and
whether to give up after a deadline: the ingest path never gives up (waiting is the
backpressure), the vector store gives up after ``give_up_after_s`` so the worker can pause
consumption instead of blocking inside one call. It lives in `state` because both the state
clients and the stream processors use it, and `state` never imports `streams`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

Transient = Callable[[BaseException], bool]
OnRetry = Callable[[BaseException, int, float], None]  # (error, attempt, wait in seconds)


class Stopped(Exception):
    """The caller's stop event was set while waiting to retry; nothing was done."""


class GaveUp(Exception):
    """A transient error outlasted the policy's deadline; `__cause__` is the last error."""

    def __init__(self, what: str, seconds: float, attempts: int) -> None:
        super().__init__(f"{what}: still failing after {seconds:.1f}s ({attempts} attempts)")
        self.seconds, self.attempts = seconds, attempts


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.2
    max_s: float = 5.0
    give_up_after_s: float | None = None  # None: retry for as long as it takes

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.max_s >= self.initial_s):
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self}")
        if self.give_up_after_s is not None and self.give_up_after_s <= 0:
            raise ValueError("give_up_after_s must be positive (or None)")

    def wait(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number `attempt` (0-based): jittered, never above `max_s`."""
        step = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 62))
        return (rng or random).uniform(step / 2, step)

    def with_deadline(self, give_up_after_s: float | None) -> Backoff:
        return Backoff(self.initial_s, self.max_s, give_up_after_s)


class _Attempts:
    """The bookkeeping both the sync and the async loop share: count, deadline, the next wait."""

    def __init__(self, backoff: Backoff, what: str, on_retry: OnRetry | None) -> None:
        self.backoff, self.what, self.on_retry = backoff, what, on_retry
        self.started = time.monotonic()
        self.attempt = 0

    def next_wait(self, error: BaseException) -> float:
        """How long to wait before trying again; raises `GaveUp` once the deadline has passed."""
        elapsed = time.monotonic() - self.started
        wait = self.backoff.wait(self.attempt)
        deadline = self.backoff.give_up_after_s
        if deadline is not None:
            left = deadline - elapsed
            if left <= 0:
                raise GaveUp(self.what, elapsed, self.attempt + 1) from error
            wait = min(wait, left)
        if self.on_retry is not None:
            self.on_retry(error, self.attempt, wait)
        log.warning("%s failed (%r); retry %d in %.2fs", self.what, error, self.attempt, wait)
        self.attempt += 1
        return wait


def retry_sync(
    call: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    transient: Transient,
    on_retry: OnRetry | None = None,
) -> T:
    """`call()`, retried while it raises a transient error; anything else propagates at once."""
    attempts = _Attempts(backoff, what, on_retry)
    while True:
        try:
            return call()
        except Exception as error:
            if not transient(error):
                raise
            time.sleep(attempts.next_wait(error))


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff,
    transient: Transient,
    on_retry: OnRetry | None = None,
    stop: asyncio.Event | None = None,
) -> T:
    """`await call()`, retried while it raises a transient error.

    With `stop`, a wait ends early when the event is set and `Stopped` is raised: the caller is
    shutting down and reads the work again on restart (nothing past it was committed).
    """
    attempts = _Attempts(backoff, what, on_retry)
    while True:
        try:
            return await call()
        except Exception as error:
            if not transient(error):
                raise
            wait = attempts.next_wait(error)
        if stop is None:
            await asyncio.sleep(wait)
            continue
        try:
            await asyncio.wait_for(stop.wait(), wait)
        except TimeoutError:
            continue
        raise Stopped(what)


def of_types(*types: type[BaseException]) -> Transient:
    """A `transient` predicate for a fixed set of exception types."""
    return lambda error: isinstance(error, types)
