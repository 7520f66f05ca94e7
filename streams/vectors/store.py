"""The worker's vector store, built from settings, and the model it should write first."""

from __future__ import annotations

import logging

from encoders.registry import ModelRegistry
from encoders.runtime import EncoderBundle
from state import VectorStore, VectorStoreConfig
from state.vectors import canonical_version
from streams.seams import NO_SEAMS, Seams
from streams.settings import Settings

log = logging.getLogger(__name__)

MEMORY = ":memory:"  # qdrant.path for an in-memory embedded store (benchmarks, tests)


def vector_store(settings: Settings, seams: Seams = NO_SEAMS) -> VectorStore:
    """The store the settings name, retrying under the worker's one retry policy."""
    q, retry = settings.qdrant, settings.retry
    config = VectorStoreConfig(
        url=q.url,
        path=None if q.url or str(q.path) == MEMORY else str(q.path),
        api_key=q.api_key.get_secret_value() if q.api_key else None,
        prefix=q.collection_prefix,
        batch_size=q.upsert_batch,
        write_concurrency=q.write_concurrency,
        prefer_grpc=q.prefer_grpc,
        grpc_port=q.grpc_port,
        hnsw_m=q.hnsw_m,
        hnsw_ef_construct=q.hnsw_ef_construct,
        on_disk=q.on_disk,
        search_ef=q.search_ef,
        shard_number=q.shard_number,
        replication_factor=q.replication_factor,
        write_consistency_factor=q.write_consistency_factor,
        retry_initial_s=retry.initial_s,
        retry_max_s=retry.max_s,
        unavailable_after_s=retry.store_unavailable_after_s,
    )
    return VectorStore(config, wrap_client=None if seams is NO_SEAMS else seams.qdrant)


def serving_bundle(
    registry: ModelRegistry, store: VectorStore, promoted: str, threads: int
) -> tuple[EncoderBundle, str | None]:
    """The bundle to write as primary, and the version to switch to afterwards (if any).

    The primary is what the aliases serve, so a restarted worker keeps feeding readers; a first
    deployment serves the promoted version at once (aliases point at its empty collections).
    The promoted version is loaded only when it is written first: otherwise the watcher
    validates it (and refuses a broken one, counted) while the serving version keeps serving,
    so a bad promotion is no crash loop. Raises ModelRejected only when nothing loadable is
    left to write.
    """
    serving = store.serving_version()
    if serving is not None and serving != canonical_version(promoted):
        try:
            return registry.load(serving, threads), promoted
        except Exception as exc:  # the serving version is gone or broken: write the promoted one
            log.warning(
                "aliases serve %s, which cannot be loaded (%s); writing %s", serving, exc, promoted
            )
            return registry.load(promoted, threads), promoted
    bundle = registry.load(promoted, threads)
    if serving is None:
        store.prepare(promoted, bundle.dim)
        store.flip(promoted)
    return bundle, None
