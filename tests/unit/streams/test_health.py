"""Liveness and readiness as a probe sees them, on a clock the test moves."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from streams.health import Health, start_heartbeat
from streams.metrics import IngestMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_starting_worker_is_live_but_not_ready_until_it_is_wired() -> None:
    clock = Clock()
    health = Health(stale_after_s=30, startup_s=300, clock=clock)
    assert health.live() == (True, "starting")
    assert health.ready() == (False, "starting")
    health.started(lambda: {"model": "v0001"})
    assert health.live() == (True, "alive")
    assert health.ready() == (True, "ready")


def test_a_worker_that_never_finishes_starting_is_not_live_after_the_startup_budget() -> None:
    clock = Clock()
    health = Health(stale_after_s=30, startup_s=300, clock=clock)
    clock.now += 301
    live, why = health.live()
    assert not live and why == "not started after 301s"
    assert health.ready()[0] is False


def test_a_silent_event_loop_is_neither_live_nor_ready_and_a_beat_revives_it() -> None:
    clock = Clock()
    health = Health(stale_after_s=30, startup_s=300, clock=clock)
    health.started()
    clock.now += 31
    assert health.live() == (False, "event loop silent for 31s")
    assert health.ready() == (False, "event loop silent for 31s")
    health.beat()
    assert health.ready() == (True, "ready")


def test_a_stopping_worker_is_live_but_no_longer_ready() -> None:
    health = Health(clock=Clock())
    health.started()
    health.stopping()
    assert health.live()[0] is True
    assert health.ready() == (False, "stopping")


async def test_the_heartbeat_beats_on_the_running_loop_until_stopped() -> None:
    clock = Clock()
    health = Health(stale_after_s=30, startup_s=300, clock=clock)
    health.started()
    clock.now += 60
    assert health.live()[0] is False
    stop = start_heartbeat(health)
    await asyncio.sleep(0)  # the task runs its first beat
    assert health.live() == (True, "alive")
    stop()
    await asyncio.sleep(0)
    clock.now += 60
    assert health.live()[0] is False  # cancelled: no beat since


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as page:
            return page.status, page.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_the_metrics_port_serves_both_probes_beside_the_metrics() -> None:
    health = Health(clock=Clock())
    metrics = IngestMetrics(CollectorRegistry(), health)
    port = metrics.serve("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/healthz") == (200, '{"status": "starting"}\n')
    code, body = get(f"{base}/readyz")
    assert code == 503 and json.loads(body) == {"status": "starting"}

    health.started(lambda: {"model": "v0002", "paused": ["backlog"]})
    code, body = get(f"{base}/readyz")
    assert code == 200
    assert json.loads(body) == {"status": "ready", "model": "v0002", "paused": ["backlog"]}
    code, body = get(f"{base}/metrics")
    assert code == 200 and "sagestream_events_applied_total" in body
