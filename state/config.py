"""Tuning knobs of the Redis state, shared by the Lua scripts and the pure-Python reference.

One frozen object is built at the entry point and passed down, so the stream and the offline
trainer (which builds neighbour lists with `CoEngagementGraph`) cannot drift apart silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from state.exceptions import StateError

# The action whose context (board, playlist...) links items: saving two items to one context
# pairs them even when the saves are far apart in the user's sequence.
CONTEXT_ACTION = "save"

# Forward decay stores w*exp(lambda*(ts - t0)); past this factor an item's list is rebased so the
# stored scores stay far away from float overflow (1e9 is about 30 half-lives). The scripts compare
# exponents, lambda*(ts - t0) > ln(limit), so exp() is never called where it would overflow.
REBASE_LIMIT = 1e9
REBASE_EXPONENT = math.log(REBASE_LIMIT)

# Ids and action names the scripts accept: no key separators and no sequence-entry separator.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def _default_action_weights() -> Mapping[str, float]:
    return MappingProxyType({"save": 3.0, "click": 1.0, "view": 0.25})


@dataclass(frozen=True)
class StateConfig:
    """Sizes, horizons and weights of the user sequences and co-engagement neighbour lists.

    `max_pairs` is 10, not 20: every pair is two neighbour-list writes, and those writes are
    most of the apply script's cost (the state bench, streams/devtools/bench/state.py: 20 -> 10
    took the apply from about 6.9k to 9.4k events/s, +35%, on the 2-core dev machine, with the
    bench's former generator). The pairs it drops are an event's 11th-20th previous actions within
    the one-hour horizon, i.e. only long sessions lose them; the co-engagement signal
    (PinSage/PinnerFormer-style) is carried by the few most recent actions, and the older ones
    still pair with the actions between (and through shared contexts).
    """

    seq_len: int = 200
    k_max: int = 50
    half_life_s: float = 7 * 86400.0
    pair_horizon_s: float = 3600.0
    max_pairs: int = 10
    max_event_age_s: float = 86400.0
    hub_alpha: float = 0.5
    context_len: int = 20
    action_weights: Mapping[str, float] = field(default_factory=_default_action_weights, hash=False)
    slice_size: int = 500
    trim_every: int = 500
    # The last `dedup_window` event ids of each user are kept; an event whose id is among them is
    # a duplicate (a producer's retry, a re-sent export) and changes nothing. 0 turns it off.
    # Bounded per user, so the memory it costs follows the users, not the stream's length.
    dedup_window: int = 64
    # Holders kept per item and shard (the users whose sequence holds it, newest first), which
    # the re-encoder's fan-out reads; an item held by more (a hub) keeps only its newest
    # holders. 0 keeps no holders at all (no fan-out).
    hold_max: int = 256

    def __post_init__(self) -> None:
        self._check_counts()
        for name in ("half_life_s", "pair_horizon_s", "max_event_age_s", "hub_alpha"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or (name == "half_life_s" and value == 0):
                raise StateError(f"StateConfig.{name} must be finite and >= 0, got {value!r}")
        weights = dict(self.action_weights)
        if not weights:
            raise StateError("StateConfig.action_weights must name at least one action")
        for action, weight in weights.items():
            if not ID_PATTERN.fullmatch(action):
                raise StateError(f"action name {action!r} is not a valid id")
            if not math.isfinite(weight) or weight < 0:
                raise StateError(f"action weight for {action!r} must be finite and >= 0")
        # A caller's dict must not be able to change a frozen config afterwards.
        object.__setattr__(self, "action_weights", MappingProxyType(weights))

    def _check_counts(self) -> None:
        positive = ("seq_len", "k_max", "max_pairs", "context_len", "slice_size", "trim_every")
        for least, names in ((1, positive), (0, ("dedup_window", "hold_max"))):
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, int) or value < least:
                    raise StateError(f"StateConfig.{name} must be an int >= {least}, got {value!r}")

    @property
    def decay_lambda(self) -> float:
        """Decay rate lambda = ln 2 / half-life, so a weight halves every `half_life_s`."""
        return math.log(2.0) / self.half_life_s
