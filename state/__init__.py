"""Redis state of the engagements stream and its pure-Python reference.

`state` knows nothing of Kafka or the encoders: it is handed (offset, event) batches of one
(topic, partition) and keeps user sequences, co-engagement neighbour lists, applied-offset
watermarks and dirty marks. `catalog` keeps item content for any worker to encode from;
`encode_inputs` reads what re-encoding needs in batches and records each item's encode basis.
`keys` holds the key schema; `lua/` the scripts. `vectors` is the
Qdrant sink: versioned collection pairs behind aliases, upserts guarded by state_version.
"""

from state.catalog import CatalogRecord, CatalogStore, ContentItem
from state.coengagement import CoEngagementGraph, Event, EventLike, SeqEntry, merge_neighbours
from state.config import StateConfig
from state.encode_inputs import EncodeBasis, EncodeInputs, ItemInputs, UserInputs
from state.exceptions import (
    InvalidBatchError,
    StateError,
    StateUnavailableError,
    VectorStoreUnavailable,
)
from state.redis_state import ApplyResult, RedisState
from state.vectors import (
    EntityKind,
    Hit,
    StoredPoint,
    VectorRecord,
    VectorStore,
    VectorStoreConfig,
    point_id,
)

__all__ = [
    "ApplyResult",
    "CatalogRecord",
    "CatalogStore",
    "CoEngagementGraph",
    "ContentItem",
    "EncodeBasis",
    "EncodeInputs",
    "EntityKind",
    "Event",
    "EventLike",
    "Hit",
    "InvalidBatchError",
    "ItemInputs",
    "RedisState",
    "SeqEntry",
    "StateConfig",
    "StateError",
    "StateUnavailableError",
    "StoredPoint",
    "UserInputs",
    "VectorRecord",
    "VectorStore",
    "VectorStoreConfig",
    "VectorStoreUnavailable",
    "merge_neighbours",
    "point_id",
]
