"""The synthetic stream: deterministic, time-ordered, and carrying the structure it promises."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from itertools import pairwise

import pytest

from streams.devtools.generate import (
    GeneratorConfig,
    community_of_item,
    community_of_user,
    generate_catalog,
    generate_events,
    generate_payloads,
    malformed_payloads,
    subgenre_of_item,
)
from streams.wire.events import REASONS, Engagement, Rejection, decode_engagement, encode_engagement

CFG = GeneratorConfig(users=300, items=600, communities=6, events=30_000, seed=3)


@pytest.fixture(scope="module")
def stream() -> list[Engagement]:
    return list(generate_events(CFG))


def test_deterministic_for_a_seed(stream: list[Engagement]) -> None:
    assert list(generate_events(CFG)) == stream
    assert generate_catalog(CFG) == generate_catalog(CFG)
    other = list(
        generate_events(GeneratorConfig(users=300, items=600, communities=6, events=30_000, seed=4))
    )
    assert other != stream


def test_time_ordered_within_span(stream: list[Engagement]) -> None:
    assert len(stream) == CFG.events
    times = [e.ts for e in stream]
    assert times == sorted(times)
    assert CFG.start_ts <= times[0] and times[-1] <= CFG.start_ts + CFG.span_s
    assert len({e.event_id for e in stream}) == CFG.events


def test_events_satisfy_the_contract(stream: list[Engagement]) -> None:
    for e in stream[:5000]:
        assert decode_engagement(encode_engagement(e)) == e


def test_planted_communities(stream: list[Engagement]) -> None:
    hits: dict[str, list[bool]] = defaultdict(list)
    for e in stream:
        hits[e.user_id].append(
            community_of_user(CFG, e.user_id) == community_of_item(CFG, e.item_id)
        )
    overall = sum(map(sum, hits.values())) / len(stream)
    # p_in_community plus the share of uniform strays that land home again: 0.85 + 0.15 / 6.
    assert 0.84 < overall < 0.91
    active = [h for h in hits.values() if len(h) >= 20]
    assert len(active) > 100
    assert sum(sum(h) / len(h) > 0.6 for h in active) / len(active) > 0.95


def test_popularity_is_skewed_within_a_community(stream: list[Engagement]) -> None:
    counts = Counter(e.item_id for e in stream if community_of_item(CFG, e.item_id) == 0)
    ranked = [n for _, n in counts.most_common()]
    assert ranked[0] > 10 * ranked[len(ranked) // 2]


def test_action_mix_and_boards(stream: list[Engagement]) -> None:
    actions = Counter(e.action for e in stream)
    assert abs(actions["view"] / CFG.events - 0.70) < 0.02
    assert abs(actions["click"] / CFG.events - 0.22) < 0.02
    assert abs(actions["save"] / CFG.events - 0.08) < 0.01
    saves = [e for e in stream if e.action == "save"]
    assert all(
        e.context_id == f"b{e.user_id[1:]}-{subgenre_of_item(CFG, e.item_id)}" for e in saves
    )
    others = [e for e in stream if e.action != "save"]
    share = sum(e.context_id is not None for e in others) / len(others)
    assert abs(share - CFG.context_rate) < 0.02


def test_sessions_are_bursty_and_diurnal(stream: list[Engagement]) -> None:
    by_user: dict[str, list[float]] = defaultdict(list)
    for e in stream:
        by_user[e.user_id].append(e.ts)
    gaps = sorted(b - a for ts in by_user.values() for a, b in pairwise(ts))
    assert gaps[len(gaps) // 2] < 300  # most steps are within a session, minutes apart
    assert sum(g > 3600 for g in gaps) / len(gaps) > 0.05  # and sessions are hours apart
    hours = Counter(int(e.ts % 86400 // 3600) for e in stream)
    assert hours[20] > 3 * hours[8]


def test_catalog_follows_communities() -> None:
    catalog = generate_catalog(CFG)
    assert [item.item_id for item in catalog] == [f"i{n}" for n in range(CFG.items)]
    for item in catalog[:60]:
        community = community_of_item(CFG, item.item_id)
        assert item.categories[0] == generate_catalog(CFG)[community].categories[0]
        assert item.categories[1].startswith(item.categories[0] + "/")
    assert len({item.categories[0] for item in catalog}) == CFG.communities
    many = generate_catalog(GeneratorConfig(users=20, items=20, communities=10, events=0))
    assert len({item.categories[0] for item in many}) == 10


def test_planted_truth_helpers() -> None:
    assert community_of_user(CFG, "u13") == 1
    assert community_of_item(CFG, "i13") == 1
    assert subgenre_of_item(CFG, "i13") == 2
    for bad in ("x13", "u", "u1a"):
        with pytest.raises(ValueError, match="not a generated"):
            community_of_user(CFG, bad)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="communities"):
        GeneratorConfig(users=3, communities=4)
    with pytest.raises(ValueError, match="p_in_community"):
        GeneratorConfig(p_in_community=1.5)
    assert list(generate_events(GeneratorConfig(events=0))) == []


def test_payloads_mix_in_malformed_ones() -> None:
    cfg = GeneratorConfig(users=50, items=100, communities=5, events=4000, invalid_rate=0.1)
    pairs = list(generate_payloads(cfg))
    assert pairs == list(generate_payloads(cfg))
    results = [decode_engagement(payload) for _, payload in pairs]
    rejected = sum(isinstance(r, Rejection) for r in results)
    assert 0.07 < rejected / len(pairs) < 0.13
    assert all(
        r.user_id == key.decode()
        for (key, _), r in zip(pairs, results, strict=True)
        if isinstance(r, Engagement)
    )
    clean = GeneratorConfig(users=50, items=100, communities=5, events=500)
    assert all(isinstance(decode_engagement(p), Engagement) for _, p in generate_payloads(clean))


def test_malformed_payloads_cover_every_class() -> None:
    cases = malformed_payloads(seed=5, n=120)
    assert cases == malformed_payloads(seed=5, n=120)
    assert len(cases) == 120
    reasons = Counter(reason for _, reason in cases)
    expected = REASONS - {"bad_title", "bad_text", "bad_categories", "bad_features"}  # catalog only
    assert set(reasons) == expected
    assert any(b"|" in p or b"{" in p or b" " in p for p, r in cases if r == "bad_id")


def test_fast_enough() -> None:
    cfg = GeneratorConfig(events=200_000)
    started = time.perf_counter()
    count = sum(1 for _ in generate_events(cfg))
    assert count == 200_000
    assert time.perf_counter() - started < 15.0  # about 1 s on a quiet 2-core machine
