"""Tests share one Qdrant server: each test's collections carry its own name prefix, and go when
the test ends (`VectorStore.purge`)."""

from __future__ import annotations

from state import VectorStore, VectorStoreConfig


def drop_prefixed(config: VectorStoreConfig) -> None:
    with VectorStore(config) as store:
        store.purge()
