"""Small Redis habits every store of this package shares: replies as text, errors, scripts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

from redis import exceptions as redis_errors

from state.exceptions import StateError, StateUnavailableError


def text(value: bytes | str) -> str:
    """Replies are bytes or str depending on the client's decode_responses; accept both."""
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def redis_errors_as_state(what: str) -> Iterator[None]:
    """Map redis-py errors onto the package's errors: transient ones say "retry"."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise StateUnavailableError(f"{what}: redis unavailable: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise StateError(f"{what}: {exc}") from exc


def load_lua(name: str) -> str:
    return resources.files("state").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
