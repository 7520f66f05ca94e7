"""What downstream reads, measured on a Qdrant server: indexed search against exact search.

    sagestream bench --stage qdrant [--events 100000]    (events = item vectors here)

The vectors are item vectors (`vectors="model"`, the default): a model of production width (64)
trained for one epoch on a generated stream over the catalogue, then every catalogue item encoded
as the re-encoder encodes a cold item (content, no neighbours yet); the queries are held-out items
(similar-item reads). `vectors="noise"` is the hard case instead: unit vectors around a few hundred
topic centres with isotropic noise in all 64 dimensions, where neighbours are nearly equidistant
and every graph index loses recall. For each collection setting measured:

- upsert: points/s of the guarded write path (`VectorStore.upsert`, ``wait=True``), by batch
  size and over REST or gRPC: first inserts, then guarded updates of 20,000 existing points (what
  live passes do), with and without the payload index on ``state_version`` the guard filters on;
- build: seconds until the server reports the collection indexed (status green);
- search: recall@10 of the HNSW search against ``exact=True`` on the same server (the baseline:
  brute force over every point), and p50/p99 latency of each, over the same queries, at the
  server's default query beam and at ``hnsw_ef`` 128, 256 and 512 (`qdrant.search_ef`).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from encoders.data import FloatArray
from state import VectorRecord, VectorStore, VectorStoreConfig
from state.vectors import canonical_version

log = logging.getLogger(__name__)
VERSION = "bench"
SEARCH_EFS: tuple[int | None, ...] = (None, 128, 256, 512)  # None: the server's default beam


@dataclass(frozen=True)
class QdrantBenchConfig:
    url: str
    api_key: str | None = None
    items: int = 100_000
    dim: int = 64
    topics: int = 300
    queries: int = 500
    k: int = 10
    seed: int = 0
    grpc_port: int = 6334
    vectors: str = "model"  # or "noise"


@dataclass(frozen=True)
class Variant:
    """One collection setting; the first is the production default."""

    name: str
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    on_disk: bool = False
    prefer_grpc: bool = False
    batch: int = 256
    payload_index: bool = True


VARIANTS = (
    Variant("default (m 16, ef_construct 100, REST, batch 256)"),
    Variant("gRPC writes and searches", prefer_grpc=True),
    Variant("batch 64", batch=64),
    Variant("batch 1024", batch=1024),
    Variant("m 32, ef_construct 200", hnsw_m=32, hnsw_ef_construct=200),
    Variant("vectors on disk", on_disk=True),
    Variant("no state_version index", payload_index=False),
)


def item_like_vectors(cfg: QdrantBenchConfig, n: int, rng: np.random.Generator) -> FloatArray:
    """Unit vectors around `topics` centres, topic sizes Zipf-like (a few dense topics)."""
    centres = rng.normal(size=(cfg.topics, cfg.dim))
    weights = 1.0 / np.arange(1, cfg.topics + 1)
    topic = rng.choice(cfg.topics, size=n, p=weights / weights.sum())
    spread = rng.uniform(0.3, 0.9, size=(n, 1))
    raw = centres[topic] + spread * rng.normal(size=(n, cfg.dim)) * 1.5
    out: FloatArray = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    return out


def model_vectors(cfg: QdrantBenchConfig, n: int) -> FloatArray:
    """`n` cold-item vectors of a 64-wide model trained one epoch on a generated stream."""
    from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
    from streams.devtools.tiny_model import FEATURIZER, publish_tiny_model_on
    from streams.training.data import build_training_data

    stream = GeneratorConfig(users=5000, items=n, communities=50, events=60_000, seed=cfg.seed)
    catalog = generate_catalog(stream)
    log.info("training a %d-wide model on %d events over %d items", cfg.dim, stream.events, n)
    data = build_training_data(
        list(generate_events(stream)), {i.item_id: i for i in catalog}, FEATURIZER, k=5
    )
    with tempfile.TemporaryDirectory(prefix="sagestream-qdrant-bench-") as tmp:
        registry, version = publish_tiny_model_on(Path(tmp), data, seed=cfg.seed, width=cfg.dim)
        bundle = registry.load(version)
        rows = []
        for start in range(0, n, 2048):
            part = catalog[start : start + 2048]
            content = bundle.content_vectors(part)
            none = [np.zeros((0, content.shape[1]), dtype=np.float32)] * len(part)
            weights = [np.zeros(0, dtype=np.float32)] * len(part)
            degrees = np.zeros(len(part), dtype=np.float32)
            rows.append(bundle.item_vectors(content, none, weights, degrees))
    out: FloatArray = np.concatenate(rows).astype(np.float32)
    return out


def _store(cfg: QdrantBenchConfig, variant: Variant, prefix: str) -> VectorStore:
    return VectorStore(
        VectorStoreConfig(
            url=cfg.url,
            api_key=cfg.api_key,
            prefix=prefix,
            batch_size=variant.batch,
            prefer_grpc=variant.prefer_grpc,
            grpc_port=cfg.grpc_port,
            hnsw_m=variant.hnsw_m,
            hnsw_ef_construct=variant.hnsw_ef_construct,
            on_disk=variant.on_disk,
            payload_index=variant.payload_index,
            timeout_s=60.0,
        )
    )


def _indexed(client: QdrantClient, name: str, timeout_s: float = 900.0) -> tuple[float, float]:
    """Seconds until the optimizers are done (status green), and the share of vectors then in an
    HNSW index: segments under the server's indexing threshold stay plain and are searched
    exhaustively, as Qdrant does."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        info = client.get_collection(name)
        if info.status == models.CollectionStatus.GREEN:
            share = (info.indexed_vectors_count or 0) / max(1, info.points_count or 0)
            return time.monotonic() - began, share
        time.sleep(0.5)
    raise TimeoutError(f"{name} still optimising after {timeout_s:.0f}s")


