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
from typing import Any

import pytest

from streams.devtools.bench.verdicts import MIN_CEILING_SAMPLES
from streams.settings import Settings
from streams.vectors.rules import STAGES
from tests.support.harness import REPO
from tests.support.services import Services

pytestmark = pytest.mark.integration

# The bench runs in a process of its own, as `sagestream bench` does: it starts event loops, a
# Faust app and child processes, none of which should outlive it inside the test session.
RUN = """
import json, sys
from pathlib import Path
from streams.devtools.bench.e2e import E2EConfig, run_e2e_bench
from streams.devtools.bench.verdicts import MIN_CEILING_SAMPLES
from streams.settings import Settings
png, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = E2EConfig(events=600, load_seconds=5, png=png, users=120, items=300, qdrant="server")
out.write_text(json.dumps(run_e2e_bench(Settings.load(), cfg)))
"""


def assert_cpu_by_role(figures: dict[str, Any], measured: set[str], source: str) -> None:
    """Every role has a figure or is named unmeasured; on the native stack the services are
    this host's processes, so they must be measured."""
    cores = figures["cores"]
    if source == "native":
        measured = measured | {"redis", "kafka", "qdrant"}
    assert all(cores[role] is not None and cores[role] >= 0 for role in measured), figures
    assert set(figures["not_measured"]) == {role for role, c in cores.items() if c is None}
    assert cores["worker"] > 0 and cores["machine"] > 0 and figures["system_cores"] > 0
    assert figures["system_core_ms_per_event"] > 0


def test_e2e_bench_reports_consistent_figures(
    make_settings: Callable[..., Settings], services: Services, tmp_path: Path
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
    assert_cpu_by_role(result["sagestream_cpu"], {"worker"}, services.source)

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


GOALS = """
import json, sys
from pathlib import Path
from streams.cli.bench_goals import report_goals
from streams.devtools.bench.goals import GoalsConfig, run_goals_bench
from streams.devtools.bench.live import LiveConfig
from streams.devtools.bench.verdicts import MIN_CEILING_SAMPLES
from streams.settings import Settings
png, out = Path(sys.argv[1]), Path(sys.argv[2])
live = LiveConfig(rates=(100, 200), bisect=1, warmup_s=2, steady_s=4, users=120, items=300)
cfg = GoalsConfig(
    events=600, memory_events=1200, rss_every=100, repeats=2, live=live, naive_events=100, png=png
)
result = run_goals_bench(Settings.load(), cfg)
report_goals(result)
out.write_text(json.dumps(result))
"""


def test_goals_bench_reports_every_figure_with_a_verdict(
    make_settings: Callable[..., Settings], services: Services, tmp_path: Path
) -> None:
    png, out = tmp_path / "goals.png", tmp_path / "goals.json"
    env = dict(os.environ, **make_settings().to_env())
    done = subprocess.run(
        [sys.executable, "-c", GOALS, str(png), str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    # The stepped search: in order until the first failure, then one halving; the figure is
    # the highest step that passed, and a pass has both kinds' samples and a judged backlog.
    steps = result["live"]["steps"]
    offered = [step["offered_eps"] for step in steps]
    assert offered[:1] == [100] and 1 <= len(steps) <= 3
    passed = [step["offered_eps"] for step in steps if step["passed"]]
    assert result["live"]["sustained_eps"] == (max(passed) if passed else None)
    for step in steps:
        assert step["passed"] == (not step["reasons"])
        assert step["achieved_eps"] > 0 and step["backlog"]["samples"] >= 3
        if step["passed"]:
            assert all(step["kinds"][kind]["samples"] > 0 for kind in ("users", "items"))
        assert_cpu_by_role(step["cpu"], {"worker", "producer"}, services.source)
        # the worker keeps lists between passes, so a step's passes read some in full and
        # count what they kept
        assert step["passes"]["lists_sent"] > 0 and step["passes"]["lists_kept"] >= 0
        # the passes ending in the window are some of the step's, and a pass that gave
        # freshness samples read marks and took time
        load = step["load"]
        assert 0 <= load["passes"] <= step["passes"]["count"]
        if step["passed"]:
            assert load["passes"] > 0 and load["marks"] >= load["passes"]
            assert load["busy"] > 0 and load["ms_per_mark"] > 0
            # a mark's cost split by the steps of a pass, in their order; a pass with users
            # and items read, encoded and upserted them, and the steps never overlap
            by_stage = load["ms_per_mark_by_stage"]
            assert list(by_stage) == [s for s in STAGES if s != "shadow"]  # no switch here
            assert sum(by_stage.values()) <= load["ms_per_mark"] + 0.005  # each rounded to 0.001

    ingest, drained = result["ingest"], result["drained"]
    # ingest runs follow --repeats; the ceiling is read at least MIN_CEILING_SAMPLES times and
    # is the fastest read, so one stalled read cannot lower it
    assert len(ingest["runs"]) == 2
    assert len(ingest["ceiling_runs"]) == max(2, MIN_CEILING_SAMPLES)
    assert ingest["ceiling_eps"] == max(ingest["ceiling_runs"])
    assert ingest["share"] > 0 and drained["share"] > 0
    assert_cpu_by_role(ingest["cpu"], {"worker"}, services.source)
    assert_cpu_by_role(result["throughput"]["sagestream_cpu"], {"worker"}, services.source)
    assert math.isclose(drained["speedup"], drained["eps"] / drained["naive_eps"], rel_tol=0.02)

    memory = result["memory"]
    assert memory["events"] >= 1200 and memory["rss"]["samples"] == len(memory["rss_samples"])
    assert memory["rss"]["max_bytes"] >= memory["rss"]["first_bytes"] > 0
    redis = memory["redis"]
    assert 0 < redis["users"] <= 120 and 0 < redis["items"] <= 300
    assert redis["bytes_per_user"] > 0 and redis["bytes_per_item"] > 0

    figures = {goal["figure"]: goal["status"] for goal in result["goals"]}
    assert len(figures) == 9
    assert set(figures.values()) <= {"met", "not met", "not measured", "reported"}
    assert figures["worker RSS"] == "not measured"  # 1,200 events, not the goal's 1,000,000
    # the drained run's fan-out leaves no user behind its items (the default bounds are far
    # above this run's size), and every user of the run was checked
    fanout = result["fanout"]
    assert fanout["behind"]["users_checked"] > 0 and fanout["behind"]["without_item_vectors"] == 0
    assert figures["users behind their items (drained)"] == "met", fanout
    for line in ("sustainable live rate", "ingest / raw consume ceiling", "worker RSS", "cores:",
                 "neighbour lists", "re-encoder", "a mark by step (ms)"):  # fmt: skip
        assert line in done.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    for picture in ("goals-rss.png", "goals-cpu.png"):
        assert (tmp_path / picture).read_bytes().startswith(b"\x89PNG")
