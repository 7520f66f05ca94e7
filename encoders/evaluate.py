"""Leave-one-out evaluation: full ranking and SASRec's sampled protocol (baselines to score beside
a model are in ``encoders.baselines``).

Per user (time-ordered, at least three events): the last item is the test target, the second last
the validation target, and the model sees everything before the target. Full ranking scores every
item with the user's history removed (Recall@10, NDCG@10); the sampled protocol ranks the target
against 100 items drawn uniformly from those the user never interacted with (HR@10, NDCG@10).
Ties count half, so a constant scorer gets no credit for luck.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from encoders.data import IntArray, TimeArray, UserSequence

FloatMatrix = npt.NDArray[np.floating]
Metrics = dict[str, dict[str, float]]
ScoreFn = Callable[[int, int], FloatMatrix]  # (start, stop) over cases -> scores [stop-start, N]

TOP_K = 10
SAMPLED_NEGATIVES = 100


@dataclass(frozen=True, slots=True)
class EvalCases:
    """One row per evaluated user: the input history, the target and what the user touched."""

    histories: tuple[tuple[IntArray, IntArray, TimeArray], ...]
    targets: IntArray
    interacted: tuple[IntArray, ...]

    def __len__(self) -> int:
        return len(self.histories)


def leave_one_out(
    sequences: Sequence[UserSequence], split: Literal["validation", "test"]
) -> EvalCases:
    """Cases for users with at least three events; ``test`` targets the last item, ``validation``
    the second last, each with the history strictly before it."""
    cut = 1 if split == "test" else 2
    histories, targets, interacted = [], [], []
    for seq in sequences:
        n = len(seq.items)
        if n < 3:
            continue
        end = n - cut
        histories.append((seq.items[:end], seq.actions[:end], seq.timestamps[:end]))
        targets.append(int(seq.items[end]))
        interacted.append(np.unique(seq.items))
    return EvalCases(tuple(histories), np.asarray(targets, dtype=np.int64), tuple(interacted))


def sample_negatives(cases: EvalCases, n_items: int, seed: int) -> IntArray:
    """``[U, 100]`` items drawn uniformly (without replacement) from each user's unseen items."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(cases), SAMPLED_NEGATIVES), dtype=np.int64)
    for row, seen in enumerate(cases.interacted):
        unseen = np.setdiff1d(np.arange(n_items), seen, assume_unique=True)
        replace = len(unseen) < SAMPLED_NEGATIVES
        out[row] = rng.choice(unseen, size=SAMPLED_NEGATIVES, replace=replace)
    return out


def _rank(scores: FloatMatrix, target_scores: FloatMatrix) -> FloatMatrix:
    """0-based rank of each target among ``scores`` rows, ties counted half."""
    above = (scores > target_scores[:, None]).sum(axis=1)
    ties = (scores == target_scores[:, None]).sum(axis=1) - 1  # the target ties with itself
    ranks: FloatMatrix = above + 0.5 * np.clip(ties, 0, None)
    return ranks


def _hit_ndcg(ranks: FloatMatrix) -> tuple[float, float]:
    hit = ranks < TOP_K
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(hit.mean()) if len(ranks) else 0.0, float(ndcg.mean()) if len(ranks) else 0.0


def rank_metrics(
    score_fn: ScoreFn, cases: EvalCases, negatives: IntArray, chunk: int = 1024
) -> Metrics:
    """Full-ranking and sampled metrics of one scorer over ``cases``."""
    full_ranks, sampled_ranks = [], []
    for start in range(0, len(cases), chunk):
        stop = min(start + chunk, len(cases))
        scores = np.array(score_fn(start, stop), dtype=np.float64)  # [u, N]
        rows = np.arange(stop - start)
        targets = cases.targets[start:stop]
        target_scores = scores[rows, targets]
        sampled = scores[rows[:, None], negatives[start:stop]]  # [u, 100]
        sampled_ranks.append(
            _rank(np.concatenate([target_scores[:, None], sampled], 1), target_scores)
        )
        for row, (items, _, _) in enumerate(cases.histories[start:stop]):
            scores[row, items] = -np.inf
        scores[rows, targets] = target_scores  # a re-consumed target stays rankable
        full_ranks.append(_rank(scores, target_scores))
    recall, ndcg = _hit_ndcg(np.concatenate(full_ranks) if full_ranks else np.zeros(0))
    hr, sndcg = _hit_ndcg(np.concatenate(sampled_ranks) if sampled_ranks else np.zeros(0))
    return {
        "full": {"recall@10": recall, "ndcg@10": ndcg},
        "sampled100": {"hr@10": hr, "ndcg@10": sndcg},
    }


def vector_scorer(user_vectors: FloatMatrix, item_vectors: FloatMatrix) -> ScoreFn:
    """Dot-product scores of precomputed user vectors ``[U, D]`` against items ``[N, D]``."""
    return lambda start, stop: user_vectors[start:stop] @ item_vectors.T
