"""The judgements of `sagestream bench --stage goals` (streams/devtools/bench/verdicts.py) and
the Redis key grouping of its memory figure: no services."""

from __future__ import annotations

from typing import Any

import pytest

from streams.cli.bench_goals import reencoder_busy, stage_split
from streams.devtools.bench.live import at_rate
from streams.devtools.bench.memory import classify
from streams.devtools.bench.verdicts import (
    StepSearch,
    assess,
    backlog_growth,
    ceiling_of,
    format_goals,
    reencoder_load,
    rss_flatness,
    step_verdict,
)

RATES = (500.0, 1000.0, 2000.0, 3000.0)


def search(outcomes: dict[float, bool], bisect: int = 1) -> tuple[list[float], float | None]:
    """Run a search whose steps pass as `outcomes` says; the rates tried and the figure."""
    steps = StepSearch(RATES, bisect)
    tried = []
    while (rate := steps.next_rate()) is not None:
        tried.append(rate)
        steps.record(rate, outcomes[rate])
    return tried, steps.best


def test_the_search_climbs_until_the_first_failure_then_bisects_once() -> None:
    outcomes = {500.0: True, 1000.0: True, 2000.0: False, 1500.0: True, 3000.0: True}
    assert search(outcomes) == ([500.0, 1000.0, 2000.0, 1500.0], 1500.0)


def test_a_failed_bisection_keeps_the_last_pass() -> None:
    outcomes = {500.0: True, 1000.0: True, 2000.0: False, 1500.0: False}
    assert search(outcomes) == ([500.0, 1000.0, 2000.0, 1500.0], 1000.0)


def test_two_halvings_narrow_the_gap() -> None:
    outcomes = {500.0: True, 1000.0: True, 2000.0: False, 1500.0: True, 1750.0: False}
    assert search(outcomes, bisect=2) == ([500.0, 1000.0, 2000.0, 1500.0, 1750.0], 1500.0)


def test_every_step_passing_reports_the_highest_rate() -> None:
    assert search(dict.fromkeys(RATES, True)) == (list(RATES), 3000.0)


def test_a_first_failure_bisects_towards_zero_and_may_report_none() -> None:
    assert search({500.0: False, 250.0: False}) == ([500.0, 250.0], None)
    assert search({500.0: False, 250.0: True}, bisect=0) == ([500.0], None)


def test_rates_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        StepSearch((1000.0, 500.0))


def test_backlog_growth_is_the_slope_against_the_offered_rate() -> None:
    steady = [(t, 1000 + (50 if t % 2 else -50)) for t in range(60)]  # noisy, level
    assert backlog_growth(steady, 1000.0)["growing"] is False
    growing = [(t, 1000 + 40 * t) for t in range(60)]  # gains 4% of 1,000 events/s
    judged = backlog_growth(growing, 1000.0)
    assert judged["growing"] is True and judged["slope_per_s"] == pytest.approx(40.0)
    assert backlog_growth(growing, 5000.0)["growing"] is False  # under 2% of 5,000
    draining = [(t, 10_000 - 100 * t) for t in range(60)]
    assert backlog_growth(draining, 1000.0)["growing"] is False
    assert backlog_growth(growing[:2], 1000.0)["growing"] is None


def test_one_spike_in_a_level_backlog_is_not_growth() -> None:
    """A slow pass late in the window (what a 10 s step at 400 events/s showed: 195 ... 506 ...
    192) tilts a least-squares line (+14/s, over the 8/s limit) but not the median of pairwise
    slopes."""
    level = [195, 180, 210, 190, 200, 185, 300, 480, 506, 190, 192]
    judged = backlog_growth(list(enumerate(level)), 400.0)
    assert judged["growing"] is False and abs(judged["slope_per_s"]) < 8


