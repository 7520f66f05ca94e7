"""The re-encode scheduler's decision rules and the partition-free key layout, without services."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from state import keys
from state.catalog import CatalogRecord
from state.encode_inputs import EncodeBasis, ItemInputs
from streams.vectors import rules
from streams.vectors.plans import ItemPlan, basis_of, unread_neighbours
from streams.vectors.rules import (
    Marks,
    PassStats,
    fan_out,
    item_reason,
    material_change,
    vector_moved,
)


def basis(
    neighbours: tuple[str, ...] = ("a", "b"),
    weights: tuple[float, ...] = (1.0, 0.5),
    degree: int = 10,
    model: str = "v0001",
    cv: int = 1,
) -> EncodeBasis:
    return EncodeBasis(7, model, neighbours, weights, degree, cv)


@pytest.mark.parametrize(
    ("neighbours", "degree", "changed"),
    [
        ([("a", 1.0), ("b", 0.5)], 10, False),  # identical
        ([("b", 1.0), ("a", 1.0)], 10, True),  # b caught up with a: 0.5 -> 1
        ([("a", 1.0), ("b", 0.54)], 10, False),  # +8 %
        ([("a", 1.0), ("b", 0.55)], 10, True),  # +10 %: at the threshold counts
        ([("a", 1.0), ("c", 0.5)], 10, True),  # another neighbour id
        ([("a", 1.0)], 10, True),  # one dropped out
        ([("a", 1.0), ("b", 0.5)], 11, True),  # degree +10 %
    ],
)
def test_material_change_threshold(
    neighbours: list[tuple[str, float]], degree: int, changed: bool
) -> None:
    assert material_change(basis(), neighbours, degree, 0.1) is changed


def test_small_degree_change_is_not_material() -> None:
    assert not material_change(basis(degree=20), [("a", 1.0), ("b", 0.5)], 21, 0.1)


def test_zero_threshold_always_reencodes() -> None:
    assert material_change(basis(), [("a", 1.0), ("b", 0.5)], 10, 0.0)


def test_reasons_in_order_of_precedence() -> None:
    assert item_reason(None, "v0001", True, 1, True) == "cold_start"
    assert item_reason(basis(model="v0002"), "v0001", False, 1, False) == "cold_start"
    assert item_reason(basis(), "v0001", True, 1, True) == "content"
    assert item_reason(basis(cv=1), "v0001", False, 2, False) == "content"
    # a neighbour's content put marks it like an arrival; its own put counts first
    assert item_reason(basis(), "v0001", True, 1, True, 1) == "neighbour_content"
    assert item_reason(basis(), "v0001", False, 1, False, 1) == "neighbour_content"
    assert item_reason(basis(cv=1), "v0001", True, 2, False, 1) == "content"
    assert item_reason(basis(), "v0001", False, 1, True) == "neighbours"
    assert item_reason(basis(), "v0001", False, 1, False) is None


def test_marks_dedupe_items_across_shards_and_the_catalog() -> None:
    marks = Marks(
        shards={
            ("eng", 0, "items"): [("i1", 5.0), ("i2", 9.0)],
            ("eng", 1, "items"): [("i1", 3.0)],
            ("eng", 1, "users"): [("u1", 4.0)],
        },
        catalog=[("i3", 1.0), ("i2", 8.0)],
    )
    assert marks.items() == {"i1": 3.0, "i2": 8.0, "i3": 1.0}
    assert marks.users() == {("eng", 1): {"u1": 4.0}}
    assert marks.count() == 6
    assert marks.full(2) and not marks.full(3)


def test_item_keys_share_one_hash_tag_per_item() -> None:
    item = keys.ItemKeys("ss", "i:42")
    assert item.catalog() == "ss:{i:i:42}:cat"
    assert item.basis() == "ss:{i:i:42}:enc"
    dirty, redirty = keys.catalog_dirty_key("ss"), keys.catalog_redirty_key("ss")
    assert dirty == "ss:{catalog}:dirty:content"
    assert redirty.split("}")[0] == dirty.split("}")[0]  # one slot: the shard scripts apply


A, B = ("eng", 0), ("eng", 1)


def test_fan_out_marks_each_holder_once_at_its_earliest_change_but_not_this_passes_users() -> None:
    holders = {
        A: {"i1": {"u1": 5, "u2": 7}, "i2": {"u2": 3, "u3": 1}},
        B: {"i2": {"u4": 2}},
    }
    chosen, dropped = fan_out(holders, {"i1": 50.0, "i2": 40.0}, {A: {"u1"}}, 10)
    # u2 holds both: one mark, at i2's earlier first dirty ts; newest holders first
    assert chosen == {A: [("u2", 40.0), ("u3", 40.0)], B: [("u4", 40.0)]}
    assert dropped == 0


def test_fan_out_bound_takes_the_newest_holders_of_each_shard_in_turns() -> None:
    holders = {
        A: {"hub": {f"a{n}": n for n in range(5)}},
        B: {"hub": {"b0": 0, "b1": 1}},
    }
    chosen, dropped = fan_out(holders, {"hub": 1.0}, {}, 5)
    assert chosen == {
        A: [("a4", 1.0), ("a3", 1.0), ("a2", 1.0)],
        B: [("b1", 1.0), ("b0", 1.0)],
    }
    assert dropped == 2
    assert fan_out(holders, {"hub": 1.0}, {}, 0) == ({}, 7)


def with_material(vector: list[float], version: int = 5, model: str = "v0001") -> EncodeBasis:
    row = np.asarray(vector, dtype=np.float32).tobytes()
    return replace(basis(model=model), material_version=version, material=row)


@pytest.mark.parametrize(
    ("new", "threshold", "moved"),
    [
        ([1.0, 0.0], 1e-3, False),  # the same vector
        ([1.0, 0.01], 1e-3, False),  # 1 - cos = 5e-5
        ([1.0, 0.1], 1e-3, True),  # 1 - cos = 5e-3
        ([1.0, 0.0], 0.0, True),  # 0: every new vector moves (exact mode)
        ([2.0, 0.0], 1e-3, False),  # only the direction counts
    ],
)
def test_vector_moved_by_cosine_from_the_holders_vector(
    new: list[float], threshold: float, moved: bool
) -> None:
    vector = np.asarray(new, dtype=np.float32)
    assert vector_moved(with_material([1.0, 0.0]), "v0001", vector, threshold) is moved


def test_a_vector_moves_without_a_recorded_one_of_its_model() -> None:
    vector = np.asarray([1.0, 0.0], dtype=np.float32)
    assert vector_moved(None, "v0001", vector, 0.5)
    assert vector_moved(basis(), "v0001", vector, 0.5)  # recorded before material vectors
    assert vector_moved(with_material([1.0, 0.0], model="v0002"), "v0001", vector, 0.5)


def test_a_settled_plan_keeps_the_holders_version_until_its_vector_moves() -> None:
    state = ItemInputs("i1", 9, 2, [("a", 1.0)])
    plan = ItemPlan(
        "neighbours",
        state,
        CatalogRecord.empty("i1"),
        replace(basis(), state_version=9),
        1.0,
        previous=with_material([1.0, 0.0], version=5),
    )
    vector = np.asarray([1.0, 0.01], dtype=np.float32)
    still = plan.settled(vector, moved=False)
    assert (still.basis.material_version, still.basis.material) == (5, plan.previous.material)
    assert still.record(vector).material_version == 5  # what a user built now counts
    moved = plan.settled(vector, moved=True)
    assert moved.basis.material_version == 9
    assert np.array_equal(np.frombuffer(moved.basis.material, dtype=np.float32), vector)
    assert EncodeBasis.from_json(9, "v0001", moved.basis.to_json()) == moved.basis


def test_an_item_label_counts_its_own_and_its_neighbours_content_puts() -> None:
    """Engagement version 9, two puts of its own content, three of its neighbours': 14."""
    content = replace(CatalogRecord.empty("i1"), content_version=2, neighbour_content=3)
    made = basis_of(ItemInputs("i1", 9, 2, [("a", 1.0)]), content, "v0001")
    assert (made.state_version, made.content_version, made.neighbour_content) == (14, 2, 3)
    assert made.readers_added
    assert EncodeBasis.from_json(14, "v0001", made.to_json()) == made


