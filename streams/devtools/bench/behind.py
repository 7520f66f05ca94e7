"""The fan-out figure: stored user vectors built from item vectors older than the stored ones.

A user vector's payload carries `basis_version`, the sum of the material versions of the
distinct items of its encoder window it was built from (streams/vectors/reencoder.py). After a
drain, a user is behind when that sum is lower than the same sum over the item vectors stored
now: one of its items moved materially (`fanout_min_change`) after it and fan-out did not
rebuild it (hub cap, per-pass bound, or no fan-out at all). Users whose window names an item
with no stored vector are counted apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from encoders.data import encoder_window
from encoders.registry import ModelRegistry
from state import keys
from state.encode_inputs import EncodeInputs, UserInputs
from state.redis_io import text
from state.vectors import BASIS_VERSION, material_version
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.vectors.store import vector_store


async def _sequences(settings: Settings, user_ids: list[str], tail: int) -> dict[str, UserInputs]:
    """Each user's inputs from the shard that holds it (the one where its version is set)."""
    client = redis_client(settings.redis)
    prefix = settings.redis.key_prefix
    try:
        inputs = EncodeInputs(client, settings.state, prefix)
        tags = sorted(text(t) for t in await client.smembers(keys.shards_key(prefix)))
        found: dict[str, UserInputs] = {}
        for tag in tags:
            topic, partition = tag.rsplit(".", 1)
            read = await inputs.users(topic, int(partition), user_ids, tail=tail)
            found.update({u: inputs_ for u, inputs_ in read.items() if inputs_.version > 0})
        return found
    finally:
        await client.aclose()


async def users_behind(settings: Settings, version: str, user_ids: Iterable[str]) -> dict[str, Any]:
    """Users checked, behind their items, and without every item vector (see the docstring)."""
    root = settings.models.registry
    if root is None:
        raise ValueError("users_behind needs the model registry the run encoded with")
    seq_len = ModelRegistry(root).load(version).seq_len
    found = await _sequences(settings, sorted(set(user_ids)), seq_len + 1)
    windows = {
        user_id: {item for item, _, _ in encoder_window(inputs.sequence, seq_len)}
        for user_id, inputs in found.items()
    }
    needed = set().union(*windows.values()) if windows else set()
    with vector_store(settings) as store:
        users = store.get("users", list(windows), version=version)
        items = store.get("items", needed, version=version)
    behind = incomplete = 0
    for user_id, window in windows.items():
        if user_id not in users or not window:
            continue
        if not window <= items.keys():
            incomplete += 1
            continue
        current = sum(material_version(items[i].payload) for i in window)
        if int(users[user_id].payload.get(BASIS_VERSION, 0)) < current:
            behind += 1
    return {"users_checked": len(users), "behind": behind, "without_item_vectors": incomplete}
