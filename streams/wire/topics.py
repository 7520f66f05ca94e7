"""Topic creation with kafka-python's admin client, before any runtime starts consuming."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.engagements, t.items, t.dlq(t.engagements), t.dlq(t.items)]


def ensure_topics(settings: Settings) -> list[str]:
    """Create the engagement, catalog and dead-letter topics; return the ones that were new."""
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    try:
        existing = set(admin.list_topics())
        t = settings.topics
        configs = {}
        if t.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(t.min_insync_replicas)
        wanted = [
            NewTopic(name, t.partitions, t.replication_factor, topic_configs=configs)
            for name in topic_names(settings)
            if name not in existing
        ]
        if not wanted:
            return []
        try:
            admin.create_topics(wanted)
        except TopicAlreadyExistsError:
            log.info("another process created some topics first")
        log.info("created topics %s", [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        admin.close()
