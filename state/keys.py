"""Every Redis key prefix, hash field and script name of the state store, in one place.

Key schema (``P`` is the deployment prefix, default ``ss``; ``T`` is a shard tag
``<topic>.<partition>``, one per Kafka partition of the engagements topic)::

    P:{T}:wm                  string  applied-offset watermark of that partition
    P:{T}:seq:<user>          list    the user's last `seq_len` actions, "item|action|ts"
    P:{T}:u:<user>            hash    v (user state version), tsmax (newest event ts seen)
    P:{T}:i:<item>            hash    v (item state version in this shard), deg (engagements
                                      in this shard, for hub damping), t0 (forward-decay origin)
    P:{T}:nb:<item>           zset    this shard's decayed co-engagement weights of <item>
    P:{T}:ctx:<context>       list    the context's last `context_len` saves, "item|ts"
    P:{T}:eid:<user>          list    the user's last `dedup_window` event ids (duplicates skip)
    P:{T}:hold:<item>         zset    the users of this shard holding <item> in their sequence,
                                      score = offset of their newest action on it; the newest
                                      `hold_max` kept (the hub cap). Re-encode fan-out reads it
    P:{T}:dirty:users|items   zset    entities waiting for re-encoding, score = first dirty ts
    P:{T}:redirty:users|items hash    entities dirtied again since the last `dirty()` read
    P:{T}:trimblock           string  offset block (offset // trim_every) of the last trim
    P:{T}:trimq               set     neighbour keys touched since that trim, trimmed on the next
    P:shards                  set     every shard tag ever applied (readers merge over these)

Why the ``{T}`` hash tag: Redis Cluster places a key by the text between the first ``{`` and
``}``, so every key of one partition lives in one slot. One script call applies one slice of one
partition and touches only that slot, which keeps the call atomic and valid on a cluster. The
apply script and the read scripts (read_items, read_users, read_holders) receive only the
watermark key in KEYS and build the other keys from it (same tag, same slot); Redis runs such
scripts on a cluster because the slot is the one the node serves, and the layout below is passed
to the script so this module stays the only definition.

Item neighbour lists are therefore sharded per partition; readers merge the shards (see
`state.coengagement.merge_neighbours`).
"""

from __future__ import annotations

import json
import re
from typing import Literal

from state.exceptions import StateError

SEP = ":"
ENTRY_SEP = "|"  # inside sequence and context entries; ids can never contain it

WATERMARK = "wm"
SEQUENCE = "seq"
USER = "u"
ITEM = "i"
NEIGHBOURS = "nb"
CONTEXT = "ctx"
EVENT_IDS = "eid"
HOLDERS = "hold"
DIRTY = "dirty"
REDIRTY = "redirty"
SHARDS = "shards"
TRIM_BLOCK = "trimblock"
TRIM_PENDING = "trimq"

FIELD_VERSION = "v"
FIELD_TS_MAX = "tsmax"
FIELD_DEGREE = "deg"
FIELD_T0 = "t0"

SCRIPT_APPLY = "apply_batch"
SCRIPT_READ_DIRTY = "read_dirty"
SCRIPT_CLEAR_DIRTY = "clear_dirty"
SCRIPT_READ_ITEMS = "read_items"
SCRIPT_MARK_DIRTY = "mark_dirty"
SCRIPT_READ_USERS = "read_users"
SCRIPT_READ_HOLDERS = "read_holders"

DirtyKind = Literal["users", "items"]
DIRTY_KINDS: tuple[DirtyKind, ...] = ("users", "items")

_PREFIX = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's own rule for topic names


def check_prefix(prefix: str) -> str:
    """Refuse prefixes with braces or separators that would break the hash tag or the layout."""
    if not _PREFIX.fullmatch(prefix):
        raise StateError(f"invalid key prefix {prefix!r}")
    return prefix


def shard_tag(topic: str, partition: int) -> str:
    """The hash tag of one Kafka partition, e.g. ``engagements.3``."""
    if not _TOPIC.fullmatch(topic):
        raise StateError(f"invalid topic name {topic!r}")
    if partition < 0:
        raise StateError(f"invalid partition {partition!r}")
    return f"{topic}.{partition}"


def parse_shard_tag(tag: str) -> tuple[str, int]:
    """(topic, partition) of a tag made by `shard_tag` (topics may hold dots, partitions not)."""
    topic, sep, partition = tag.rpartition(".")
    if not sep or not partition.isdigit():
        raise StateError(f"invalid shard tag {tag!r}")
    return topic, int(partition)


def shards_key(prefix: str) -> str:
    """The set of shard tags known to readers (lives outside every shard's slot)."""
    return f"{prefix}{SEP}{SHARDS}"


