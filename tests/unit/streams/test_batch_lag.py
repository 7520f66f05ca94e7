"""The lag gauge after a batch whose partition was revoked mid-flight (a rebalance): skipped,
not an AssertionError from aiokafka that stops the worker with exit 70."""

from __future__ import annotations

from typing import cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.runtimes.batch import owned_highwater


class Consumer:
    def __init__(self, owned: set[TopicPartition]) -> None:
        self.owned = owned

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def highwater(self, tp: TopicPartition) -> int:
        assert tp in self.owned, "Partition is not assigned"  # what aiokafka does
        return 42


def test_a_revoked_partition_has_no_highwater_here_and_an_owned_one_has() -> None:
    kafka = cast(AIOKafkaConsumer, Consumer({TopicPartition("eng", 1)}))
    assert owned_highwater(kafka, "eng", 1) == 42
    assert owned_highwater(kafka, "eng", 0) is None
