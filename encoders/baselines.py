"""The baselines every model is scored beside: popularity and the standard item co-occurrence
recommender.

Item co-occurrence, as its users know it (item-based "people who engaged with X also engaged with
Y"):

* **Counts.** Every pair of items within ``window`` positions of each other in a user's
  time-ordered sequence counts once per occurrence, in both directions (the matrix is symmetric),
  weighted ``1 / distance ** distance_power`` (0: every pair within the window counts 1). An item
  never counts with itself.
* **Fit only on what the model could see.** For a leave-one-out split the counts come from the
  cases' own histories: every evaluated user's events strictly before their target (for the test
  split that includes the validation target, which the model may also read as input), plus nothing
  else. Users too short to be evaluated are left out, as the ``EvalCases`` leave them out; no
  target is ever counted.
* **Scores.** A candidate's score is the sum of its counts with the user's ``last`` most recent
  items, the j-th most recent (j = 0, 1, ...) weighted ``recency ** j``.
* **Ties.** Training popularity (engagement counts in the same histories) is added with an epsilon
  far below the smallest non-zero co-occurrence contribution, so it orders items with equal counts
  (and every item for a user whose items have no co-engagements) without overriding any count.

The counts are a CSR matrix in plain numpy (no dense ``N x N``): memory grows with the number of
distinct pairs, at most ``2 * window * events``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from encoders.data import IntArray
from encoders.evaluate import EvalCases, FloatMatrix, ScoreFn

# Chosen on MovieLens 100K's validation split (each user's second-last item, counts fitted on the
# events before it), full NDCG@10; the test split (what `train` reports) in brackets, never used
# to choose. Grid: window 1/2/3/5/10/20/50/whole, distance power 0/0.5/1, last 1/2/3/5/10/20/50,
# recency 1/0.8/0.6/0.5/0.3; for some windows and distance powers, their best last and recency:
#   window  1            last 20, recency 0.8   0.1109 (0.1000)
#   window  3, flat      last 50, recency 0.3   0.1140 (0.1065)
#   window  5, flat      last 10, recency 0.8   0.1142 (0.1000)
#   window  5, 1/d       last  3, recency 0.5   0.1130 (0.1090)
#   window 10, flat      last  5, recency 0.5   0.1169 (0.0976)  <- chosen (best validation)
#   window 10, 1/d       last  3, recency 0.5   0.1161 (0.1071)
#   window 20, 1/d       last  5, recency 0.3   0.1140 (0.1083)
#   window 50, flat      last 10, recency 0.5   0.1033 (0.0899)
#   whole sequence, flat last  1                0.0798 (0.0793)
#   window 10, flat      last  5, recency 1     0.1086 (0.0945)
# The top twenty settings lie within 0.0015 on validation (one standard error is 0.008)
# and between 0.0975 and 0.1071 on test: the baseline is not sensitive to the choice.
COOCCURRENCE_WINDOW = 10
COOCCURRENCE_DISTANCE_POWER = 0.0
COOCCURRENCE_LAST = 5
COOCCURRENCE_RECENCY = 0.5
# Popularity's share of the smallest possible non-zero co-occurrence contribution.
TIE_BREAK_SHARE = 1e-6
_MERGE_AT = 1 << 22  # pair entries buffered before they are merged into the distinct pairs


def training_counts(cases: EvalCases, n_items: int) -> IntArray:
    """Engagements per item in the cases' histories (what a model of that split could see)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for items, _, _ in cases.histories:
        np.add.at(counts, items, 1)
    return counts


def popularity_scorer(item_counts: IntArray) -> ScoreFn:
    """Every user gets the training-set popularity of each item."""
    counts = item_counts.astype(np.float64)
    return lambda start, stop: np.tile(counts, (stop - start, 1))


