"""Who writes vectors: worker heartbeats and the barrier a model switch waits on, in Redis.

With several workers in one group, a switch may flip the aliases only once every live worker
dual-writes the new version; a worker still writing only the old one would leave the new
collections behind on its partitions after the flip. So:

* every worker beats into ``P:workers`` (a sorted set, score = unix time) between passes; one
  silent for `live_s` is dead (a kill -9) and holds nobody up;
* a worker joins ``P:switch:<version>`` once its dual writes are on;
* the backfill starts only when every live worker has joined, and one worker at a time runs it
  under a lease (``P:switch:<version>:backfill``) it renews per page; a dead holder's lease
  lapses and another worker starts the backfill again (insert-only pages make that harmless);
* the holder flips after its last page if every live worker is still in; the others notice the
  flip (`serving_version`) and make the new model their primary.

Every call goes through `redis_errors_as_state`, like the state's own: a beat that lands while a
Redis master fails over is a retry of the updater, not a crash of the worker.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import redis.asyncio as aioredis

from state.redis_io import redis_errors_as_state

LIVE_S = 15.0  # a worker that has not beaten for this long is dead
BEAT_EVERY_S = 1.0
LEASE_S = 30.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Crew:
    def __init__(
        self, client: aioredis.Redis, prefix: str, me: str | None = None, live_s: float = LIVE_S
    ) -> None:
        self._client, self._prefix = client, prefix
        self.me = me or worker_id()
        self._live_s = live_s
        self._beaten = 0.0

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    async def beat(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._beaten < BEAT_EVERY_S:
            return
        self._beaten = now
        workers = self._key("workers")
        with redis_errors_as_state("worker heartbeat"):
            await self._client.zadd(workers, {self.me: now})
            await self._client.zremrangebyscore(workers, "-inf", now - 10 * self._live_s)

    async def live(self) -> set[str]:
        since = time.time() - self._live_s
        with redis_errors_as_state("live workers"):
            found = await self._client.zrangebyscore(self._key("workers"), since, "+inf")
        return {_text(m) for m in found} | {self.me}

    async def join(self, version: str) -> None:
        """Say this worker dual-writes `version` from its next pass on."""
        key = self._key("switch", version)
        with redis_errors_as_state("switch barrier"):
            await self._client.sadd(key, self.me)
            await self._client.expire(key, 7 * 86400)

    async def waiting_for(self, version: str) -> set[str]:
        """Live workers that do not dual-write `version` yet (empty: the barrier is passed)."""
        with redis_errors_as_state("switch barrier"):
            joined = await self._client.smembers(self._key("switch", version))
        have = {_text(m) for m in joined}
        return await self.live() - have

    async def lead(self, version: str) -> bool:
        """Hold (or renew) the backfill lease of `version`; False while another worker has it."""
        key = self._key("switch", version, "backfill")
        lease_ms = int(LEASE_S * 1000)
        with redis_errors_as_state("backfill lease"):
            if await self._client.set(key, self.me, nx=True, px=lease_ms):
                return True
            holder = await self._client.get(key)
            if holder is not None and _text(holder) == self.me:
                await self._client.pexpire(key, lease_ms)
                return True
        return False

    async def release(self, version: str) -> None:
        with redis_errors_as_state("backfill lease"):
            await self._client.delete(self._key("switch", version, "backfill"))
