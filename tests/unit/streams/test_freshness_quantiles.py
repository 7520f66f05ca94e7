"""Freshness figures read back from /metrics, as the demo prints them."""

from __future__ import annotations

import math
from itertools import pairwise

from prometheus_client import CollectorRegistry, generate_latest

from streams.cli.demo import _freshness_buckets, _samples, _total
from streams.metrics import FRESHNESS_BUCKETS, IngestMetrics, quantile_from_buckets


def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    cumulative = {0.5: 0.0, 1.0: 10.0, 2.0: 20.0, math.inf: 20.0}
    assert quantile_from_buckets(cumulative, 0.5) == 1.0
    assert quantile_from_buckets(cumulative, 0.25) == 0.75
    assert quantile_from_buckets(cumulative, 0.99) == 1.98
    assert math.isnan(quantile_from_buckets({math.inf: 0.0}, 0.5))
    assert quantile_from_buckets({1.0: 0.0, math.inf: 4.0}, 0.5) == 1.0  # +Inf: the last bound


def test_demo_reads_counters_backlog_and_freshness_from_the_exposition() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    for seconds in (0.3, 0.4, 1.2):
        metrics.freshness.labels(kind="users").observe(seconds)
    metrics.dirty_backlog.labels(kind="users").set(4)
    metrics.dirty_backlog.labels(kind="items").set(3)
    metrics.applied.inc(5)
    samples = _samples(generate_latest(metrics.registry).decode())
    assert _total(samples, "events_applied_total") == 5
    assert _total(samples, "dirty_backlog") == 7
    users = _freshness_buckets(samples)["users"]
    assert users[math.inf] == 3 and users[0.5] == 2
    assert 0.25 < quantile_from_buckets(users, 0.5) <= 0.5


def test_the_buckets_tell_apart_freshness_near_the_objectives() -> None:
    """Buckets 0.05 s wide up to 0.5 s and 0.1 s wide up to 3 s (the objectives are 1 s and
    2 s), so a p99 read from the histogram lands within that of the truth."""
    bounds = (0.0, *FRESHNESS_BUCKETS)
    widths = {upper: round(upper - lower, 3) for lower, upper in pairwise(bounds)}
    assert all(width > 0 for width in widths.values())
    assert max(w for upper, w in widths.items() if upper <= 0.5) == 0.05
    assert max(w for upper, w in widths.items() if 0.5 < upper <= 3) == 0.1
    for true_p99, grain in ((0.32, 0.05), (1.1, 0.1), (1.9, 0.1), (2.75, 0.1)):
        metrics = IngestMetrics(CollectorRegistry())
        for _ in range(99):
            metrics.freshness.labels(kind="items").observe(0.01)
        metrics.freshness.labels(kind="items").observe(true_p99)
        samples = _samples(generate_latest(metrics.registry).decode())
        read = quantile_from_buckets(_freshness_buckets(samples)["items"], 0.995)
        assert abs(read - true_p99) <= grain, (true_p99, read)
