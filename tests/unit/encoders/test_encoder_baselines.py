"""The baselines: co-occurrence counts and rankings worked out by hand, and the sparse code against
a naive dense reference on random data."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoders.baselines import (
    CoOccurrence,
    cooccurrence_scorer,
    popularity_scorer,
    training_counts,
)
from encoders.data import IntArray, UserSequence
from encoders.evaluate import leave_one_out

Dense = npt.NDArray[np.float64]


def _fit(seqs: Sequence[Sequence[int]], n: int, window: int, power: float = 0.0) -> CoOccurrence:
    return CoOccurrence.fit([np.array(s, dtype=np.int64) for s in seqs], n, window, power)


def _dense(model: CoOccurrence) -> Dense:
    out = np.zeros((model.n_items, model.n_items))
    for item in range(model.n_items):
        cols, weights = model.row(item)
        out[item, cols] = weights
    return out


def _seq(user: str, items: Sequence[int]) -> UserSequence:
    n = len(items)
    return UserSequence(user, np.array(items), np.ones(n, np.int64), np.arange(n, dtype=float))


def test_pairs_within_the_window_count_both_ways() -> None:
    one = _dense(_fit([[0, 1, 2, 3]], 4, window=1))
    assert one.tolist() == [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    two = _dense(_fit([[0, 1, 2, 3]], 4, window=2))
    assert two.tolist() == [[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]]
    assert (two == two.T).all()


def test_pairs_are_weighted_by_distance_and_summed_over_users() -> None:
    # 1/d: item 0 meets 1 at d=1 and 2 at d=2 in the first user, 2 again at d=1 in the second
    counts = _dense(_fit([[0, 1, 2], [0, 2]], 3, window=3, power=1.0))
    assert counts[0].tolist() == [0.0, 1.0, 1.5]
    assert counts[1, 2] == counts[2, 1] == 1.0


def test_no_self_pairs_and_no_pairs_across_users() -> None:
    counts = _dense(_fit([[0, 0, 1], [2, 3]], 4, window=2))
    assert np.diag(counts).tolist() == [0, 0, 0, 0]
    assert counts[0, 1] == 2  # the repeated 0 meets 1 at distances 1 and 2
    assert counts[1, 2] == 0  # 1 ends one user's sequence, 2 starts the next one's


def test_the_newest_item_weighs_most() -> None:
    # 5 goes with 1 only, 6 with 0 only, both once; the user read 0 then 1
    model = _fit([[1, 5], [0, 6]], 7, window=1)
    recency = model.scores([np.array([0, 1])], last=2, recency=0.5)[0]
    assert recency[5] == 1.0 and recency[6] == 0.5
    flat = model.scores([np.array([0, 1])], last=2, recency=1.0)[0]
    assert flat[5] == flat[6] == 1.0
    assert model.scores([np.array([0, 1])], last=1, recency=0.5)[0][6] == 0.0  # 0 is too old


def test_popularity_breaks_ties_and_never_overrides_a_count() -> None:
    # histories (test split): u1 [3, 1, 2], u2 [3, 1, 2], u3 [4, 2, 1], u4 [5, 0]; u4 reads 0 -> 5
    # and nothing else, so its candidates 1..4 tie on zero counts and follow popularity
    seqs = [_seq("u1", [3, 1, 2, 9]), _seq("u2", [3, 1, 2, 9]), _seq("u3", [4, 2, 1, 9])]
    seqs.append(_seq("u4", [5, 0, 9]))
    cases = leave_one_out(seqs, "test")
    pop = training_counts(cases, 10)
    assert pop.tolist() == [1, 3, 3, 2, 1, 1, 0, 0, 0, 0]  # the targets (9) are never counted
    scores = cooccurrence_scorer(cases, 10, window=1, last=1)(0, len(cases))
    # u1's newest item is 2: it met 1 three times, 4 once -> 1 > 4 > the rest by popularity
    u1 = scores[0]
    assert u1[1] > u1[4] > u1[3] > u1[0] > u1[9]
    assert u1[3] < 1e-3 and u1[0] > u1[6] == u1[9] == 0.0
    # u3's newest item is 1: it met 2 three times, 3 twice -> 2 > 3 > popular items with no count
    u3 = scores[2]
    assert u3[2] > u3[3] > u3[4] == u3[5] > u3[9]
    assert scores[3][5] > scores[3][1] == scores[3][2] > scores[3][3] > scores[3][4]


def test_targets_never_enter_the_counts() -> None:
    # u2's test target 7 follows 1: counting it would score 7 for u1, whose history ends in 1
    cases = leave_one_out([_seq("u1", [0, 1, 2]), _seq("u2", [3, 1, 7])], "test")
    scores = cooccurrence_scorer(cases, 8, window=2, last=1)(0, 2)
    assert scores[0][7] == 0.0 and scores[0][3] > 0.0


def test_popularity_scorer_gives_everyone_the_counts() -> None:
    scores = popularity_scorer(np.array([3, 0, 5]))(0, 2)
    assert scores.tolist() == [[3.0, 0.0, 5.0], [3.0, 0.0, 5.0]]


def _reference(
    seqs: Sequence[IntArray], n: int, window: int, power: float, last: int, recency: float
) -> Dense:
    counts = np.zeros((n, n))
    for seq in seqs:
        for i in range(len(seq)):
            for j in range(i + 1, min(i + window + 1, len(seq))):
                if seq[i] != seq[j]:
                    counts[seq[i], seq[j]] += (j - i) ** -power
                    counts[seq[j], seq[i]] += (j - i) ** -power
    out = np.zeros((len(seqs), n))
    for row, seq in enumerate(seqs):
        for age, item in enumerate(reversed(seq[-last:])):
            out[row] += recency**age * counts[item]
    return out


_SEQUENCES = st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=12), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    raw=_SEQUENCES,
    window=st.integers(1, 5),
    power=st.sampled_from([0.0, 0.5, 1.0]),
    last=st.integers(1, 6),
    recency=st.sampled_from([1.0, 0.8, 0.5, 0.0]),
)
def test_sparse_counts_and_scores_match_a_dense_reference(
    raw: list[list[int]], window: int, power: float, last: int, recency: float
) -> None:
    seqs = [np.array(s, dtype=np.int64) for s in raw]
    model = CoOccurrence.fit(seqs, 8, window, power)
    expected = _reference(seqs, 8, window, power, last, recency)
    np.testing.assert_allclose(model.scores(seqs, last, recency), expected, atol=1e-12)
    counts = _dense(model)
    np.testing.assert_allclose(counts, counts.T)
    assert (np.diff(model.indptr) >= 0).all() and model.indptr[-1] == len(model.indices)


@settings(max_examples=100, deadline=None)
@given(raw=_SEQUENCES, order=st.randoms(use_true_random=False))
def test_counts_do_not_depend_on_the_order_of_users(
    raw: list[list[int]], order: random.Random
) -> None:
    seqs = [np.array(s, dtype=np.int64) for s in raw]
    shuffled = list(range(len(seqs)))
    order.shuffle(shuffled)
    a = CoOccurrence.fit(seqs, 8, 3, 1.0)
    b = CoOccurrence.fit([seqs[i] for i in shuffled], 8, 3, 1.0)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data)
    np.testing.assert_allclose(a.scores(seqs), b.scores(seqs))


def test_a_large_sparse_catalogue_stays_sparse() -> None:
    """55k items and 350k events: the counts hold at most 2 x window x events entries, and a
    chunk of users scores without any item-by-item matrix."""
    rng = np.random.default_rng(0)
    n, events, users, window = 55_000, 350_000, 25_000, 10
    weights = 1.0 / (np.arange(n) + 10.0) ** 0.9
    items = rng.choice(n, size=events, p=weights / weights.sum())
    seqs = np.split(items, np.sort(rng.choice(np.arange(1, events), users - 1, replace=False)))
    model = CoOccurrence.fit(seqs, n, window)
    assert len(model.indices) <= 2 * window * events and model.indptr.shape == (n + 1,)
    scores = model.scores(seqs[:64])
    assert scores.shape == (64, n) and (scores >= 0).all()


def test_a_window_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        _fit([[0, 1]], 2, window=0)
