"""The lag gauge after a batch whose partition was revoked mid-flight (a rebalance): skipped,
not an AssertionError from aiokafka that stops the worker with exit 70."""

from __future__ import annotations

from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.runtimes.batch import batch_ends, owned_highwater


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


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def test_a_batch_ends_after_each_partitions_last_record() -> None:
    fetched: Any = {
        TopicPartition("eng", 0): [Record(7), Record(8)],
        TopicPartition("eng", 1): [],
        TopicPartition("eng", 2): [Record(0)],
    }
    assert batch_ends(fetched) == {("eng", 0): 9, ("eng", 2): 1}
