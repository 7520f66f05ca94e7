"""Real data onto the topic in time order, and the worker's metrics after a run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable

import pytest

from streams.devtools.generate import GeneratorConfig, generate_events, malformed_payloads
from streams.devtools.produce import produce_engagements, produce_raw
from streams.metrics import IngestMetrics
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.limits import RunLimits
from streams.settings import Settings
from streams.wire.events import Engagement, decode_engagement
from streams.wire.topics import ensure_topics
from tests.support.datasets import ML100K
from tests.support.harness import REPO, read_topic

pytestmark = pytest.mark.integration


def test_replay_puts_movielens_on_the_topic_in_time_order(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "--data", str(ML100K),
         "--format", "movielens", "--limit", "3000"],
        env=dict(os.environ, **settings.to_env()), cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replayed 3000 events" in done.stdout
    records = read_topic(settings, settings.topics.engagements)
    assert len(records) == 3000
    events = [decode_engagement(r.value) for r in records]
    assert all(isinstance(e, Engagement) for e in events)
    for partition in {r.partition for r in records}:
        times = [e.ts for r, e in zip(records, events, strict=True) if r.partition == partition]
        assert times == sorted(times)
    assert len(read_topic(settings, settings.topics.items)) == 1682


def sample(metrics: IngestMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


async def test_metrics_count_what_the_worker_did(
    make_settings: Callable[..., Settings], unused_tcp_port: int
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    cfg = GeneratorConfig(users=50, items=100, events=500, seed=2)
    produce_engagements(settings, generate_events(cfg))
    produce_raw(
        settings, [(b"x", p) for p, _ in malformed_payloads(1, 12)], settings.topics.engagements
    )
    metrics = IngestMetrics()
    stats = await BatchRuntime(settings, metrics, RunLimits(max_events=512)).run()
    assert stats.events == 512
    topic = settings.topics.engagements
    assert sample(metrics, "sagestream_events_consumed_total", topic=topic) == 512
    assert sample(metrics, "sagestream_events_applied_total") == 500
    assert sample(metrics, "sagestream_events_dead_lettered_total", topic=topic) == 12
    invalid = sum(
        s.value for m in metrics.registry.collect() if m.name == "sagestream_events_invalid"
        for s in m.samples if s.name.endswith("_total")
    )  # fmt: skip
    assert invalid == 12
    assert sample(metrics, "sagestream_batch_size_count") >= 1
    assert sample(metrics, "sagestream_state_apply_seconds_count") >= 1
    lags = [
        sample(metrics, "sagestream_consumer_lag", topic=topic, partition=str(p)) for p in range(4)
    ]
    assert lags == [0, 0, 0, 0]

    metrics.serve("127.0.0.1", unused_tcp_port)
    url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert "sagestream_events_applied_total 500.0" in body
    assert 'sagestream_events_invalid_total{reason="bad_json"}' in body
