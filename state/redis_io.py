"""Small Redis habits every store of this package shares: replies as text, errors, scripts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, cast

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from state.exceptions import StateError, StateUnavailableError


def text(value: bytes | str) -> str:
    """Replies are bytes or str depending on the client's decode_responses; accept both."""
    return value.decode() if isinstance(value, bytes) else value


# Refusals that clear without a code change: memory freed or maxmemory raised (OOM), a disk
# that takes writes again (MISCONF), a failover finishing (READONLY, MASTERDOWN, CLUSTERDOWN,
# TRYAGAIN), a script finishing (BUSY). Redis refuses a writing script before it runs, so
# retrying one of these never applies half a batch. (LOADING is a ConnectionError already.)
CLEARING_ERRORS: tuple[type[redis_errors.RedisError], ...] = (
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
)
CLEARING_CODES = ("MISCONF", "BUSY")  # no class of their own: the code leads the message
# What redis-py's cluster client raises once its own retries during a failover are spent: a slot
# whose master is gone and not yet replaced, and a topology refresh that found no node, gaps or
# nodes still disagreeing. Neither class is a RedisError; the client's other
# RedisClusterExceptions (no target node, cluster mode off, ...) are misuse and stay errors.
TOPOLOGY_ERRORS = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree",
)


def clears_by_itself(exc: BaseException) -> bool:
    if isinstance(exc, redis_errors.SlotNotCoveredError):
        return True
    if isinstance(exc, redis_errors.RedisClusterException):
        return str(exc).startswith(TOPOLOGY_ERRORS)
    return isinstance(exc, CLEARING_ERRORS) or str(exc).startswith(CLEARING_CODES)


@contextmanager
def redis_errors_as_state(what: str) -> Iterator[None]:
    """Map redis-py errors onto the package's errors: transient ones say "retry"."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise StateUnavailableError(f"{what}: redis unavailable: {exc}") from exc
    except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
        if clears_by_itself(exc):
            raise StateUnavailableError(f"{what}: redis refuses for now: {exc}") from exc
        raise StateError(f"{what}: {exc}") from exc


def load_lua(name: str) -> str:
    return resources.files("state").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def is_cluster(client: object) -> bool:
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


async def wait_for_replicas(
    client: aioredis.Redis, written: Iterable[str], replicas: int, timeout_s: float
) -> None:
    """Return once `replicas` replicas hold every write made so far on the masters of the keys
    `written` (Redis WAIT, one per master); raise `StateUnavailableError` when fewer do in time.

    Replication is asynchronous: a master that crashes right after answering may be replaced by
    a replica that never saw the write. A caller that commits Kafka offsets only after this
    returns loses nothing to a failover; the retry re-applies what the new master lacks (the
    watermark skips the rest).
    """
    if replicas <= 0:
        return
    timeout_ms = max(1, int(timeout_s * 1000))
    with redis_errors_as_state("wait for replicas"):
        if is_cluster(client):
            cluster = cast(Any, client)
            nodes = {
                cluster.get_node_from_key(key).name: cluster.get_node_from_key(key)
                for key in written
            }
            for node in nodes.values():
                acked = await cluster.execute_command(
                    "WAIT", replicas, timeout_ms, target_nodes=node
                )
                _enough(int(acked), replicas, node.name)
        else:
            acked = await cast(Any, client).execute_command("WAIT", replicas, timeout_ms)
            _enough(int(acked), replicas, "redis")


def _enough(acked: int, wanted: int, where: str) -> None:
    if acked < wanted:
        raise StateUnavailableError(
            f"{where}: the write is on {acked} of the {wanted} replicas asked for; retrying "
            "(a failover or a replica resyncing)"
        )
