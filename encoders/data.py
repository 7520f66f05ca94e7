"""Plain-array inputs shared by training, evaluation and serving.

A user's history is a :class:`UserSequence` (item indices in time order, action codes, epoch-second
timestamps). Sequences fed to the user encoder are *left-aligned*: position 0 holds the oldest of
the last M actions, positions ``length..M-1`` are padding (zero vector, action 0, zero time
features), and the encoder reads its output at ``length - 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from encoders.contract import NUM_TIME_FEATURES

ACTION_CODES: dict[str, int] = {"view": 1, "click": 2, "save": 3}  # 0 is padding

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]
TimeArray = npt.NDArray[np.float64]

_HOUR = 3600.0
_DAY = 86400.0
_WEEK = 7 * _DAY


@dataclass(frozen=True, slots=True)
class UserSequence:
    """One user's actions in time order: item indices, action codes (1..3), epoch seconds."""

    user_id: str
    items: IntArray
    actions: IntArray
    timestamps: TimeArray


@dataclass(frozen=True, slots=True)
class TrainingData:
    """Everything the trainer needs, as arrays indexed by item position ``0..N-1``.

    ``neighbours[i]`` lists up to K neighbour item indices of item i by descending weight (-1 pads),
    ``neighbour_weights[i]`` their weights (0 pads). Neighbours must come from training events only.
    """

    item_ids: tuple[str, ...]
    token_ids: IntArray  # [N, T]
    dense: FloatArray  # [N, F]
    neighbours: IntArray  # [N, K]
    neighbour_weights: FloatArray  # [N, K]
    degrees: FloatArray  # [N] engagement counts in the training events
    sequences: tuple[UserSequence, ...]  # full histories (evaluation holds out the last two)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        assert self.token_ids.shape[0] == n and self.dense.shape[0] == n
        assert self.neighbours.shape == self.neighbour_weights.shape
        assert self.neighbours.shape[0] == n and self.degrees.shape == (n,)


class _Action(Protocol):
    @property
    def item_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def ts(self) -> float: ...


def encoder_window(sequence: Iterable[_Action], seq_len: int) -> list[tuple[str, int, float]]:
    """What the user encoder reads of a sequence: its last `seq_len` usable actions plus the one
    before (which sets the first time gap), as (item, action code, ts); actions outside
    ACTION_CODES are left out. Serving and every bench read a sequence through this one rule."""
    usable = [
        (e.item_id, ACTION_CODES[e.action], e.ts) for e in sequence if e.action in ACTION_CODES
    ]
    return usable[-(seq_len + 1) :]


def training_length(n: int) -> int:
    """How many of a user's n time-ordered events are training events (leave-one-out split).

    The last event is the test target, the second last the validation target; users with fewer
    than three events are not evaluated and train on everything.
    """
    return n - 2 if n >= 3 else n


def time_features(timestamps: TimeArray) -> FloatArray:
    """Per-action time features ``[L, 5]``: log gap to the previous action (hours), and hour of
    day and day of week as sin/cos. Each row depends only on its own and the previous timestamp,
    so a causal model sees no future."""
    ts = np.asarray(timestamps, dtype=np.float64)
    return _time_features(ts, np.concatenate([ts[:1], ts[:-1]]))


def _time_features(ts: TimeArray, previous: TimeArray) -> FloatArray:
    """`time_features` of timestamps of any shape, given each one's previous timestamp (itself
    for the first action, a gap of 0)."""
    gap = ts - previous
    day = 2 * np.pi * (ts % _DAY) / _DAY
    week = 2 * np.pi * (ts % _WEEK) / _WEEK
    feats = [np.log1p(np.clip(gap, 0.0, None) / _HOUR), np.sin(day), np.cos(day)]
    feats += [np.sin(week), np.cos(week)]
    out = np.stack(feats, axis=-1).astype(np.float32)
    assert out.shape[-1] == NUM_TIME_FEATURES
    return out


def pack_user_histories(
    histories: Sequence[tuple[FloatArray, IntArray, TimeArray]], seq_len: int, dim: int
) -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
    """Left-aligned user-encoder inputs from histories of (item vectors ``[L, D]``, action codes
    ``[L]``, epoch seconds ``[L]``), oldest first. Only the last ``seq_len`` actions are used (the
    one before them, if given, only sets the first gap). Returns ``vectors [B, M, D]``,
    ``actions [B, M]``, ``time_features [B, M, 5]`` and ``lengths [B]`` (an empty history gives
    length 1 over a padding row; callers should not encode users without actions). The time
    features of the whole batch are computed at once: per row they cost more than the encoder."""
    b = len(histories)
    vectors = np.zeros((b, seq_len, dim), dtype=np.float32)
    actions = np.zeros((b, seq_len), dtype=np.int64)
    ts = np.zeros((b, seq_len), dtype=np.float64)
    previous = np.zeros((b, seq_len), dtype=np.float64)
    lengths = np.zeros(b, dtype=np.int64)
    for row, (vecs, acts, times) in enumerate(histories):
        n = min(len(acts), seq_len)
        if n == 0:
            continue
        assert len(vecs) == len(acts) == len(times), "history arrays differ in length"
        vectors[row, :n] = vecs[-n:]
        actions[row, :n] = acts[-n:]
        window = np.asarray(times, dtype=np.float64)[-(n + 1) :]
        ts[row, :n] = window[-n:]
        # the action before the window sets the first gap; without one, the first gap is 0
        previous[row, :n] = (
            window[:n] if len(window) > n else window[np.maximum(np.arange(n) - 1, 0)]
        )
        lengths[row] = n
    padding = np.arange(seq_len) >= lengths[:, None]
    features = _time_features(ts, previous)
    features[padding] = 0.0
    return vectors, actions, features, np.maximum(lengths, 1)


def pack_user_inputs(
    item_vectors: FloatArray,
    histories: Sequence[tuple[IntArray, IntArray, TimeArray]],
    seq_len: int,
) -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
    """:func:`pack_user_histories` for histories of item indices into ``item_vectors [N, D]``."""
    tail = seq_len + 1
    rows = [(item_vectors[i[-tail:]], a[-tail:], t[-tail:]) for i, a, t in histories]
    return pack_user_histories(rows, seq_len, item_vectors.shape[1])
