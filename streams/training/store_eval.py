"""Score the vectors readers get from Qdrant, on the offline evaluation's own cases and metrics.

`sagestream eval --store` puts this beside the offline evaluation of the same model version, so
the two numbers differ only by what the serving path did to the vectors (the stream's state, the
re-encode schedule, the store), not by the protocol. Each leave-one-out case of
`encoders.evaluate` is read the way a downstream recommender reads: the user's vector through the
`users` alias, then a search of the items of that vector's own model version with the user's seen
items (the history, not the target: `rank_metrics` keeps a re-consumed target rankable) excluded.

- Full ranking (Recall@10, NDCG@10) comes from the search itself: the target's place among the
  returned top 10, or a miss when it is not returned.
- The sampled protocol (HR@10, NDCG@10 over the target and 100 unseen items) needs scores of
  items a top-10 search does not return, so it scores the stored item vectors (retrieved by id)
  against the stored user vector: the cosine Qdrant's search ranks by.

Both go through `rank_metrics`, so ranks and ties follow the offline rules exactly. A user or item
without a stored vector counts as a miss (its scores sit below every cosine); like offline, only
the data's own items are ranked (a stored item the data does not know is left out). `coverage`
says how many of each there were. The cases must be the test split of the events the stream was
fed, each user's up to the test target; otherwise the stored user vectors describe other histories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from encoders.data import FloatArray, TrainingData, UserSequence
from encoders.evaluate import (
    TOP_K,
    EvalCases,
    FloatMatrix,
    ScoreFn,
    leave_one_out,
    rank_metrics,
    sample_negatives,
)
from state.vectors import EntityKind, StoredPoint, VectorStore

MISSING = -2.0  # the score of an item without a stored vector: below every cosine
ID_PAGE = 1000  # ids per retrieve call


def case_users(sequences: Sequence[UserSequence], cases: EvalCases) -> list[str]:
    """The user of each test case, in case order (leave_one_out keeps users with >= 3 events)."""
    users = [seq.user_id for seq in sequences if len(seq.items) >= 3]
    lengths = [len(seq.items) - 1 for seq in sequences if len(seq.items) >= 3]
    if lengths != [len(items) for items, _, _ in cases.histories]:
        raise ValueError("cases are not the test split of these sequences")
    return users


def search_scorer(ranked: Sequence[Sequence[int]], targets: Sequence[int], n_items: int) -> ScoreFn:
    """Scores that rank each case's search results in their order above every other item and a
    target the search did not return below all of them, so `rank_metrics`' full ranking reads
    the search's own ranks."""

    def score(start: int, stop: int) -> FloatMatrix:
        out = np.zeros((stop - start, n_items), dtype=np.float64)
        for row, case in enumerate(range(start, stop)):
            hits = list(ranked[case])
            if targets[case] not in hits:
                out[row, targets[case]] = -1.0
            out[row, hits] = np.arange(len(hits), 0, -1, dtype=np.float64)
        return out

    return score


def stored_scorer(users: FloatArray, items: FloatArray, found: npt.NDArray[np.bool_]) -> ScoreFn:
    """Cosines of stored user rows against stored item rows; items without a vector score
    `MISSING`. Qdrant keeps cosine collections' vectors at unit length; normalising again costs
    nothing and makes the scores cosines whatever the store returned."""
    unit_users, unit_items = _unit(users), _unit(items)

    def score(start: int, stop: int) -> FloatMatrix:
        out = unit_users[start:stop] @ unit_items.T
        out[:, ~found] = MISSING
        return out

    return score


def _unit(rows: FloatArray) -> FloatMatrix:
    as64 = rows.astype(np.float64)
    norms = np.linalg.norm(as64, axis=1, keepdims=True)
    unit: FloatMatrix = as64 / np.where(norms > 0, norms, 1.0)
    return unit


