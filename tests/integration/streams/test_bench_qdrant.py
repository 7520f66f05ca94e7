"""The Qdrant bench on a small set against the test server: consistent figures, nothing left."""

from __future__ import annotations

import pytest
from qdrant_client import QdrantClient

from state import VectorStoreConfig
from streams.devtools.bench.qdrant import QdrantBenchConfig, Variant, run_qdrant_bench

pytestmark = pytest.mark.integration


def test_qdrant_bench_reports_recall_and_latency_and_cleans_up(
    qdrant_config: VectorStoreConfig,
) -> None:
    assert qdrant_config.url is not None
    cfg = QdrantBenchConfig(url=qdrant_config.url, api_key=qdrant_config.api_key, items=3000,
                            queries=30, topics=20, vectors="noise")  # fmt: skip
    variants = (Variant("default"), Variant("batch 64", batch=64))
    before = _collections(qdrant_config)
    result = run_qdrant_bench(cfg, variants)
    assert [row["variant"] for row in result["rows"]] == ["default", "batch 64"]
    for row in result["rows"]:
        assert 0.0 <= row["recall@10"] <= 1.0
        assert row["upsert_points_per_s"] > 0 and row["guarded_update_points_per_s"] > 0
        assert 0.0 <= row["indexed_share"] <= 1.0
        for kind in ("hnsw", "exact"):
            assert 0 < row[kind]["p50_ms"] <= row[kind]["p99_ms"]
    assert result["rows"][0]["upsert_vs_default"] == 1.0
    assert _collections(qdrant_config) == before  # the bench's collections are gone


def _collections(config: VectorStoreConfig) -> set[str]:
    client = QdrantClient(url=config.url, api_key=config.api_key, check_compatibility=False)
    try:
        return {c.name for c in client.get_collections().collections}
    finally:
        client.close()
