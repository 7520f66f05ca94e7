"""The worker's periodic tick: a backlog count that fails on a dropped connection is skipped
and counted, never the end of the worker; other errors still surface."""

from __future__ import annotations

from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from state import RedisState
from state.exceptions import StateError, StateUnavailableError
from streams.metrics import IngestMetrics
from streams.runtimes.backpressure import Backpressure
from streams.runtimes.catchup import CatchUp
from streams.runtimes.wiring import Worker


class Backlog:
    def __init__(self, *replies: dict[str, int] | BaseException) -> None:
        self.replies = list(replies)

    async def dirty_backlog(self) -> dict[str, int]:
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def worker(state: Backlog, metrics: IngestMetrics) -> Worker:
    backpressure = Backpressure(max_backlog=10, metrics=metrics)
    catch_up = CatchUp(100, backpressure, metrics)
    none: Any = None
    return Worker(none, cast(RedisState, state), none, backpressure, catch_up, None, metrics)


async def test_a_dropped_connection_skips_one_count_and_the_next_tick_counts() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    dropped = StateUnavailableError("dirty_backlog: redis unavailable: Connection closed")
    state = Backlog({"users": 30, "items": 0}, dropped, {"users": 2, "items": 1})
    ticking = worker(state, metrics)
    value = metrics.registry.get_sample_value

    await ticking.tick()
    assert value("sagestream_dirty_backlog", {"kind": "users"}) == 30
    assert ticking.backpressure.check()  # over the bound: paused
    await ticking.tick()  # the dropped connection: nothing changes, one retry counted
    assert value("sagestream_transient_retries_total", {"step": "backlog"}) == 1
    assert ticking.backpressure.check()
    await ticking.tick()
    assert value("sagestream_dirty_backlog", {"kind": "items"}) == 1
    assert not ticking.backpressure.check()


async def test_an_error_that_will_not_clear_still_stops_the_worker() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    with pytest.raises(StateError, match="NOPERM"):
        await worker(Backlog(StateError("dirty_backlog: NOPERM")), metrics).tick()


class Catalog:
    active_at: float | None = None


def test_burst_mode_counts_catalog_records_as_activity() -> None:
    """`--until-idle` measures quiet from the later of the two consumers' last records."""
    quiet = worker(Backlog(), IngestMetrics(CollectorRegistry()))
    assert quiet.quiet_since(100.0) == 100.0  # no catalog consumer (tests, tools)
    quiet.catalog = cast(Any, Catalog())
    assert quiet.quiet_since(100.0) == 100.0  # the catalog read nothing yet
    quiet.catalog.active_at = 250.0  # type: ignore[union-attr]
    assert quiet.quiet_since(100.0) == 250.0  # a late catalog share keeps the worker up
    assert quiet.quiet_since(300.0) == 300.0
