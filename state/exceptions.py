"""Errors raised by the state package.

Callers need to tell two cases apart: a batch that can never be applied (a bug upstream, the
decoder let something through; retrying will not help) and a store that is briefly unreachable
(pause and retry; never dead-letter). Everything else is a plain `StateError`.
"""

from __future__ import annotations


class StateError(Exception):
    """Base class for every error the state package raises."""


class InvalidBatchError(StateError):
    """The state script refused a batch before writing anything; a retry fails the same way."""


class StateUnavailableError(StateError):
    """Redis could not be reached or timed out; the caller should pause and retry the same batch."""


class VectorStoreUnavailable(StateUnavailableError):
    """Qdrant stayed unreachable past the configured deadline; pause consumption and retry.

    A subclass of `StateUnavailableError` so every caller that already pauses on an unreachable
    Redis pauses on an unreachable Qdrant too: nothing is dead-lettered, nothing is committed.
    """
