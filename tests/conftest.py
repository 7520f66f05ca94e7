"""Shared fixtures: real services once per session, each test isolated by its own names."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from tests.support.services import Services, provide


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
def make_settings(services: Services, key_prefix: str, tmp_path: Any) -> Callable[..., Settings]:
    """Settings on the test services with this test's own topics, group and key prefix."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": services.bootstrap_servers,
                "group_id": f"g-{key_prefix}",
            },
            "topics": {"engagements": f"eng-{key_prefix}", "items": f"items-{key_prefix}"},
            "redis": {"url": services.redis_url, "key_prefix": key_prefix},
            "qdrant": {"path": str(tmp_path / "qdrant")},
            "metrics": {"port": 0},
        }
        for section, fields in overrides.items():
            if isinstance(fields, dict):
                values.setdefault(section, {}).update(fields)
            else:
                values[section] = fields
        return Settings.load(**values)

    return factory
