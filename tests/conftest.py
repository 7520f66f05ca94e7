"""Shared fixtures: real services once per session, each test isolated by its own names."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from state import VectorStore, VectorStoreConfig
from streams.settings import Settings
from tests.support.kafka_sockets import close_cut_short_connects
from tests.support.qdrant import drop_prefixed
from tests.support.services import Services, provide

close_cut_short_connects()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    with provide() as found:
        yield found


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(services: Services) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def qdrant_config(services: Services, key_prefix: str) -> Iterator[VectorStoreConfig]:
    """The test Qdrant server, this test's collections under its own prefix (dropped after)."""
    prefix = f"{key_prefix}_"
    config = VectorStoreConfig(
        url=services.qdrant_url, api_key=services.qdrant_api_key, prefix=prefix
    )
    yield config
    drop_prefixed(config)


@pytest.fixture
def qdrant_store(qdrant_config: VectorStoreConfig) -> Iterator[VectorStore]:
    with VectorStore(qdrant_config) as store:
        yield store


@pytest.fixture
def make_settings(
    services: Services, key_prefix: str, qdrant_config: VectorStoreConfig
) -> Callable[..., Settings]:
    """Settings on the test services with this test's own topics, group, key prefix and
    collection prefix on the Qdrant server."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": services.bootstrap_servers,
                "group_id": f"g-{key_prefix}",
            },
            "topics": {"engagements": f"eng-{key_prefix}", "items": f"items-{key_prefix}"},
            "redis": {"url": services.redis_url, "key_prefix": key_prefix},
            "qdrant": {
                "url": qdrant_config.url,
                "api_key": qdrant_config.api_key,
                "collection_prefix": qdrant_config.prefix,
            },
            "metrics": {"port": 0},
        }
        for section, fields in overrides.items():
            if isinstance(fields, dict):
                values.setdefault(section, {}).update(fields)
            else:
                values[section] = fields
        return Settings.load(**values)

    return factory
