"""The end-to-end bench on a tiny stream: every figure is there and consistent (no timing goals)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.bench_e2e import E2EConfig, run_e2e_bench
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_e2e_bench_reports_consistent_figures(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    png = tmp_path / "freshness.png"
    cfg = E2EConfig(events=600, load_seconds=5, png=png, users=120, items=300, qdrant="disk")
    result = run_e2e_bench(make_settings(), cfg)

    eps = result["eps"]
    assert all(eps[path] > 0 for path in ("ceiling", "naive", "sagestream")), eps
    for name, value in result["ratios"].items():
        top, bottom = name.split("/")
        assert math.isclose(value, eps[top] / eps[bottom], rel_tol=0.02), (name, value, eps)
    assert result["naive_events"] == 600

    # The bounded run drained: every engaged user and item has a vector, no mark is left.
    assert result["marks_left"] == 0
    assert result["vectors"]["sagestream"] == result["distinct"]
    assert all(count > 0 for count in result["vectors"]["naive"].values())

    fresh = result["freshness"]
    assert fresh["events"] > 0 and fresh["achieved_eps"] > 0
    for kind in ("users", "items"):
        figures = fresh["kinds"][kind]
        assert figures["samples"] > 0, kind
        assert 0 <= figures["p50_s"] <= figures["p90_s"] <= figures["p99_s"] <= figures["max_s"]
    assert {goal["met"] for goal in result["goals"].values()} <= {True, False}
    assert png.read_bytes().startswith(b"\x89PNG")