class ShardKeys:
    """Key builder for one shard; mirrors what the apply script builds from KEYS[1]."""

    def __init__(self, prefix: str, tag: str) -> None:
        self.tag = tag
        self.base = f"{prefix}{SEP}{{{tag}}}{SEP}"

    def watermark(self) -> str:
        return self.base + WATERMARK

    def sequence(self, user_id: str) -> str:
        return f"{self.base}{SEQUENCE}{SEP}{user_id}"

    def user(self, user_id: str) -> str:
        return f"{self.base}{USER}{SEP}{user_id}"

    def item(self, item_id: str) -> str:
        return f"{self.base}{ITEM}{SEP}{item_id}"

    def neighbours(self, item_id: str) -> str:
        return f"{self.base}{NEIGHBOURS}{SEP}{item_id}"

    def context(self, context_id: str) -> str:
        return f"{self.base}{CONTEXT}{SEP}{context_id}"

    def event_ids(self, user_id: str) -> str:
        return f"{self.base}{EVENT_IDS}{SEP}{user_id}"

    def holders(self, item_id: str) -> str:
        return f"{self.base}{HOLDERS}{SEP}{item_id}"

    def dirty(self, kind: DirtyKind) -> str:
        return f"{self.base}{DIRTY}{SEP}{kind}"

    def redirty(self, kind: DirtyKind) -> str:
        return f"{self.base}{REDIRTY}{SEP}{kind}"


def lua_layout() -> str:
    """The key layout as JSON for the apply script, so the script holds no key names of its own."""
    return json.dumps(
        {
            "sep": SEP,
            "entry_sep": ENTRY_SEP,
            "wm": WATERMARK,
            "seq": SEQUENCE,
            "user": USER,
            "item": ITEM,
            "nb": NEIGHBOURS,
            "ctx": CONTEXT,
            "eid": EVENT_IDS,
            "hold": HOLDERS,
            "dirty_users": f"{DIRTY}{SEP}users",
            "dirty_items": f"{DIRTY}{SEP}items",
            "redirty_users": f"{REDIRTY}{SEP}users",
            "redirty_items": f"{REDIRTY}{SEP}items",
            "f_version": FIELD_VERSION,
            "f_ts_max": FIELD_TS_MAX,
            "f_degree": FIELD_DEGREE,
            "f_t0": FIELD_T0,
            "trim_block": TRIM_BLOCK,
            "trim_pending": TRIM_PENDING,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


# -- per-item keys outside the partition shards (catalog content, re-encode basis) ------------
#
#     P:{i:<item>}:cat          hash    title, text, cats (JSON), feats (JSON), cv (content
#                                       version, +1 per put), ts (wall time of the last put),
#                                       nc (+1 per content put of an item it read)
#     P:{i:<item>}:readers      set     items whose encode listed this item as a neighbour, so
#                                       read its content (never pruned)
#     P:{i:<item>}:enc          hash    v (state version), m (model version), b (JSON basis:
#                                       the neighbour ids, weights and degree last encoded)
#     P:{catalog}:dirty:content zset    items whose content arrived, score = last put's wall time
#     P:{catalog}:redirty:content hash  never written; lets the shard scripts serve this zset
#
# Items belong to no partition, so each item gets its own hash tag: any worker reads and writes
# it, and every write touches one key (one slot). The catalog dirty zset is one slot of its own.

ITEM_TAG = "i"
CATALOG = "cat"
BASIS = "enc"
CATALOG_TAG = "catalog"
CONTENT_KIND = "content"

FIELD_TITLE = "title"
FIELD_TEXT = "text"
FIELD_CATEGORIES = "cats"
FIELD_FEATURES = "feats"
FIELD_CONTENT_VERSION = "cv"
FIELD_PUT_TS = "ts"
FIELD_NEIGHBOUR_CONTENT = "nc"
READERS = "readers"
FIELD_MODEL = "m"
FIELD_BASIS = "b"

SCRIPT_PUT_BASIS = "put_basis"


class ItemKeys:
    """Key builder for one item's partition-free keys (its own hash tag ``{i:<item>}``)."""

    def __init__(self, prefix: str, item_id: str) -> None:
        self.base = f"{prefix}{SEP}{{{ITEM_TAG}{SEP}{item_id}}}{SEP}"

    def catalog(self) -> str:
        return self.base + CATALOG

    def basis(self) -> str:
        return self.base + BASIS

    def readers(self) -> str:
        return self.base + READERS


def catalog_dirty_key(prefix: str) -> str:
    """Items whose content arrived and waits for encoding."""
    return f"{prefix}{SEP}{{{CATALOG_TAG}}}{SEP}{DIRTY}{SEP}{CONTENT_KIND}"


def catalog_redirty_key(prefix: str) -> str:
    """Same slot as `catalog_dirty_key`, so the shards' read/clear scripts work on it unchanged."""
    return f"{prefix}{SEP}{{{CATALOG_TAG}}}{SEP}{REDIRTY}{SEP}{CONTENT_KIND}"
