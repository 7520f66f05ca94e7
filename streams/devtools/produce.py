"""Putting events on Kafka: the generator, replays of real logs, tests and benchmarks use this."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace

from kafka import KafkaProducer

from streams.settings import Settings
from streams.wire.events import CatalogItem, Engagement, encode_catalog_item, encode_engagement

log = logging.getLogger(__name__)


def kafka_producer(settings: Settings) -> KafkaProducer:
    """Idempotent, acks=all, batched: kafka-python 3's defaults plus throughput knobs."""
    return KafkaProducer(
        **settings.kafka.client_kwargs(),
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type=None,
    )


class Pacer:
    """Holds an offered load of `rate` events/s (None: as fast as possible)."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._start = time.monotonic()

    def wait(self, sent: int) -> None:
        if self._rate:
            ahead = sent / self._rate - (time.monotonic() - self._start)
            if ahead > 0:
                time.sleep(ahead)


def produce_engagements(
    settings: Settings,
    events: Iterable[Engagement],
    *,
    topic: str | None = None,
    rate: float | None = None,
    stamp_now: bool = False,
) -> int:
    """Send each event keyed by its user id (one partition owns a user); return the count.

    `stamp_now` replaces event times by the send time, for freshness measurements.
    """
    topic = topic or settings.topics.engagements
    producer = kafka_producer(settings)
    pacer = Pacer(rate)
    sent = 0
    try:
        for event in events:
            if stamp_now:
                event = replace(event, ts=time.time())
            producer.send(topic, key=event.user_id.encode(), value=encode_engagement(event))
            sent += 1
            if sent % 50_000 == 0:
                log.info("sent %d events", sent)
            pacer.wait(sent)
        producer.flush()
    finally:
        producer.close()
    return sent


def produce_raw(
    settings: Settings, payloads: Iterable[tuple[bytes | None, bytes]], topic: str
) -> int:
    """Send raw bytes as they are (malformed-input tests use it)."""
    producer = kafka_producer(settings)
    sent = 0
    try:
        for key, value in payloads:
            producer.send(topic, key=key, value=value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def produce_catalog(settings: Settings, items: Iterable[CatalogItem]) -> int:
    return produce_raw(
        settings,
        ((item.item_id.encode(), encode_catalog_item(item)) for item in items),
        settings.topics.items,
    )
