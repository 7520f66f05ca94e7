"""Event streams the worker tests share: generated events with bad records mixed in."""

from __future__ import annotations

from streams.devtools.generate import GeneratorConfig, generate_events, malformed_payloads
from streams.devtools.produce import produce_engagements, produce_raw
from streams.settings import Settings
from streams.wire.events import Engagement, encode_engagement
from streams.wire.topics import ensure_topics

SMALL = GeneratorConfig(users=150, items=300, communities=4, events=3000, seed=11)


DUPLICATES = 3


def produce_mixed(settings: Settings, cfg: GeneratorConfig, bad: int) -> list[tuple[bytes, str]]:
    """Valid generated events with malformed payloads, one mis-keyed and one keyless event in
    between, and `DUPLICATES` valid events sent twice (a producer's retry: same key, same bytes),
    which the state applies once."""
    ensure_topics(settings)
    events = list(generate_events(cfg))
    half = len(events) // 2
    produce_engagements(settings, events[:half])
    produce_engagements(settings, events[half - DUPLICATES : half])
    malformed = malformed_payloads(seed=3, n=bad)
    produce_raw(
        settings, [(b"u-bad", payload) for payload, _ in malformed], settings.topics.engagements
    )
    mis_keyed = events[half]
    keyless = events[half + 1]
    produce_raw(
        settings,
        [(b"someone-else", _encode(mis_keyed)), (None, _encode(keyless))],
        settings.topics.engagements,
    )
    produce_engagements(settings, events[half + 2 :])
    return [*malformed, (_encode(mis_keyed), "key_mismatch"), (_encode(keyless), "missing_key")]


def _encode(event: Engagement) -> bytes:
    return encode_engagement(event)
