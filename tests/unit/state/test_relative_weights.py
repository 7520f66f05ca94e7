"""Reading neighbour weights: relative to the strongest, with no clock, in float32 for any span.

Forward-decayed weights read at wall-clock time after replaying an old log underflow to 0 (a
7-day half-life over 22 years is 2^-1150); `merge_relative` must hand every reader the same
ratios whatever the reading time, and keep them finite and positive in float32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state import CoEngagementGraph, StateConfig, merge_neighbours
from state.coengagement import MIN_RELATIVE_WEIGHT, merge_relative
from state.coengagement import Event as Ev

DAY = 86400
YEAR = 365 * DAY
START = 1_000_000_000  # 2001, in epoch seconds: a historical log
SHARDS = {"u1": 0, "u2": 1, "u3": 2, "u4": 0}


def shards_of(events: list[Ev], **overrides: object) -> list[CoEngagementGraph]:
    """One graph per partition, users partitioned as the stream partitions them."""
    graphs = [CoEngagementGraph(StateConfig(**overrides)) for _ in range(3)]  # type: ignore[arg-type]
    for event in events:
        graphs[SHARDS[event.user_id]].add(event)
    return graphs


def absolute(graphs: list[CoEngagementGraph], item: str, now: float) -> dict[str, float]:
    """Weights read at `now`, summed over shards: what relative weights are ratios of."""
    total: dict[str, float] = {}
    for g in graphs:
        found = g.shard_list(item)
        if found is None:
            continue
        t0, top = found
        for member, score in top:
            total[member] = total.get(member, 0.0) + score * math.exp(-g.decay_lambda * (now - t0))
    return total


@st.composite
def timelines(draw: st.DrawFn, max_span: int) -> list[Ev]:
    """Integer-second events (so a shifted copy keeps every gap exact), bursts within the pair
    horizon separated by gaps of up to `max_span` seconds in all."""
    gaps = st.one_of(st.integers(0, 3600), st.integers(0, max_span))
    steps = draw(st.lists(gaps, min_size=2, max_size=60))
    events, ts = [], START
    for step in steps:
        ts = min(ts + step, START + max_span)
        user = draw(st.sampled_from(sorted(SHARDS)))
        item = draw(st.sampled_from(["a", "b", "c", "d", "e", "f"]))
        action = draw(st.sampled_from(["save", "click", "view"]))
        w = draw(st.one_of(st.none(), st.floats(0.1, 5.0)))
        events.append(Ev(user, item, action, float(ts), w))
    return events


def items_of(events: list[Ev]) -> list[str]:
    return sorted({e.item_id for e in events})


def test_shards_fifty_years_apart_read_without_overflow_or_zeros() -> None:
    lam = StateConfig().decay_lambda
    old = (0.0, [("x", 1e9), ("y", 3.0)])  # a list last rebased 50 years before the other's
    new = (50.0 * YEAR, [("z", 1e-300), ("y", 5e-301)])
    merged = merge_relative([old, new], lam, 10)
    assert merged == [("z", 1.0), ("y", 0.5), ("x", MIN_RELATIVE_WEIGHT)]
    assert merge_relative([new, old], lam, 10) == merged
    assert merge_relative([(0.0, [("x", 0.0)])], lam, 10) == []  # zero-weight events only
    assert merge_relative([], lam, 10) == []


def test_a_replayed_old_log_reads_like_a_fresh_one() -> None:
    events = [Ev("u1", "a", "click", START), Ev("u1", "b", "save", START + 60.0)]
    events += [Ev("u2", "a", "view", START + 600.0), Ev("u2", "c", "click", START + 660.0)]
    fresh = [Ev(e.user_id, e.item_id, e.action, e.ts + 22 * YEAR) for e in events]
    old_lists = merge_neighbours(shards_of(events), "a", 10)
    assert [m for m, _ in old_lists] == ["b", "c"]
    assert old_lists[0][1] == 1.0 and 0 < old_lists[1][1] < 1
    fresh_lists = merge_neighbours(shards_of(fresh), "a", 10)
    assert dict(fresh_lists) == pytest.approx(dict(old_lists), rel=1e-12)
    # read at wall-clock time (22 years later) the absolute weights are gone, even in float64
    assert max(absolute(shards_of(events), "a", START + 22.0 * YEAR).values()) < 1e-300


@given(timelines(max_span=60 * DAY), st.integers(0, 2 * YEAR))
@settings(max_examples=150, deadline=None)
def test_relative_weights_are_absolute_ones_over_the_strongest_at_any_time(
    events: list[Ev], later: int
) -> None:
    graphs = shards_of(events)
    for item in items_of(events):
        merged = dict(merge_neighbours(graphs, item, 100))
        read = absolute(graphs, item, max(e.ts for e in events) + later)
        assert merged.keys() == read.keys()
        if read:
            strongest = max(read.values())
            want = {m: max(w / strongest, MIN_RELATIVE_WEIGHT) for m, w in read.items()}
            assert merged == pytest.approx(want, rel=1e-9)


@given(timelines(max_span=50 * YEAR), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_weights_stay_finite_positive_and_float32_over_fifty_years(
    events: list[Ev], k: int
) -> None:
    graphs = shards_of(events)
    for item in items_of(events):
        paired = any(g.shard_list(item) is not None for g in graphs)
        merged = merge_neighbours(graphs, item, k)
        assert bool(merged) == paired  # every item with co-engagements has a list
        if not merged:
            continue
        weights = np.asarray([w for _, w in merged], dtype=np.float64)
        as_f32 = weights.astype(np.float32)
        assert np.isfinite(as_f32).all() and (as_f32 > 0).all()
        assert weights[0] == 1.0 and (weights <= 1.0).all()
        assert (weights >= MIN_RELATIVE_WEIGHT).all()
        assert list(weights) == sorted(weights, reverse=True)


@given(timelines(max_span=5 * YEAR), st.integers(0, 50 * YEAR))
@settings(max_examples=150, deadline=None)
def test_shifting_the_whole_log_in_time_changes_no_relative_weight(
    events: list[Ev], shift: int
) -> None:
    moved = [Ev(e.user_id, e.item_id, e.action, e.ts + shift, e.weight) for e in events]
    graphs, moved_graphs = shards_of(events), shards_of(moved)
    for item in items_of(events):
        here = merge_neighbours(graphs, item, 100)
        there = merge_neighbours(moved_graphs, item, 100)
        assert [m for m, _ in there] == [m for m, _ in here]
        assert [w for _, w in there] == pytest.approx([w for _, w in here], rel=1e-9)


def plain_merge(
    shards: list[tuple[float, list[tuple[str, float]]]], lam: float, k: int
) -> list[tuple[str, float]]:
    """The merge written the obvious way: scale each shard, sum per member in shard order, sort
    everything by (weight desc, member), keep k. `merge_columns` only prunes before sorting."""
    scaled = [(t0, top, max(s for _, s in top)) for t0, top in shards if top]
    live = [(t0, peak) for t0, _, peak in scaled if peak > 0.0]
    if not live:
        return []
    newest = max(t0 for t0, _ in live)
    strongest = max(math.log(p) - lam * (newest - t0) for t0, p in live)
    total: dict[str, float] = {}
    for t0, top, peak in scaled:
        scale = math.exp(math.log(peak) - lam * (newest - t0) - strongest) if peak > 0 else 0.0
        for member, score in top:
            total[member] = total.get(member, 0.0) + score / (peak if peak > 0 else 1.0) * scale
    ranked = sorted(total.items(), key=lambda mw: (-mw[1], mw[0]))[: max(k, 0)]
    if not ranked:
        return []
    return [(m, max(w / ranked[0][1], MIN_RELATIVE_WEIGHT)) for m, w in ranked]


shard_lists = st.lists(
    st.tuples(
        st.floats(0.0, 1e6),
        st.dictionaries(
            st.sampled_from([f"i{n}" for n in range(12)]),
            st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(0.0, 1e12),  # ties are common
            max_size=12,
        ).map(lambda scores: sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))),
    ),
    max_size=4,
)


@given(shard_lists, st.sampled_from([1e-6, 1e-3, 0.0]), st.integers(0, 15))
@settings(max_examples=400, deadline=None)
def test_the_merge_is_the_plain_sort_bit_for_bit(
    shards: list[tuple[float, list[tuple[str, float]]]], lam: float, k: int
) -> None:
    assert merge_relative(shards, lam, k) == plain_merge(shards, lam, k)