def test_a_step_passes_only_with_both_kinds_fresh_a_level_backlog_and_the_load_offered() -> None:
    fresh = {"users": 1.2, "items": 1.9}
    assert step_verdict(1000.0, 990.0, fresh, growing=False) == []
    assert step_verdict(1000.0, 990.0, {"users": 1.2, "items": 2.1}, False) == [
        "items p99 2.10 s > 2 s"
    ]
    assert step_verdict(1000.0, 990.0, fresh, growing=True) == ["the backlog grew"]
    assert step_verdict(1000.0, 990.0, fresh, growing=None)
    assert step_verdict(1000.0, 900.0, fresh, growing=False)  # the producer fell short
    assert step_verdict(1000.0, 990.0, {"users": None, "items": 1.0}, False)


def test_reencoder_load_is_the_windows_share_in_passes_and_their_cost_a_mark() -> None:
    # 120 passes took 58.5 s of a 60 s window and read 90,000 marks
    load = reencoder_load(passes=120, marks=90_000, pass_s=58.5, window_s=60.0)
    assert load["busy"] == 0.975
    assert load["marks_per_s"] == 1500.0
    assert load["ms_per_mark"] == 0.65
    line = reencoder_busy(load)
    assert line == "re-encoder busy 98% of the window: 120 passes, 1,500 marks/s at 0.65 ms a mark"


def test_a_marks_cost_is_split_by_the_step_of_a_pass_it_was_spent_in() -> None:
    stages = {"drain": 0.9, "read": 27.0, "upsert": 9.0}
    load = reencoder_load(passes=120, marks=90_000, pass_s=58.5, window_s=60.0, stages_s=stages)
    assert load["ms_per_mark_by_stage"] == {"drain": 0.01, "read": 0.3, "upsert": 0.1}
    assert stage_split(load) == "a mark by step (ms): drain 0.010, read 0.300, upsert 0.100"
    assert stage_split(reencoder_load(0, 0, 0.0, 60.0, stages)) == ""


def test_a_window_without_passes_has_no_cost_a_mark() -> None:
    load = reencoder_load(passes=0, marks=0, pass_s=0.0, window_s=60.0)
    assert load["busy"] == 0.0 and load["marks_per_s"] == 0.0 and load["ms_per_mark"] is None
    assert reencoder_busy(load) == "re-encoder: no pass ended in the window"


def test_a_stalled_ceiling_read_does_not_lower_the_ceiling() -> None:
    """A run once judged the ingest share 0.175 `met` on one ceiling read of 54k events/s, where
    this machine reads about 190k: the ceiling is the fastest read, not a typical one."""
    assert ceiling_of([53_987.0, 190_500.0, 188_200.0]) == 190_500.0
    assert ceiling_of([120_000.0]) == 120_000.0
    with pytest.raises(ValueError, match="no ceiling samples"):
        ceiling_of([])


def test_rss_is_flat_within_five_percent_of_the_second_quarter() -> None:
    level = [(e, 200 * 2**20 + (e % 3) * 2**20) for e in range(0, 100_001, 2_500)]
    judged = rss_flatness(level)
    assert judged["flat"] is True and judged["max_bytes"] == 202 * 2**20
    growing = [(e, 200 * 2**20 + e * 500) for e in range(0, 100_001, 2_500)]  # +50 MB by the end
    judged = rss_flatness(growing)
    assert judged["flat"] is False
    assert judged["second_half_slope_bytes_per_100k_events"] == 500 * 100_000
    assert rss_flatness([(0, 1), (4000, 2)])["flat"] is None  # no second-quarter sample
    assert rss_flatness([])["flat"] is None