@pytest.mark.parametrize(
    ("previous", "added"),
    [
        (None, {"a": {"i1"}, "b": {"i1"}}),  # never encoded: both neighbours learn of it
        (replace(basis(("a",)), readers_added=True), {"b": {"i1"}}),  # a knows it already
        (replace(basis(("a", "b")), readers_added=True), {}),
        (basis(("a", "b")), {"a": {"i1"}, "b": {"i1"}}),  # recorded before the readers index
    ],
)
def test_an_item_joins_the_readers_of_only_the_neighbours_not_told_before(
    previous: EncodeBasis | None, added: dict[str, set[str]]
) -> None:
    plan = ItemPlan(
        "neighbours",
        ItemInputs("i1", 9, 2, [("a", 1.0), ("b", 0.5)]),
        CatalogRecord.empty("i1"),
        basis(("a", "b")),
        1.0,
        previous=previous,
    )
    assert unread_neighbours({"i1": plan}) == added


def test_a_pass_adds_each_steps_time_to_its_own_even_when_it_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = iter([10.0, 10.5, 11.0, 11.25, 20.0, 22.0])
    monkeypatch.setattr(rules.time, "perf_counter", lambda: next(ticks))
    stats = PassStats()
    with stats.stage("read"):
        pass
    with stats.stage("read"):  # a second run of a step adds to the first
        pass
    with pytest.raises(RuntimeError), stats.stage("upsert"):
        raise RuntimeError("the store went away")
    assert stats.stages_s == {"read": 0.75, "upsert": 2.0}