def _search(
    client: QdrantClient, name: str, query: FloatArray, k: int, exact: bool, ef: int | None = None
) -> tuple[list[str], float]:
    """The ids found and the seconds the call took, as a reader would see them."""
    began = time.perf_counter()
    result = client.query_points(
        name,
        query=query.tolist(),
        limit=k,
        search_params=models.SearchParams(exact=exact, hnsw_ef=ef),
        with_payload=False,
    )
    return [str(p.id) for p in result.points], time.perf_counter() - began


def _quantiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    }


def run_variant(
    cfg: QdrantBenchConfig, variant: Variant, vectors: FloatArray, queries: FloatArray
) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    store = _store(cfg, variant, prefix)
    try:
        store.prepare(VERSION, cfg.dim)
        records = [VectorRecord("items", f"i{n}", vectors[n], 1, 0.0) for n in range(len(vectors))]
        began = time.perf_counter()
        chunk = 10_000  # one progress line per chunk; the store batches inside it
        for start in range(0, len(records), chunk):
            store.upsert(VERSION, records[start : start + chunk])
            log.info("%s: %d/%d upserted", variant.name, start + chunk, len(records))
        upsert_s = time.perf_counter() - began
        updates = [VectorRecord("items", r.entity_id, r.vector, 2, 0.0) for r in records[:20_000]]
        began = time.perf_counter()
        store.upsert(VERSION, updates)  # the live path: guarded updates of existing points
        update_s = time.perf_counter() - began
        client = store._connect()
        name = f"{prefix}items_{canonical_version(VERSION)}"
        build_s, indexed = _indexed(client, name)
        exact, truth = [], []
        for query in queries:
            want, took = _search(client, name, query, cfg.k, exact=True)
            truth.append(set(want))
            exact.append(took)
        by_ef = []
        for ef in SEARCH_EFS:  # the query-time beam: the reader's recall/latency knob
            seconds, recalls = [], []
            for query, want_ids in zip(queries, truth, strict=True):
                got, took = _search(client, name, query, cfg.k, exact=False, ef=ef)
                seconds.append(took)
                recalls.append(len(set(got) & want_ids) / len(want_ids))
            found: dict[str, Any] = {"hnsw_ef": ef, "recall@10": round(float(np.mean(recalls)), 4)}
            by_ef.append({**found, **_quantiles(seconds)})
        default = by_ef[0]
        return {
            "variant": variant.name,
            "upsert_points_per_s": round(len(records) / upsert_s),
            "guarded_update_points_per_s": round(len(updates) / update_s),
            "index_build_s": round(build_s, 1),
            "indexed_share": round(indexed, 3),
            "recall@10": default["recall@10"],
            "hnsw": {"p50_ms": default["p50_ms"], "p99_ms": default["p99_ms"]},
            "exact": _quantiles(exact),
            "by_ef": by_ef,
        }
    finally:
        try:
            client = store._connect()
            for kind in ("users", "items"):
                client.delete_collection(f"{prefix}{kind}_{canonical_version(VERSION)}")
        finally:
            store.close()


def run_qdrant_bench(
    cfg: QdrantBenchConfig, variants: tuple[Variant, ...] = VARIANTS
) -> dict[str, Any]:
    if cfg.vectors == "model":
        every = model_vectors(cfg, cfg.items + cfg.queries)
        order = np.random.default_rng(cfg.seed).permutation(len(every))
        vectors, queries = every[order[: cfg.items]], every[order[cfg.items :]]
    else:
        rng = np.random.default_rng(cfg.seed)
        vectors = item_like_vectors(cfg, cfg.items, rng)
        queries = item_like_vectors(replace(cfg, seed=cfg.seed + 1), cfg.queries, rng)
    rows = []
    for variant in variants:
        log.info("qdrant bench: %s", variant.name)
        rows.append(run_variant(cfg, variant, vectors, queries))
        log.info("qdrant bench: %s", rows[-1])
    base = rows[0]
    for row in rows:
        row["upsert_vs_default"] = round(
            row["upsert_points_per_s"] / base["upsert_points_per_s"], 2
        )
        row["hnsw_p99_vs_exact_p99"] = round(row["hnsw"]["p99_ms"] / row["exact"]["p99_ms"], 3)
    return {
        "items": cfg.items,
        "dim": cfg.dim,
        "queries": cfg.queries,
        "vectors": cfg.vectors,
        "rows": rows,
    }
