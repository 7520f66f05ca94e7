"""The model side of a pass: onnxruntime calls in fixed-size batches, and the content cache.

A batch bounds the memory of one call; the calls run in a worker thread (onnxruntime releases the
GIL), so the event loop keeps heartbeating while a pass encodes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from encoders.data import FloatArray, IntArray, TimeArray
from encoders.runtime import EncoderBundle
from state.catalog import CatalogRecord


def batches(n: int, size: int) -> Iterable[slice]:
    return (slice(start, min(n, start + size)) for start in range(0, n, size))


def content_rows(bundle: EncoderBundle, records: Sequence[CatalogRecord], batch: int) -> FloatArray:
    parts = [bundle.content_vectors(records[s]) for s in batches(len(records), batch)]
    return np.concatenate(parts)


def item_rows(
    bundle: EncoderBundle,
    own: FloatArray,
    nbr: Sequence[FloatArray],
    weights: Sequence[FloatArray],
    degrees: FloatArray,
    batch: int,
) -> FloatArray:
    parts = [
        bundle.item_vectors(own[s], nbr[s], weights[s], degrees[s])
        for s in batches(len(own), batch)
    ]
    return np.concatenate(parts)


def user_rows(
    bundle: EncoderBundle,
    histories: Sequence[tuple[FloatArray, IntArray, TimeArray]],
    batch: int,
) -> FloatArray:
    parts = [bundle.user_vectors(histories[s]) for s in batches(len(histories), batch)]
    return np.concatenate(parts)


class ContentCache:
    """Content vectors of one model by (item, content version), least recently used evicted.

    A content version changes whenever the catalog stores new content, so an entry can never be
    stale for its key; a model swap clears the cache, since the vectors are the model's."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._rows: OrderedDict[tuple[str, int], FloatArray] = OrderedDict()

    def get(self, item_id: str, content_version: int) -> FloatArray | None:
        key = (item_id, content_version)
        vector = self._rows.get(key)
        if vector is not None:
            self._rows.move_to_end(key)
        return vector

    def put(self, item_id: str, content_version: int, vector: FloatArray) -> None:
        self._rows[(item_id, content_version)] = vector
        while len(self._rows) > self._capacity:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)
