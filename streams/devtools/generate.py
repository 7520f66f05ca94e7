"""Synthetic engagement streams with planted structure, for tests, the demo and benchmarks.

The structure is known, so tests can check that learning and neighbour lists recover it:

- user ``u{n}`` belongs to community ``n % communities``; item ``i{n}`` to ``n % communities``;
- a user engages items of its own community with probability ``p_in_community`` (otherwise a
  uniformly chosen community), item popularity is Zipf-skewed within a community;
- item ``i{n}`` has sub-genre ``(n // communities) % 4``; a user's board ``b{u}-{k}`` collects items
  of sub-genre ``k``, so items saved to one board share community and sub-genre (the pin-board
  graph);
- item titles and text come from the community's theme vocabulary, so content carries the signal
  too (for more than eight communities themes repeat, and categories still tell them apart).

Everything is a pure function of the config: one ``numpy`` Generator seeded from ``cfg.seed``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from streams.wire.events import Action, CatalogItem, Engagement, encode_engagement

# Eight themes of thirty words: small, hand-written vocabularies, enough for hashing features.
_VOCABULARY = {
    "cooking": (
        "recipe bread pasta garlic roast sauce oven soup baking spice butter noodle grill salad "
        "dough simmer curry dessert cake chili pan broth basil lemon flour kitchen meal stew tart "
        "caramel"
    ),
    "travel": (
        "beach island passport hostel flight itinerary mountain coast city train backpack harbor "
        "museum road trip village ferry desert canyon lagoon map airport cruise valley temple "
        "market trail resort border luggage"
    ),
    "fitness": (
        "workout squat cardio yoga stretch protein running marathon core plank dumbbell "
        "kettlebell sprint mobility hiit cycling rowing deadlift pushup endurance recovery gym "
        "pilates lunge abs tempo interval strength warmup cooldown"
    ),
    "gardening": (
        "seedling compost tomato mulch perennial bulb pruning soil herb raised bed orchid "
        "succulent greenhouse watering fern shrub bloom vine harvest seed trellis lawn moss rose "
        "tulip potting weeds shade orchard"
    ),
    "tech": (
        "laptop keyboard python server cloud gadget monitor router chip battery coding linux "
        "database robot drone sensor firmware kernel compiler cable headset tablet pixel circuit "
        "arduino backup network terminal debug gpu"
    ),
    "fashion": (
        "dress denim sneaker jacket scarf vintage outfit silk linen blazer boots handbag tailored "
        "runway pattern knit coat skirt sandal wool jewelry earring streetwear hat belt pleated "
        "velvet cardigan loafer tote"
    ),
    "music": (
        "guitar vinyl chord melody drum piano synth album concert bass lyric jazz rhythm playlist "
        "violin studio amp tempo choir remix record riff ukulele harmony festival orchestra beat "
        "mixtape pedal encore"
    ),
    "decor": (
        "sofa lamp rug shelf curtain cushion mirror wallpaper candle ceramic vase pillow bedroom "
        "loft minimalist rattan oak marble gallery wall bookcase lantern quilt throw terracotta "
        "macrame console pendant cozy nook"
    ),
}
THEMES: dict[str, tuple[str, ...]] = {
    name: tuple(words.split()) for name, words in _VOCABULARY.items()
}
SUBGENRES = 4
_SUBGENRE_NAMES = ("classic", "modern", "budget", "expert")
_GENERIC_WORDS = (
    "best easy guide ideas simple diy tips weekend small quick favorite new how to for with and "
    "the your top"
)
_GENERIC = tuple(_GENERIC_WORDS.split())  # shared filler, so content is not perfectly separable
_ACTIONS: tuple[Action, ...] = ("view", "click", "save")
_ACTION_P = (0.70, 0.22, 0.08)
_SURFACES = ("home", "search", "related")
_THEME_NAMES = tuple(THEMES)


@dataclass(frozen=True)
class GeneratorConfig:
    """Size, shape and randomness of a synthetic stream."""

    users: int = 1000
    items: int = 2000
    communities: int = 8
    events: int = 50_000
    seed: int = 7
    start_ts: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    span_s: float = 7 * 86400
    p_in_community: float = 0.85
    zipf_s: float = 1.1
    context_rate: float = 0.3  # share of views and clicks that came from one of the user's boards
    invalid_rate: float = 0.0  # share of malformed payloads in generate_payloads

    def __post_init__(self) -> None:
        if not 1 <= self.communities <= min(self.users, self.items):
            raise ValueError("need 1 <= communities <= min(users, items)")
        if self.events < 0 or self.span_s <= 3600:
            raise ValueError("events must be >= 0 and span_s > 3600")
        for name in ("p_in_community", "context_rate", "invalid_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


def _index(entity_id: str, prefix: str) -> int:
    if not entity_id.startswith(prefix) or not entity_id[1:].isdigit():
        raise ValueError(f"{entity_id!r} is not a generated {prefix}<n> id")
    return int(entity_id[1:])


def community_of_user(cfg: GeneratorConfig, user_id: str) -> int:
    """The planted community of a generated user id (``u{n}``)."""
    return _index(user_id, "u") % cfg.communities


def community_of_item(cfg: GeneratorConfig, item_id: str) -> int:
    """The planted community of a generated item id (``i{n}``)."""
    return _index(item_id, "i") % cfg.communities


def subgenre_of_item(cfg: GeneratorConfig, item_id: str) -> int:
    """The planted sub-genre of a generated item id; boards group items by it."""
    return (_index(item_id, "i") // cfg.communities) % SUBGENRES


def _theme(community: int) -> tuple[str, tuple[str, ...]]:
    """Theme name and vocabulary; names get a suffix once the eight themes repeat."""
    name = _THEME_NAMES[community % len(_THEME_NAMES)]
    label = name if community < len(_THEME_NAMES) else f"{name}-{community // len(_THEME_NAMES)}"
    return label, THEMES[name]


def generate_catalog(cfg: GeneratorConfig) -> list[CatalogItem]:
    """One item per id, its words drawn mostly from its community's theme."""
    rng = random.Random(cfg.seed)
    catalog = []
    for n in range(cfg.items):
        community = n % cfg.communities
        label, words = _theme(community)
        sub = _SUBGENRE_NAMES[(n // cfg.communities) % SUBGENRES]
        title_words = [*rng.sample(words, 2), rng.choice(_GENERIC)]
        rng.shuffle(title_words)
        body = [
            rng.choice(words) if rng.random() < 0.8 else rng.choice(_GENERIC) for _ in range(12)
        ]
        title = " ".join(title_words).capitalize()
        catalog.append(
            CatalogItem(
                item_id=f"i{n}",
                title=title,
                text=f"{title}. {sub} {' '.join(body)}",
                categories=(label, f"{label}/{sub}"),
            )
        )
    return catalog


def _diurnal_times(rng: np.random.Generator, n: int, start: float, span: float) -> np.ndarray:
    """Session start times, denser in the evening (UTC): rejection-sample a daily cycle."""
    out = np.empty(0)
    while out.size < n:
        t = rng.uniform(0.0, span, size=2 * n + 16)
        hour = ((start + t) % 86400.0) / 3600.0
        intensity = 1.0 + 0.7 * np.cos(2 * np.pi * (hour - 20.0) / 24.0)
        out = np.concatenate([out, t[rng.uniform(0.0, 1.7, size=t.size) < intensity]])
    return start + out[:n]


def _session_times(rng: np.random.Generator, cfg: GeneratorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(ts, user index) per event: sessions of a few minutes, hours apart, diurnal."""
    n = cfg.events
    lengths = np.minimum(rng.geometric(1 / 8, size=n // 4 + 8), 40)
    sessions = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    lengths = lengths[:sessions]
    activity = 1.0 / np.arange(1, cfg.users + 1) ** 0.7  # a few heavy users, a long tail
    session_user = rng.permutation(cfg.users)[
        rng.choice(cfg.users, size=sessions, p=activity / activity.sum())
    ]
    starts = _diurnal_times(rng, sessions, cfg.start_ts, cfg.span_s - 3600.0)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)  # index of each event's session start
    gaps = np.minimum(rng.exponential(40.0, size=first.size), 900.0)
    gaps[first] = 0.0  # undo the cumulative sum at each session boundary
    offsets = np.cumsum(gaps)
    offsets -= offsets[first]
    ts = np.repeat(starts, lengths) + offsets
    users = np.repeat(session_user, lengths)
    order = np.argsort(ts, kind="stable")[:n]
    return np.minimum(ts[order], cfg.start_ts + cfg.span_s), users[order]


def _pick_items(rng: np.random.Generator, cfg: GeneratorConfig, users: np.ndarray) -> np.ndarray:
    """Item index per event: own community mostly, Zipf popularity within a community."""
    c = cfg.communities
    community = users % c
    stray = rng.random(users.size) >= cfg.p_in_community
    community[stray] = rng.integers(0, c, size=int(stray.sum()))
    items = np.empty(users.size, dtype=np.int64)
    u = rng.random(users.size)
    for k in range(c):
        mask = community == k
        size = len(range(k, cfg.items, c))
        cdf = np.cumsum(1.0 / np.arange(1, size + 1) ** cfg.zipf_s)
        ranks = np.minimum(np.searchsorted(cdf / cdf[-1], u[mask]), size - 1)
        items[mask] = k + rng.permutation(size)[ranks] * c  # popularity not tied to id order
    return items


def generate_events(cfg: GeneratorConfig) -> Iterator[Engagement]:
    """Time-ordered engagements; saves carry the user's board for the item's sub-genre."""
    if cfg.events == 0:
        return
    rng = np.random.default_rng(cfg.seed)
    ts, users = _session_times(rng, cfg)
    items = _pick_items(rng, cfg, users)
    actions = rng.choice(3, size=ts.size, p=_ACTION_P)
    has_context = (actions == 2) | (rng.random(ts.size) < cfg.context_rate)
    boards = (items // cfg.communities) % SUBGENRES
    surfaces = rng.integers(0, len(_SURFACES), size=ts.size)
    rows = zip(
        ts.round(3).tolist(),
        users.tolist(),
        items.tolist(),
        actions.tolist(),
        has_context.tolist(),
        boards.tolist(),
        surfaces.tolist(),
        strict=True,
    )
    for i, (t, u, it, a, ctx, board, surface) in enumerate(rows):
        yield Engagement(
            event_id=f"g{cfg.seed}-{i}",
            user_id=f"u{u}",
            item_id=f"i{it}",
            action=_ACTIONS[a],
            ts=t,
            context_id=f"b{u}-{board}" if ctx else None,
            surface="board" if ctx else _SURFACES[surface],
        )


def generate_payloads(cfg: GeneratorConfig) -> Iterator[tuple[bytes, bytes]]:
    """(key, payload) pairs for producing to Kafka; ``invalid_rate`` of them are malformed.

    The key is the user id (the partitioning key) even for a malformed payload, as a buggy
    producer would send it.
    """
    rng = random.Random(cfg.seed)
    bad = malformed_payloads(cfg.seed, 64) if cfg.invalid_rate > 0 else []
    for event in generate_events(cfg):
        key = event.user_id.encode()
        if bad and rng.random() < cfg.invalid_rate:
            yield key, rng.choice(bad)[0]
        else:
            yield key, encode_engagement(event)


def _valid(rng: random.Random) -> dict[str, object]:
    n = rng.randrange(1_000_000)
    return {
        "v": 1,
        "event_id": f"m-{n}",
        "user_id": f"u{n % 997}",
        "item_id": f"i{n % 1999}",
        "action": rng.choice(_ACTIONS),
        "ts": 1_767_225_600.0 + n,
    }


def _with(rng: random.Random, **changes: object) -> bytes:
    obj = _valid(rng)
    obj.update(changes)
    return orjson.dumps(obj)


def _without(rng: random.Random, field: str) -> bytes:
    obj = _valid(rng)
    del obj[field]
    return orjson.dumps(obj)


def _bad_json(rng: random.Random) -> bytes:
    whole = _with(rng)
    choices = (
        whole[: rng.randrange(1, len(whole) - 1)],  # truncated
        whole.replace(b'"ts":', b'"ts":NaN,"x":', 1),  # NaN literal
        whole.replace(b'"action":"', b'"action":"\xff', 1),  # invalid UTF-8
        b"{'event_id': 'single quotes'}",
        b"",
    )
    return rng.choice(choices)


def _bad_id(rng: random.Random) -> bytes:
    field = rng.choice(("event_id", "user_id", "item_id", "context_id"))
    value = rng.choice(("a|b", "{tag}", "u}1", "has space", "", "x" * 129, "caf\u00e9", "a\nb"))
    return _with(rng, **{field: value})


def _payload_classes(rng: random.Random) -> list[tuple[bytes, str]]:
    """One payload per defect class; each payload has exactly one defect."""
    return [
        (_bad_json(rng), "bad_json"),
        (_with(rng, ts=1).replace(b'"ts":1', b'"ts":1e400', 1), "non_finite"),
        (_with(rng, pad="x" * 5000), "too_large"),
        (rng.choice((b"[1,2]", b'"event"', b"42", b"null", b"true")), "not_object"),
        (_with(rng, v=rng.choice((0, 2, "1", True, None))), "bad_version"),
        (
            _without(rng, rng.choice(("event_id", "user_id", "item_id", "action", "ts"))),
            "missing_field",
        ),
        (_with(rng, **rng.choice(_TYPE_DEFECTS)), "bad_type"),
        (_bad_id(rng), "bad_id"),
        (_with(rng, action=rng.choice(("like", "VIEW", "", "saved"))), "bad_action"),
        (_with(rng, ts=rng.choice((-1, 1_767_225_600_000, 5e9))), "bad_ts"),
        (_with(rng, weight=rng.choice((0, -1.5, 100.5, 1e9))), "bad_weight"),
        (_with(rng, surface=rng.choice(("", "s" * 65))), "bad_surface"),
    ]


_TYPE_DEFECTS: tuple[dict[str, object], ...] = (
    {"ts": "1767225600"},
    {"ts": True},
    {"user_id": 42},
    {"item_id": ["i1"]},
    {"action": {"kind": "view"}},
    {"weight": "2"},
    {"surface": 3},
    {"context_id": False},
)


def malformed_payloads(seed: int, n: int) -> list[tuple[bytes, str]]:
    """``n`` malformed engagement payloads with the reason the decoder must give, classes cycled."""
    rng = random.Random(seed)
    out: list[tuple[bytes, str]] = []
    while len(out) < n:
        out.extend(_payload_classes(rng))
    return out[:n]
