"""The end-to-end bench on a tiny stream, both paths writing to the Qdrant server: every figure
is there and consistent (no timing goals)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.support.harness import REPO

pytestmark = pytest.mark.integration

# The bench runs in a process of its own, as `sagestream bench` does: it starts event loops, a
# Faust app and child processes, none of which should outlive it inside the test session.
RUN = """
import json, sys
from pathlib import Path
from streams.devtools.bench.e2e import E2EConfig, run_e2e_bench
from streams.settings import Settings
png, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = E2EConfig(events=600, load_seconds=5, png=png, users=120, items=300, qdrant="server")
out.write_text(json.dumps(run_e2e_bench(Settings.load(), cfg)))
"""


def test_e2e_bench_reports_consistent_figures(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    png, out = tmp_path / "freshness.png", tmp_path / "result.json"
    env = dict(os.environ, **make_settings().to_env())
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(png), str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

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
