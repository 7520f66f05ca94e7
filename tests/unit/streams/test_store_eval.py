"""Scoring what Qdrant serves (streams/training/store_eval.py) on an in-memory embedded store:
the same vectors give the offline metrics exactly, and search ranks read as `rank_metrics` ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from encoders.data import TrainingData, UserSequence
from encoders.evaluate import leave_one_out, rank_metrics, sample_negatives, vector_scorer
from state import VectorRecord, VectorStore, VectorStoreConfig
from streams.training.store_eval import case_users, evaluate_store, relative_gap, search_scorer

N_ITEMS, DIM = 40, 8


def sequences(rng: np.random.Generator) -> tuple[UserSequence, ...]:
    out = []
    for u in range(30):
        n = int(rng.integers(2, 12))  # some users have too few events to be evaluated
        items = rng.choice(N_ITEMS, size=n, replace=False).astype(np.int64)
        out.append(
            UserSequence(f"u{u}", items, np.ones(n, np.int64), np.arange(n, dtype=np.float64))
        )
    return tuple(out)


def training_data(rng: np.random.Generator) -> TrainingData:
    return TrainingData(
        item_ids=tuple(f"i{n}" for n in range(N_ITEMS)),
        token_ids=np.zeros((N_ITEMS, 1), np.int64),
        dense=np.zeros((N_ITEMS, 0), np.float32),
        neighbours=np.full((N_ITEMS, 1), -1, np.int64),
        neighbour_weights=np.zeros((N_ITEMS, 1), np.float32),
        degrees=np.zeros(N_ITEMS, np.float32),
        sequences=sequences(rng),
    )


def unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out.astype(np.float32)


def test_the_store_scores_its_vectors_as_the_offline_evaluation_does() -> None:
    rng = np.random.default_rng(4)
    data = training_data(rng)
    cases = leave_one_out(data.sequences, "test")
    users = case_users(data.sequences, cases)
    user_vectors = unit(rng.normal(size=(len(users), DIM)))
    item_vectors = unit(rng.normal(size=(N_ITEMS, DIM)))
    with VectorStore(VectorStoreConfig()) as store:
        store.prepare("v1", DIM)
        records = [
            VectorRecord("items", i, v, 1, 0.0)
            for i, v in zip(data.item_ids, item_vectors, strict=True)
        ]
        records += [
            VectorRecord("users", u, v, 1, 0.0) for u, v in zip(users, user_vectors, strict=True)
        ]
        store.upsert("v1", records)
        store.flip("v1")
        got = evaluate_store(store, data, seed=1)
    negatives = sample_negatives(cases, N_ITEMS, 1)
    want = rank_metrics(vector_scorer(user_vectors, item_vectors), cases, negatives)
    for group in ("full", "sampled100"):
        assert got[group] == pytest.approx(want[group], abs=1e-12)
    assert got["full"]["recall@10"] > 0  # the comparison is not between two zeros
    assert got["coverage"]["users_without_vector"] == got["coverage"]["items_without_vector"] == 0
    assert relative_gap(got, want) == {
        "full": {"recall@10": 0.0, "ndcg@10": 0.0},
        "sampled100": {"hr@10": 0.0, "ndcg@10": 0.0},
    }


def test_a_missing_user_is_a_miss() -> None:
    rng = np.random.default_rng(5)
    data = training_data(rng)
    with VectorStore(VectorStoreConfig()) as store:
        store.prepare("v1", DIM)
        items = unit(rng.normal(size=(N_ITEMS, DIM)))
        store.upsert(
            "v1",
            [
                VectorRecord("items", i, v, 1, 0.0)
                for i, v in zip(data.item_ids, items, strict=True)
            ],
        )
        store.flip("v1")
        got = evaluate_store(store, data, seed=1)
    assert got["full"] == {"recall@10": 0.0, "ndcg@10": 0.0}
    assert got["coverage"]["users_without_vector"] == got["coverage"]["users"] > 0


def test_search_ranks_read_as_rank_metrics_ranks() -> None:
    history = (np.array([0, 1]), np.array([1, 1]), np.array([0.0, 1.0]))
    cases = leave_one_out(
        [UserSequence(f"u{n}", np.array([0, 1, 2 + n]), np.ones(3, np.int64), np.arange(3.0))
         for n in range(3)],
        "test",
    )  # fmt: skip
    assert all(np.array_equal(h[0], history[0]) for h in cases.histories)
    ranked = [[2, 5, 6], [7, 8, 3], [9, 10, 11]]  # targets 2, 3, 4: first, third, not returned
    scorer = search_scorer(ranked, [2, 3, 4], 20)
    negatives = np.tile(np.arange(5, 20), (3, 7))[:, :100]
    full = rank_metrics(scorer, cases, negatives)["full"]
    assert full["recall@10"] == pytest.approx(2 / 3)
    assert full["ndcg@10"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)