def _read(
    store: VectorStore, kind: EntityKind, ids: Sequence[str], version: str | None
) -> dict[str, StoredPoint]:
    out: dict[str, StoredPoint] = {}
    for start in range(0, len(ids), ID_PAGE):
        out.update(store.get(kind, ids[start : start + ID_PAGE], version=version))
    return out


@dataclass
class _Reads:
    """What the store holds for the cases: user rows (zero when missing), each case's search
    results as item indices, item rows and which items have one."""

    model: str | None
    users: FloatArray  # [U, D]
    ranked: list[list[int]]
    items: FloatArray  # [N, D]
    found: npt.NDArray[np.bool_]  # [N]
    users_found: int = 0
    foreign_hits: int = 0


def _serving_users(
    store: VectorStore, user_ids: Sequence[str]
) -> tuple[str | None, dict[str, StoredPoint]]:
    """The users' vectors through the alias, and the one model version they come from."""
    stored = _read(store, "users", user_ids, None)
    models = {str(p.payload["model_version"]) for p in stored.values()}
    if len(models) > 1:
        raise ValueError(f"user vectors of several models behind the alias: {sorted(models)}")
    return next(iter(models), None), stored


def _store_reads(store: VectorStore, data: TrainingData, cases: EvalCases) -> _Reads:
    user_ids = case_users(data.sequences, cases)
    model, stored_users = _serving_users(store, user_ids)
    stored_items = _read(store, "items", data.item_ids, model)
    some = next(iter([*stored_users.values(), *stored_items.values()]), None)
    dim = 1 if some is None else some.vector.shape[0]
    n = len(data.item_ids)
    reads = _Reads(
        model,
        np.zeros((len(user_ids), dim), dtype=np.float32),
        [],
        np.zeros((n, dim), dtype=np.float32),
        np.zeros(n, dtype=bool),
    )
    index = {item_id: i for i, item_id in enumerate(data.item_ids)}
    for row, (user_id, (history, _, _)) in enumerate(zip(user_ids, cases.histories, strict=True)):
        point = stored_users.get(user_id)
        if point is None or model is None:
            reads.ranked.append([])
            continue
        reads.users[row], reads.users_found = point.vector, reads.users_found + 1
        seen = {data.item_ids[i] for i in history} - {data.item_ids[cases.targets[row]]}
        hits = store.search("items", point.vector, TOP_K, exclude_ids=seen, version=model)
        reads.ranked.append([index[h.entity_id] for h in hits if h.entity_id in index])
        reads.foreign_hits += sum(h.entity_id not in index for h in hits)
    for item_id, point in stored_items.items():
        reads.items[index[item_id]], reads.found[index[item_id]] = point.vector, True
    return reads


def evaluate_store(store: VectorStore, data: TrainingData, seed: int) -> dict[str, Any]:
    """Test metrics of the vectors in `store` (see the module docstring), with coverage."""
    cases = leave_one_out(data.sequences, "test")
    negatives = sample_negatives(cases, len(data.item_ids), seed)
    reads = _store_reads(store, data, cases)
    targets = [int(t) for t in cases.targets]
    searched = search_scorer(reads.ranked, targets, len(data.item_ids))
    full = rank_metrics(searched, cases, negatives)["full"]
    scored = stored_scorer(reads.users, reads.items, reads.found)
    sampled = rank_metrics(scored, cases, negatives)["sampled100"]
    coverage = {
        "model_version": reads.model,
        "users": len(cases),
        "users_without_vector": len(cases) - reads.users_found,
        "items": len(data.item_ids),
        "items_without_vector": int((~reads.found).sum()),
        "foreign_hits": reads.foreign_hits,
    }
    return {"full": full, "sampled100": sampled, "coverage": coverage}


def relative_gap(
    store: Mapping[str, Any], offline: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """(store - offline) / offline per metric: what the serving path costs (negative) or adds."""
    return {
        group: {
            name: (store[group][name] - value) / value if value else 0.0
            for name, value in offline[group].items()
        }
        for group in ("full", "sampled100")
    }