@dataclass(frozen=True, slots=True)
class CoOccurrence:
    """Symmetric item-item co-occurrence counts as CSR: row ``i`` is
    ``indices[indptr[i]:indptr[i+1]]`` with weights ``data[...]`` (columns ascending)."""

    indptr: IntArray  # [N + 1]
    indices: IntArray  # [nnz]
    data: npt.NDArray[np.float64]  # [nnz]
    n_items: int
    window: int
    distance_power: float

    @classmethod
    def fit(
        cls,
        sequences: Sequence[IntArray],
        n_items: int,
        window: int = COOCCURRENCE_WINDOW,
        distance_power: float = COOCCURRENCE_DISTANCE_POWER,
    ) -> CoOccurrence:
        """Counts from time-ordered item sequences (see the module docstring)."""
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
        keys = np.zeros(0, dtype=np.int64)
        sums = np.zeros(0, dtype=np.float64)
        pending: list[tuple[IntArray, int]] = []
        buffered = 0
        longest = max((len(s) for s in seqs), default=0)
        for distance in range(1, min(window, longest - 1) + 1):
            same = owner[:-distance] == owner[distance:]
            a, b = flat[:-distance][same], flat[distance:][same]
            other = a != b
            if not other.any():
                continue
            a, b = a[other], b[other]
            pending.append((np.concatenate([a * n_items + b, b * n_items + a]), distance))
            buffered += 2 * len(a)
            if buffered >= max(len(keys), _MERGE_AT):
                # merged as it goes: memory follows the distinct pairs, not every pair found
                keys, sums = _merge(keys, sums, pending, distance_power)
                pending, buffered = [], 0
        keys, sums = _merge(keys, sums, pending, distance_power)
        rows, cols = np.divmod(keys, n_items) if n_items else (keys, keys)
        indptr = np.searchsorted(rows, np.arange(n_items + 1)).astype(np.int64)
        return cls(indptr, cols.astype(np.int64), sums, n_items, window, distance_power)

    def row(self, item: int) -> tuple[IntArray, npt.NDArray[np.float64]]:
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.indices[lo:hi], self.data[lo:hi]

    def min_weight(self) -> float:
        """The smallest weight one pair occurrence adds (the farthest distance in the window)."""
        return float(float(self.window) ** -self.distance_power)

    def scores(
        self,
        recent: Sequence[IntArray],
        last: int = COOCCURRENCE_LAST,
        recency: float = COOCCURRENCE_RECENCY,
    ) -> FloatMatrix:
        """``[len(recent), N]``: per user, the counts of their ``last`` newest items summed,
        the j-th newest weighted ``recency ** j`` (each sequence oldest first)."""
        tails = [np.asarray(seq, dtype=np.int64)[::-1][: max(last, 0)] for seq in recent]
        lengths = np.array([len(t) for t in tails], dtype=np.int64)
        item = np.concatenate([np.zeros(0, np.int64), *tails])  # newest first per user
        user = np.repeat(np.arange(len(recent)), lengths)
        weight = recency ** (
            np.arange(len(item)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        starts, counts = self.indptr[item], self.indptr[item + 1] - self.indptr[item]
        total = int(counts.sum())
        # positions of every gathered row entry, without a Python loop over the entries
        at = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
        flat = np.repeat(user, counts) * self.n_items + self.indices[at]
        values = np.repeat(weight, counts) * self.data[at]
        out = np.bincount(flat, values, minlength=len(recent) * self.n_items).astype(np.float64)
        return out.reshape(len(recent), self.n_items)


def _merge(
    keys: IntArray,
    sums: npt.NDArray[np.float64],
    pending: Sequence[tuple[IntArray, int]],
    distance_power: float,
) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """Sorted distinct pair keys and their summed weights, with the ``pending`` pairs added."""
    if not pending:
        return keys, sums
    added = [np.full(len(step), float(d) ** -distance_power) for step, d in pending]
    merged, inverse = np.unique(
        np.concatenate([keys, *(step for step, _ in pending)]), return_inverse=True
    )
    summed = np.bincount(inverse, np.concatenate([sums, *added]), minlength=len(merged))
    return merged.astype(np.int64, copy=False), summed.astype(np.float64, copy=False)


def cooccurrence_scorer(
    cases: EvalCases,
    n_items: int,
    *,
    window: int = COOCCURRENCE_WINDOW,
    distance_power: float = COOCCURRENCE_DISTANCE_POWER,
    last: int = COOCCURRENCE_LAST,
    recency: float = COOCCURRENCE_RECENCY,
) -> ScoreFn:
    """The standard co-occurrence recommender over ``cases``, fitted on their histories only."""
    histories = [items for items, _, _ in cases.histories]
    model = CoOccurrence.fit(histories, n_items, window, distance_power)
    popularity = training_counts(cases, n_items).astype(np.float64)
    oldest = min(1.0, recency ** max(last - 1, 0)) if recency > 0 else 1.0  # only j=0 counts
    smallest = model.min_weight() * oldest
    tie = popularity / (popularity.max(initial=0.0) + 1.0) * smallest * TIE_BREAK_SHARE

    def score(start: int, stop: int) -> FloatMatrix:
        scores = model.scores(histories[start:stop], last, recency)
        scores += tie
        return scores

    return score