def result(**changes: Any) -> dict[str, Any]:
    step = {"offered_eps": 1000.0, "kinds": {"users": {"p99_s": 0.8}, "items": {"p99_s": 0.9}}}
    base: dict[str, Any] = {
        "live": {"sustained_eps": 6000.0, "at_goal_rate": at_rate([step], 1000.0)},
        "ingest": {"share": 0.2, "eps": 30_000, "ceiling_eps": 150_000},
        "drained": {"share": 0.12, "speedup": 60.0, "eps": 18_000, "naive_eps": 300},
        "fanout": {"reencodes": 120, "users_behind_after_drain": 0},
        "memory": {
            "events": 1_000_000,
            "rss": {
                "samples": 100,
                "flat": True,
                "second_quarter_mean_bytes": 300 * 2**20,
                "last_quarter_mean_bytes": 301 * 2**20,
            },
            "redis": {"users": 5000, "items": 10_000, "bytes_per_user": 900, "bytes_per_item": 2e3},
        },
    }
    base.update(changes)
    return base


def statuses(figures: dict[str, Any]) -> dict[str, str]:
    return {goal.figure: goal.status for goal in assess(figures)}


def test_every_goal_met() -> None:
    assert statuses(result()) == {
        "sustainable live rate": "met",
        "freshness p99 at 1,000 events/s": "met",
        "ingest / raw consume ceiling": "met",
        "drained e2e / naive per-event agent": "met",
        "drained e2e / raw consume ceiling": "met",
        "fan-out re-encodes (users)": "reported",
        "users behind their items (drained)": "met",
        "worker RSS": "met",
        "Redis bytes per user / per item": "reported",
    }
    lines = format_goals(assess(result()))
    assert len(lines) == 10 and all(line.rstrip().endswith(("met", "measured", "reported"))
                                    for line in lines[1:])  # fmt: skip


def test_goals_not_met() -> None:
    figures = result(
        live={"sustained_eps": 1500.0, "at_goal_rate": {"offered_eps": 1000.0, "p99_s": 1.4}},
        ingest={"share": 0.1, "eps": 15_000, "ceiling_eps": 150_000},
        drained={"share": 0.02, "speedup": 49.9, "eps": 3_000, "naive_eps": 60},
    )
    assert [status for status in statuses(figures).values()][:5] == ["not met"] * 5


def test_no_sustained_rate_and_an_unreached_1000_are_not_met() -> None:
    figures = result(live={"sustained_eps": None, "at_goal_rate": at_rate([], 1000.0)})
    found = {goal.figure: goal for goal in assess(figures)}
    assert found["sustainable live rate"].value == "none sustained"
    assert found["freshness p99 at 1,000 events/s"].value == "not reached"
    assert found["freshness p99 at 1,000 events/s"].status == "not met"


def test_users_behind_and_a_short_or_growing_memory_run() -> None:
    figures = result(fanout={"reencodes": 1234, "users_behind_after_drain": 3})
    figures["memory"] = {**figures["memory"], "events": 20_000}
    found = statuses(figures)
    assert found["fan-out re-encodes (users)"] == "reported"
    assert found["users behind their items (drained)"] == "not met"
    assert found["worker RSS"] == "not measured"  # flat, but not over the goal's 1M events
    figures["memory"] = {**figures["memory"], "events": 1_000_000}
    figures["memory"]["rss"] = {**figures["memory"]["rss"], "flat": False}
    assert statuses(figures)["worker RSS"] == "not met"


def test_redis_keys_group_by_the_key_schema() -> None:
    assert classify("bench1:{t.0}:seq:u7") == ("users", "u7")
    assert classify("bench1:{t.0}:u:u7") == ("users", "u7")
    assert classify("bench1:{t.0}:eid:u7") == ("users", "u7")
    assert classify("bench1:{t.3}:i:i9") == ("items", "i9")
    assert classify("bench1:{t.3}:nb:i9") == ("items", "i9")
    for own in ("cat", "enc", "readers"):  # under the item's own hash tag
        assert classify(f"bench1:{{i:i9}}:{own}") == ("items", "i9")
    assert classify("bench1:{catalog}:dirty:content") == ("shared", "")
    for shared in ("bench1:{t.3}:ctx:c1", "bench1:{t.3}:dirty:users", "bench1:{t.0}:wm"):
        assert classify(shared) == ("shared", "")
    assert classify("bench1:shards") == ("shared", "")
