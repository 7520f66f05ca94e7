"""Redis state of the engagements stream and its pure-Python reference.

`state` knows nothing of Kafka or the encoders: it is handed (offset, event) batches of one
(topic, partition) and keeps user sequences, co-engagement neighbour lists, applied-offset
watermarks and dirty marks. `keys` holds the key schema; `lua/` the scripts.
"""

from state.coengagement import CoEngagementGraph, EventLike, SeqEntry, merge_neighbours
from state.config import StateConfig
from state.exceptions import InvalidBatchError, StateError, StateUnavailableError
from state.redis_state import ApplyResult, RedisState

__all__ = [
    "ApplyResult",
    "CoEngagementGraph",
    "EventLike",
    "InvalidBatchError",
    "RedisState",
    "SeqEntry",
    "StateConfig",
    "StateError",
    "StateUnavailableError",
    "merge_neighbours",
]
