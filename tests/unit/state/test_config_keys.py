"""StateConfig validation and the key schema's hash tags."""

from __future__ import annotations

import json
import math

import pytest

from state import StateConfig, StateError, keys


def test_defaults() -> None:
    cfg = StateConfig()
    assert cfg.action_weights == {"save": 3.0, "click": 1.0, "view": 0.25}
    assert cfg.decay_lambda == pytest.approx(math.log(2) / (7 * 86400))


def test_action_weights_are_frozen_copies() -> None:
    weights = {"save": 2.0}
    cfg = StateConfig(action_weights=weights)
    weights["save"] = 9.0
    assert cfg.action_weights["save"] == 2.0
    with pytest.raises(TypeError):
        cfg.action_weights["save"] = 1.0  # type: ignore[index]
    assert hash(cfg) == hash(StateConfig(action_weights={"save": 2.0}))


@pytest.mark.parametrize(
    "overrides",
    [
        {"k_max": 0},
        {"max_pairs": 0},
        {"slice_size": -1},
        {"half_life_s": 0.0},
        {"hub_alpha": math.nan},
        {"pair_horizon_s": -1.0},
        {"action_weights": {}},
        {"action_weights": {"sa|ve": 1.0}},
        {"action_weights": {"save": -1.0}},
    ],
)
def test_invalid_configs_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(StateError):
        StateConfig(**overrides)  # type: ignore[arg-type]


def test_every_shard_key_carries_the_partition_hash_tag() -> None:
    shard = keys.ShardKeys("ss", keys.shard_tag("engagements", 3))
    built = [
        shard.watermark(),
        shard.sequence("u"),
        shard.user("u"),
        shard.item("i"),
        shard.neighbours("i"),
        shard.context("c"),
        shard.dirty("users"),
        shard.redirty("items"),
    ]
    for key in built:
        assert key.startswith("ss:{engagements.3}:")
        assert key.count("{") == 1
    assert shard.sequence("u1") == "ss:{engagements.3}:seq:u1"
    assert keys.shards_key("ss") == "ss:shards"


def test_layout_matches_the_key_builders() -> None:
    layout = json.loads(keys.lua_layout())
    shard = keys.ShardKeys("p", "t.0")
    assert shard.watermark() == shard.base + layout["wm"]
    assert shard.dirty("users") == shard.base + layout["dirty_users"]
    assert shard.redirty("items") == shard.base + layout["redirty_items"]
    assert shard.neighbours("x") == shard.base + layout["nb"] + layout["sep"] + "x"


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "a b", "x" * 65])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(StateError):
        keys.check_prefix(prefix)


@pytest.mark.parametrize(("topic", "partition"), [("a{b}", 0), ("", 0), ("t", -1), ("t:x", 1)])
def test_bad_shards_are_refused(topic: str, partition: int) -> None:
    with pytest.raises(StateError):
        keys.shard_tag(topic, partition)
