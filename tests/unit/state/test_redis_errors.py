"""Which Redis refusals the worker waits out (retry, then backpressure) and which stop it."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from state.exceptions import StateError, StateUnavailableError
from state.redis_io import redis_errors_as_state


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ConnectionError("Connection closed by server."),
        redis_errors.TimeoutError("Timeout reading from socket"),
        redis_errors.BusyLoadingError("Redis is loading the dataset in memory"),
        redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.ResponseError("MISCONF Errors writing to the AOF file: No space left"),
        redis_errors.ResponseError("BUSY Redis is busy running a script."),
        # a cluster client whose retries ran out mid-failover (neither is a RedisError)
        redis_errors.SlotNotCoveredError('Slot "866" is not covered by the cluster.'),
        redis_errors.RedisClusterException(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: x"
        ),
        redis_errors.RedisClusterException("All slots are not covered after query all ..."),
        redis_errors.RedisClusterException("startup_nodes could not agree on a valid slots ..."),
    ],
)
def test_refusals_that_clear_by_themselves_are_transient(error: Exception) -> None:
    with pytest.raises(StateUnavailableError), redis_errors_as_state("apply"):
        raise error


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.NoPermissionError("this user has no permissions to run the 'evalsha'"),
        redis_errors.ResponseError("ERR Error running script: sagestream: bad batch"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
        redis_errors.RedisClusterException("Cluster mode is not enabled on this node"),
    ],
)
def test_refusals_that_need_a_person_are_errors(error: Exception) -> None:
    with pytest.raises(StateError) as raised, redis_errors_as_state("apply"):
        raise error
    assert not isinstance(raised.value, StateUnavailableError)
