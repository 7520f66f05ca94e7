"""Training data from engagement events and a catalog, built by the same rules the stream uses.

Neighbour lists come from `state.coengagement` (the Redis scripts' Python twin) and are read
relative to each list's strongest neighbour, as the re-encoder reads them; items missing from the
catalog get their id as their only content, exactly as serving does (`state.catalog`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from encoders.data import (
    ACTION_CODES,
    FloatArray,
    IntArray,
    TrainingData,
    UserSequence,
    training_length,
)
from encoders.features import ContentFeaturizer, FeaturizerConfig, infer_dense_layout
from state.coengagement import CoEngagementGraph
from state.config import StateConfig
from streams.wire.events import CatalogItem, Engagement

log = logging.getLogger(__name__)

BASELINE_NEIGHBOURS = 50  # the co-occurrence baseline reads longer lists than the model
# The item-id token's hash range: 2^16 buckets keep two of 12k items sharing one at about 9%
# (birthday bound per item: N / buckets) for 16 MiB of embeddings at d = 64.
ID_BUCKETS = 1 << 16


class _NoContent:
    """Stand-in content for an item missing from the catalog: its id as the only token."""

    def __init__(self, item_id: str) -> None:
        self.item_id, self.title, self.text, self.features = item_id, "", "", None
        self.categories: tuple[str, ...] = (f"id:{item_id}",)


def user_sequences(
    events: Sequence[Engagement], index: Mapping[str, int]
) -> tuple[list[UserSequence], list[list[Engagement]]]:
    """Per-user time-ordered sequences (stable on input order for equal timestamps)."""
    by_user: dict[str, list[Engagement]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    sequences, ordered = [], []
    for user_id in sorted(by_user):
        evs = sorted(by_user[user_id], key=lambda e: e.ts)
        sequences.append(
            UserSequence(
                user_id,
                np.array([index[e.item_id] for e in evs], dtype=np.int64),
                np.array([ACTION_CODES[e.action] for e in evs], dtype=np.int64),
                np.array([e.ts for e in evs], dtype=np.float64),
            )
        )
        ordered.append(evs)
    return sequences, ordered


def neighbour_lists(
    train_events: Iterable[Engagement], item_ids: Sequence[str], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N, k]`` neighbour indices (-1 pads) and weights, and ``[N]`` item degrees, from the
    stream's own graph rules, read as the stream's readers read them: relative to each list's
    strongest neighbour (`merge_neighbours`), which no reading time changes."""
    events = sorted(train_events, key=lambda e: e.ts)
    graph = CoEngagementGraph(StateConfig(k_max=max(k, StateConfig.k_max)))
    graph.add_many(events)
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    ids = np.full((len(item_ids), k), -1, dtype=np.int64)
    weights = np.zeros((len(item_ids), k), dtype=np.float32)
    degrees = np.array([graph.item_degree(i) for i in item_ids], dtype=np.float32)
    for row, item_id in enumerate(item_ids):
        for col, (other, weight) in enumerate(graph.neighbours(item_id, k)):
            ids[row, col], weights[row, col] = index[other], weight
    return ids, weights, degrees


def build_training_data(
    events: Sequence[Engagement],
    catalog: Mapping[str, CatalogItem],
    featurizer_cfg: FeaturizerConfig,
    k: int,
) -> TrainingData:
    """Featurised items, user sequences and neighbour lists from training events only."""
    item_ids = tuple(sorted(set(catalog) | {e.item_id for e in events}))
    missing = [i for i in item_ids if i not in catalog]
    if missing:
        log.warning("%d items have no catalog entry: their id is their only content", len(missing))
    token_ids, dense = featurise_items(item_ids, catalog, featurizer_cfg)
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    sequences, ordered = user_sequences(events, index)
    train_events = [e for evs in ordered for e in evs[: training_length(len(evs))]]
    log.info("building neighbour lists from %d training events", len(train_events))
    neighbours, weights, degrees = neighbour_lists(train_events, item_ids, k)
    return TrainingData(item_ids, token_ids, dense, neighbours, weights, degrees, tuple(sequences))


def featurise_items(
    item_ids: Sequence[str], catalog: Mapping[str, CatalogItem], featurizer_cfg: FeaturizerConfig
) -> tuple[IntArray, FloatArray]:
    """``token_ids`` and ``dense`` rows of ``item_ids`` (an item without an entry: its id)."""
    contents = [catalog.get(i) or _NoContent(i) for i in item_ids]
    return ContentFeaturizer(featurizer_cfg).featurise_many(contents)


def featurizer_for(
    catalog: Mapping[str, CatalogItem], no_content: bool, no_ids: bool = False
) -> FeaturizerConfig:
    """Featuriser settings read off the catalog: its named dense vectors and their widths."""
    names, dims = infer_dense_layout(catalog.values())
    featurizer_cfg = FeaturizerConfig(
        dense_names=names, dense_dims=dims, id_buckets=0 if no_ids else ID_BUCKETS
    )
    return replace(featurizer_cfg, use_text=False) if no_content else featurizer_cfg
