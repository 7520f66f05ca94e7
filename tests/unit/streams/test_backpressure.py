"""Backpressure: why consumption pauses (store, updater, backlog), hysteresis, gauge and `since`."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from streams.metrics import IngestMetrics
from streams.runtimes.backpressure import Backpressure

PAUSED = "sagestream_consumption_paused"


class Flag:
    """A probe the test turns on and off."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self) -> bool:
        return self.on


def make(max_backlog: int = 100) -> tuple[Backpressure, CollectorRegistry]:
    registry = CollectorRegistry()
    return Backpressure(max_backlog, IngestMetrics(registry)), registry


def gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value(PAUSED)


def watched(max_backlog: int = 100) -> tuple[Backpressure, CollectorRegistry, Flag, Flag]:
    bp, registry = make(max_backlog)
    store, updater = Flag(), Flag()
    bp.watch(store, updater)
    return bp, registry, store, updater


def test_flowing_at_start() -> None:
    bp, registry, _, _ = watched()
    assert bp.reasons == ()
    assert bp.check() is False
    assert bp.since is None
    assert gauge(registry) == 0


@pytest.mark.parametrize("reason", ["store", "updater"])
def test_a_failing_dependency_pauses_until_it_recovers(reason: str) -> None:
    bp, registry, store, updater = watched()
    flag = store if reason == "store" else updater
    flag.on = True
    assert bp.reasons == (reason,)
    assert bp.check() is True
    assert gauge(registry) == 1
    assert bp.since is not None
    flag.on = False
    assert not bp.reasons
    assert bp.check() is False
    assert gauge(registry) == 0
    assert bp.since is None


def test_every_reason_is_reported_in_order() -> None:
    bp, _, store, updater = watched()
    store.on = updater.on = True
    bp.observe_backlog(101)
    assert bp.reasons == ("store", "updater", "backlog")


def test_backlog_hysteresis() -> None:
    bp, registry, _, _ = watched(max_backlog=100)
    for waiting in (0, 60, 100):  # up to the bound: keeps flowing
        bp.observe_backlog(waiting)
        assert bp.check() is False
    bp.observe_backlog(101)  # over the bound: pauses
    assert bp.reasons == ("backlog",)
    assert bp.check() is True
    assert gauge(registry) == 1
    for waiting in (100, 75, 50):  # between half and max (inclusive): stays paused
        bp.observe_backlog(waiting)
        assert bp.check() is True, waiting
    bp.observe_backlog(49)  # under half: resumes
    assert not bp.reasons
    assert bp.check() is False
    assert gauge(registry) == 0
    for waiting in (50, 99, 100):  # between half and max while flowing: keeps flowing
        bp.observe_backlog(waiting)
        assert bp.check() is False, waiting


def test_since_is_set_once_per_pause_and_cleared_on_resume() -> None:
    bp, registry, store, _ = watched()
    store.on = True
    bp.check()
    first = bp.since
    assert first is not None
    bp.observe_backlog(1000)  # another reason joins: still the same pause
    store.on = False  # the first reason clears: still paused for the backlog
    assert bp.check() is True
    assert bp.since == first
    assert gauge(registry) == 1
    bp.observe_backlog(0)
    assert bp.check() is False
    assert bp.since is None
    assert gauge(registry) == 0


def test_the_gauge_goes_one_then_zero_for_each_pause() -> None:
    bp, registry, _, updater = watched()
    seen = []
    for on in (True, True, False, False, True, False):
        updater.on = on
        bp.check()
        seen.append(gauge(registry))
    assert seen == [1, 1, 0, 0, 1, 0]


def test_reasons_are_read_live_but_only_check_changes_the_gauge() -> None:
    bp, registry, store, _ = watched()
    store.on = True
    assert bp.reasons == ("store",)
    assert gauge(registry) == 0  # nothing asked check() yet
    assert bp.since is None


def test_a_worker_without_an_updater_pauses_only_for_backlog() -> None:
    bp, registry = make(max_backlog=10)  # watch() never called: no model, no vector store
    assert not bp.reasons
    assert bp.check() is False
    bp.observe_backlog(11)
    assert bp.reasons == ("backlog",)
    assert bp.check() is True
    assert gauge(registry) == 1
    bp.observe_backlog(4)
    assert bp.check() is False
    assert gauge(registry) == 0


def test_watch_replaces_the_probes() -> None:
    bp, _ = make()
    bp.watch(lambda: True, lambda: False)
    assert bp.reasons == ("store",)
    bp.watch(lambda: False, lambda: True)
    assert bp.reasons == ("updater",)


def test_the_smallest_bound_resumes_once_nothing_waits() -> None:
    """max_backlog=1 is allowed; half of it rounded down (0) once kept a pause for ever."""
    bp, _ = make(max_backlog=1)
    bp.observe_backlog(2)
    assert bp.check() is True
    bp.observe_backlog(0)
    assert bp.check() is False
