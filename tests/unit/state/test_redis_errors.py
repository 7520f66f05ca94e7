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
    ],
)
def test_refusals_that_need_a_person_are_errors(error: Exception) -> None:
    with pytest.raises(StateError) as raised, redis_errors_as_state("apply"):
        raise error
    assert not isinstance(raised.value, StateUnavailableError)
