"""The training benchmark times both catalogue sizes on the same events and judges the goals."""

from __future__ import annotations

from streams.devtools.bench.train import (
    EPOCH_GOAL_S,
    GROWTH_GOAL,
    TrainBenchConfig,
    run_train_bench,
)


def test_train_bench_times_both_sizes_on_the_same_events() -> None:
    cfg = TrainBenchConfig(items=400, twin_items=40, events=3000, users=150, repeats=1, threads=1)
    result = run_train_bench(cfg)
    big, twin = result["sizes"]
    assert (big["items"], twin["items"]) == (400, 40)
    assert big["events"] == twin["events"] == 3000 and big["users"] == twin["users"]
    assert big["steps"] == twin["steps"] > 0
    assert big["epoch_s"] > 0 and twin["epoch_s"] > 0
    assert result["growth"] == round(big["epoch_s"] / twin["epoch_s"], 2)
    goals = result["goals"]
    assert goals["epoch_s"] == {"goal_max": EPOCH_GOAL_S, "met": big["epoch_s"] <= EPOCH_GOAL_S}
    assert goals["growth"]["met"] == (result["growth"] <= GROWTH_GOAL)
