"""The neighbour lists a re-encoder read last, by shard and item, kept while their version holds.

An item's neighbour list in one shard changes only in an apply that also bumps the item's
version in that shard, in the same script call: every list write (an increment, a rebase) comes
from a pair of that item, and every pair counts in its version. The one other write, the trim at
a block boundary, removes entries past rank `k_max`, which a read never sees. So a list read at
version v is still the list while the shard's version is v, and `read_items.lua` returns only
the head for an item whose version the caller names: the list is not read, its scores not
formatted, nothing is sent back. A state rebuilt from the log replays the same events to the
same lists (the apply is independent of the cuts), so a version names one list. The stamp
compared also carries the list's decay origin t0 (the time of its first pair, or of its last
rebase): a state wiped and rebuilt from a later offset under a running worker counts versions
from zero again, and t0 tells its lists from the old ones.

In a live stream about half of a dirty item's per-shard lists are unchanged since the pass
before: an item is dirtied through one shard while the others stay as they were.

A list is held as two byte strings, its members joined (read_items.lua joins them) and its packed
scores: about 0.55 KB for k_max = 50 short ids, where a tuple of k_max bytes objects took about
2.6 KB; the merge splits the members again on each read (about 10 us an item). A list not held
is read in full, so the cache is sized to the lists a live stream dirties (settings.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

Listed = tuple[bytes, bytes, bytes]  # stamp, joined members, packed scores


def stamp(version: bytes, t0: bytes | None) -> bytes:
    """What read_items.lua compares: the item's version and decay origin in the shard."""
    return version + b"|" + (t0 or b"")


class ListCache:
    """At most `size` (shard, item) lists, the least recently read evicted first; 0 is off."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lists: OrderedDict[tuple[str, str], Listed] = OrderedDict()
        self.hits = 0  # lists a reply said were unchanged
        self.sent = 0  # lists a reply carried in full

    def __len__(self) -> int:
        return len(self._lists)

    def known(self, tag: str, ids: Sequence[str]) -> dict[str, Listed]:
        """The lists held for these items of one shard (a snapshot: an eviction while the read
        is in flight cannot lose one the reply relies on)."""
        if not self._size:
            return {}
        return {i: found for i in ids if (found := self._lists.get((tag, i))) is not None}

    def settle(
        self, tag: str, item_id: str, reply: Sequence[Any], held: Listed | None
    ) -> Sequence[Any]:
        """A reply in full: (version, degree, t0, members, packed scores). A head alone says
        the list held is current; a full reply is kept for the next read."""
        if len(reply) == 3:
            if held is None:
                raise ValueError(f"read_items answered a head alone for {item_id!r}, held nothing")
            self.hits += 1
            self._keep((tag, item_id), held)
            return [*reply, held[1], held[2]]
        version, _, t0, members, packed = reply
        if version is not None:
            self.sent += 1
            if self._size:
                self._keep((tag, item_id), (stamp(version, t0), members, packed))
        return reply  # as it came: a pass settles thousands, so no copy

    def _keep(self, key: tuple[str, str], listed: Listed) -> None:
        self._lists[key] = listed
        self._lists.move_to_end(key)
        while len(self._lists) > self._size:
            self._lists.popitem(last=False)
