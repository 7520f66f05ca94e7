"""Leave-one-out splitting and ranking metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from encoders.data import UserSequence
from encoders.evaluate import leave_one_out, rank_metrics, sample_negatives


def _seq(items: list[int]) -> UserSequence:
    n = len(items)
    return UserSequence("u", np.array(items), np.ones(n, np.int64), np.arange(n, dtype=float))


def test_leave_one_out_targets() -> None:
    seqs = [_seq([0, 1, 2, 3]), _seq([4, 5])]
    test, val = leave_one_out(seqs, "test"), leave_one_out(seqs, "validation")
    assert len(test) == 1  # the two-event user is not evaluated
    assert test.targets.tolist() == [3] and test.histories[0][0].tolist() == [0, 1, 2]
    assert val.targets.tolist() == [2] and val.histories[0][0].tolist() == [0, 1]


def test_full_ranking_removes_seen_items_and_sampled_uses_unseen() -> None:
    cases = leave_one_out([_seq([0, 1, 2, 3])], "test")
    scores = np.array([[9.0, 8.0, 7.0, 5.0, 6.0, 1.0]])  # seen 0,1,2 outrank the target 3
    negatives = sample_negatives(cases, 6, seed=0)
    assert set(negatives.ravel().tolist()) <= {4, 5}
    got = rank_metrics(lambda a, b: scores[a:b], cases, negatives)
    # full: only item 4 beats the target -> rank 1
    assert got["full"]["recall@10"] == 1.0
    assert got["full"]["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert got["sampled100"]["hr@10"] in (0.0, 1.0)


def test_ties_count_half() -> None:
    cases = leave_one_out([_seq([0, 1, 2, 3])], "test")
    flat = np.zeros((1, 40))
    got = rank_metrics(lambda a, b: flat[a:b], cases, sample_negatives(cases, 40, 0))
    assert got["full"]["recall@10"] == 0.0  # 36 unseen items tie: average rank 18
