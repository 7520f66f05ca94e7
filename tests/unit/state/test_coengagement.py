"""The reference co-engagement rules (state.coengagement): also the Lua script's oracle."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state import CoEngagementGraph, SeqEntry, StateConfig, merge_neighbours
from state.coengagement import Event as Ev
from state.exceptions import InvalidBatchError

DAY = 86400.0


def graph(**overrides: object) -> CoEngagementGraph:
    return CoEngagementGraph(StateConfig(**overrides))  # type: ignore[arg-type]


def weight(g: CoEngagementGraph, item: str, other: str, now: float) -> float:
    """The absolute weight of `other` in item's list read at `now` (what the stored score means;
    readers hand out relative weights, see `merge_relative`)."""
    found = g.shard_list(item)
    if found is None:
        return 0.0
    t0, top = found
    return dict(top).get(other, 0.0) * math.exp(-g.decay_lambda * (now - t0))


def test_pair_weight_is_geometric_mean_of_actions_times_hub_damping() -> None:
    g = graph()
    g.add_many([Ev("u", "a", "save", 10.0), Ev("u", "b", "click", 20.0, weight=2.0)])
    base = math.sqrt(3.0 * 1.0) * 2.0
    # a's list, neighbour b: b's degree is 1 when the pair forms; likewise a's degree for b's list.
    assert weight(g, "a", "b", 20.0) == pytest.approx(base * 2**-0.5, rel=1e-12)
    assert weight(g, "b", "a", 20.0) == pytest.approx(base * 2**-0.5, rel=1e-12)
    assert g.item_version("a") == 2  # its own event, then paired by b's event
    assert g.item_version("b") == 1
    assert g.user_version("u") == 2


def test_self_pairs_are_skipped() -> None:
    g = graph()
    g.add_many([Ev("u", "a", "click", 1.0), Ev("u", "a", "save", 2.0)])
    assert g.neighbours("a", 10) == []
    assert g.item_degree("a") == 2


def test_horizon_limits_pairs_in_both_directions() -> None:
    g = graph(pair_horizon_s=100.0)
    g.add_many(
        [
            Ev("u", "a", "click", 1000.0),
            Ev("u", "b", "click", 1100.0),  # exactly at the horizon: pairs
            Ev("u", "c", "click", 1201.0),  # 101 s after b, 201 s after a: pairs with neither
            Ev("u", "d", "click", 1150.0),  # late arrival: 51 s before c, 50 after b -> pairs both
        ]
    )
    assert {m for m, _ in g.neighbours("a", 10)} == {"b"}
    assert {m for m, _ in g.neighbours("c", 10)} == {"d"}
    assert {m for m, _ in g.neighbours("d", 10)} == {"b", "c"}


def test_only_the_last_max_pairs_entries_pair_and_each_neighbour_once() -> None:
    g = graph(max_pairs=2)
    g.add_many([Ev("u", i, "click", float(t)) for t, i in enumerate(["x", "y", "x", "z"])])
    # z sees the last two entries (y, x); x pairs once although it is in the sequence twice
    assert {m for m, _ in g.neighbours("z", 10)} == {"x", "y"}
    assert g.item_version("x") == 4  # two own events, paired by y's event and by z's (once)


def test_too_old_event_is_in_the_sequence_but_adds_no_pairs() -> None:
    g = graph()
    g.add_many(
        [
            Ev("u", "a", "click", 10 * DAY),
            Ev("u", "b", "click", 9 * DAY - 1),  # older than ts_max - 1 day
            Ev("u", "c", "click", 10 * DAY + 5),
        ]
    )
    assert [e.item_id for e in g.sequence("u")] == ["a", "b", "c"]
    assert g.neighbours("b", 10) == []
    assert {m for m, _ in g.neighbours("c", 10)} == {"a"}
    assert g.user_version("u") == 3
    assert g.item_degree("b") == 1


def test_hub_damping_shrinks_links_to_popular_items() -> None:
    g = graph()
    g.add_many([Ev(f"fan{n}", "hub", "click", 0.0) for n in range(15)])  # degree 15
    g.add_many([Ev("u", "niche", "click", 1.0), Ev("u", "hub", "click", 2.0)])
    g.add_many([Ev("v", "other", "click", 1.0), Ev("v", "niche", "click", 2.0)])
    hub_link = weight(g, "niche", "hub", 2.0)
    other_link = weight(g, "niche", "other", 2.0)
    # hub had degree 16 when paired, other had degree 1
    assert hub_link == pytest.approx(17**-0.5, rel=1e-12)
    assert other_link == pytest.approx(2**-0.5, rel=1e-12)
    assert hub_link < other_link


def test_weight_halves_after_one_half_life() -> None:
    g = graph(half_life_s=1000.0)
    g.add_many([Ev("u", "a", "click", 0.0), Ev("u", "b", "click", 10.0)])
    now = 500.0
    assert weight(g, "a", "b", now + 1000.0) == pytest.approx(
        weight(g, "a", "b", now) / 2, rel=1e-12
    )


def test_rebase_keeps_read_weights() -> None:
    half_life = 100.0
    g = graph(half_life_s=half_life, pair_horizon_s=1e9, max_event_age_s=1e9)
    g.add_many([Ev("u", "a", "click", 0.0), Ev("u", "b", "click", 1.0)])
    before = weight(g, "a", "b", 1.0)
    later = 40 * half_life  # exp(lambda * 4000) = 2**40 > 1e9: a's list is rebased
    g.add(Ev("v", "c", "click", later - 1.0))
    g.add(Ev("v", "a", "click", later))
    assert g.item_t0("a") == later
    expected = before * 2 ** (-(later + 10.0 - 1.0) / half_life)
    assert weight(g, "a", "b", later + 10.0) == pytest.approx(expected, rel=1e-9)


def test_trim_keeps_top_k_max_when_a_block_of_offsets_ends() -> None:
    g = graph(k_max=3, trim_every=1)
    actions = ["save", "view", "click", "view", "save", "click"]
    events = [Ev("u", f"i{n}", a, 6.0) for n, a in enumerate(actions)]
    events.append(Ev("u", "hot", "save", 6.0))  # pairs with all six (max_pairs is 10)
    g.add_many(events)
    top = g.neighbours("hot", 10)
    # saves first; the two clicks tie and Redis drops the lowest rank (the smaller member) first
    assert [m for m, _ in top] == ["i0", "i4", "i5"]
    g.add(Ev("w", "elsewhere", "view", 6.0))  # the next block trims hot's list for real
    assert g.neighbours("hot", 10) == top


def test_context_saves_pair_beyond_the_horizon() -> None:
    g = graph(pair_horizon_s=60.0)
    g.add_many(
        [
            Ev("u", "a", "save", 0.0, context_id="board"),
            Ev("u", "x", "view", 1000.0, context_id="board"),  # not a save: no context pairs
            Ev("u", "b", "save", 2000.0, context_id="board"),
            Ev("u", "c", "save", 2000.0, context_id="other"),
        ]
    )
    assert {m for m, _ in g.neighbours("b", 10)} == {"a", "c"}  # a by board, c by time
    assert g.neighbours("x", 10) == []
    base = math.sqrt(3.0 * 3.0)
    assert weight(g, "b", "a", 2000.0) == pytest.approx(base * 2**-0.5, rel=1e-12)
    assert weight(g, "b", "a", 2000.0 + 7 * DAY) == pytest.approx(base * 2**-1.5, rel=1e-12)


def test_sequence_is_bounded_and_ordered() -> None:
    g = graph(seq_len=3)
    g.add_many([Ev("u", f"i{n}", "view", float(n)) for n in range(5)])
    assert g.sequence("u") == [SeqEntry(f"i{n}", "view", float(n)) for n in (2, 3, 4)]


def test_a_duplicate_event_id_changes_nothing_within_the_window() -> None:
    g = CoEngagementGraph(StateConfig(dedup_window=2))
    g.add_many(
        [
            Ev("u", "a", "click", 1.0, event_id="e1"),
            Ev("u", "b", "click", 2.0, event_id="e1"),  # a retry of e1: skipped
            Ev("w", "c", "click", 3.0, event_id="e1"),  # another user's e1 is not a duplicate
            Ev("u", "c", "click", 4.0, event_id="e2"),
            Ev("u", "d", "click", 5.0, event_id="e3"),  # e1 leaves u's window of 2
            Ev("u", "e", "click", 6.0, event_id="e1"),  # so this e1 is applied
            Ev("u", "f", "click", 7.0),  # no id: never a duplicate
            Ev("u", "f", "click", 7.0),
        ]
    )
    assert [e.item_id for e in g.sequence("u")] == ["a", "c", "d", "e", "f", "f"]
    assert (g.user_version("u"), g.item_version("b"), g.duplicates) == (6, 0, 1)
    assert "b" not in dict(g.neighbours("a", 10))


def test_a_window_of_zero_keeps_every_event() -> None:
    g = CoEngagementGraph(StateConfig(dedup_window=0))
    g.add_many([Ev("u", "a", "click", 1.0, event_id="e1")] * 3)
    assert (g.user_version("u"), g.duplicates) == (3, 0)


def test_unknown_action_is_refused() -> None:
    with pytest.raises(InvalidBatchError):
        graph().add(Ev("u", "a", "like", 0.0))


def test_merge_sums_shards_then_reads_relative_to_the_strongest() -> None:
    one, two = graph(), graph()
    one.add_many([Ev("u", "a", "click", 0.0), Ev("u", "b", "click", 1.0)])
    two.add_many(
        [Ev("v", "a", "click", 0.0), Ev("v", "b", "click", 1.0), Ev("v", "c", "view", 2.0)]
    )
    merged = dict(merge_neighbours([one, two], "a", 10))
    b = weight(one, "a", "b", 5.0) + weight(two, "a", "b", 5.0)
    assert merged["b"] == 1.0
    assert merged["c"] == pytest.approx(weight(two, "a", "c", 5.0) / b, rel=1e-12)
    assert list(merged) == ["b", "c"]


# -- properties ------------------------------------------------------------------------------

USERS = st.sampled_from(["u1", "u2", "u3"])
ITEMS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
ACTIONS = st.sampled_from(["save", "click", "view"])


@st.composite
def event_lists(draw: st.DrawFn) -> list[Ev]:
    steps = draw(st.lists(st.floats(-50.0, 400.0), min_size=1, max_size=60))
    events, ts = [], 1000.0
    for step in steps:
        ts += step
        ctx = draw(st.sampled_from([None, "b1", "b2"]))
        w = draw(st.one_of(st.none(), st.floats(0.0, 5.0)))
        events.append(Ev(draw(USERS), draw(ITEMS), draw(ACTIONS), ts, w, ctx))
    return events


@given(event_lists(), st.integers(1, 4), st.integers(1, 7))
@settings(max_examples=150, deadline=None)
def test_lists_stay_bounded_and_counts_add_up(
    events: list[Ev], k_max: int, slice_size: int
) -> None:
    g = graph(k_max=k_max, slice_size=slice_size, seq_len=5)
    g.add_many(events)
    for item in {e.item_id for e in events}:
        top = g.neighbours(item, 100)
        assert len(top) <= k_max
        assert all(0 < w <= 1 for _, w in top)
        assert item not in dict(top)
        assert g.item_degree(item) == sum(e.item_id == item for e in events)
    for user in {e.user_id for e in events}:
        mine = [SeqEntry(e.item_id, e.action, e.ts) for e in events if e.user_id == user]
        assert g.sequence(user) == mine[-5:]
        assert g.user_version(user) == len(mine)


@given(event_lists(), st.integers(1, 7))
@settings(max_examples=150, deadline=None)
def test_without_trimming_the_trim_block_does_not_matter(events: list[Ev], every: int) -> None:
    whole, sliced = graph(k_max=1000), graph(k_max=1000, trim_every=every)
    whole.add_many(events)
    sliced.add_many(events)
    for item in {e.item_id for e in events}:
        assert sliced.neighbours(item, 100) == whole.neighbours(item, 100)


@given(event_lists())
@settings(max_examples=150, deadline=None)
def test_without_hub_damping_links_are_symmetric(events: list[Ev]) -> None:
    g = graph(k_max=1000, hub_alpha=0.0, half_life_s=50.0)  # short half-life: rebases happen
    g.add_many(events)
    now = max(e.ts for e in events)
    items = sorted({e.item_id for e in events})
    for a in items:
        for b, _ in g.neighbours(a, 100):
            want = weight(g, a, b, now)
            assert weight(g, b, a, now) == pytest.approx(want, rel=1e-9, abs=1e-300)


# -- changelog -------------------------------------------------------------------------------


def test_take_changed_names_what_the_events_wrote_and_then_starts_over() -> None:
    g = graph()
    g.add_many([Ev("u1", "a", "save", 1.0, None, "b1"), Ev("u1", "b", "click", 2.0)])
    changed = g.take_changed()
    assert (changed.users, changed.items, changed.contexts) == ({"u1"}, {"a", "b"}, {"b1"})
    g.add(Ev("u2", "c", "view", 3.0))  # no pair: u2 has no earlier action
    assert (g.take_changed().items, g.take_changed().items) == ({"c"}, set())


def test_a_block_boundary_changes_the_lists_it_trims() -> None:
    g = graph(k_max=1, trim_every=8)
    g.add_many([Ev("u1", "a", "save", 1.0), Ev("u1", "b", "save", 2.0)])  # one neighbour each
    g.add_many([Ev("u2", item, "save", 3.0) for item in "cde"])  # two each: over k_max
    g.take_changed()
    g.add(Ev("u9", "z", "view", 4.0), offset=8)  # a new block of offsets: the trim runs
    assert g.take_changed().items == {"c", "d", "e", "z"}


EVENT_IDS = st.sampled_from([None, "e1", "e2", "e3"])


@given(event_lists(), st.data())
@settings(max_examples=150, deadline=None)
def test_a_graph_rebuilt_from_its_changelog_goes_on_exactly_like_the_original(
    events: list[Ev], data: st.DataObject
) -> None:
    events = [
        Ev(e.user_id, e.item_id, e.action, e.ts, e.weight, e.context_id, data.draw(EVENT_IDS))
        for e in events
    ]
    cut = data.draw(st.integers(0, len(events)))
    step = data.draw(st.integers(1, 5))
    # small bounds, so trims, holder caps and duplicates happen; a short half-life rebases
    config = StateConfig(
        k_max=2, trim_every=3, seq_len=4, hold_max=2, dedup_window=2, half_life_s=50.0
    )
    original = CoEngagementGraph(config)
    log: dict[str, bytes] = {}  # a compacted topic: the newest record of each key
    for start in range(0, cut, step):
        original.add_many(events[start : min(start + step, cut)])
        log.update(original.to_records(original.take_changed()))
    restored = CoEngagementGraph.from_records(config, log.items())
    for g in (original, restored):
        g.add_many(events[cut:])
    assert restored.to_records(restored.take_changed()) == original.to_records(
        original.take_changed()
    )
    assert restored.duplicates == original.duplicates
    for user in {e.user_id for e in events}:
        assert restored.sequence(user) == original.sequence(user)
        assert restored.user_version(user) == original.user_version(user)
    for item in {e.item_id for e in events}:
        assert restored.shard_list(item) == original.shard_list(item)
        assert restored.holders(item) == original.holders(item)
        assert restored.item_version(item) == original.item_version(item)
        assert restored.item_degree(item) == original.item_degree(item)


def test_a_changelog_key_of_no_known_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="not a changelog key"):
        CoEngagementGraph.from_records(StateConfig(), [("x:1", b"{}")])
