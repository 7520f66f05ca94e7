"""A worker's heartbeat and switch barrier wait out a Redis that is gone (a master failing
over) like every state call: `StateUnavailableError`, which the updater retries, never a raw
redis-py error, which it would take for a bug and stop the worker on (exit 70)."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from state.exceptions import StateUnavailableError
from streams.vectors.crew import Crew


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_every_crew_call_on_an_unreachable_redis_is_unavailability() -> None:
    client = aioredis.Redis(
        host="127.0.0.1", port=closed_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    crew = Crew(client, "t")
    try:
        for call in (
            lambda: crew.beat(force=True),
            crew.live,
            lambda: crew.join("v2"),
            lambda: crew.waiting_for("v2"),
            lambda: crew.lead("v2"),
            lambda: crew.release("v2"),
        ):
            with pytest.raises(StateUnavailableError):
                await call()
    finally:
        await client.aclose()
