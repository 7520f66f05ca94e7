"""A catch-up batch holds every partition with records waiting, not the first one's backlog.

The consumer below hands out buffered records the way aiokafka's fetcher does: partition by
partition in buffer order, the first one until `max_records` runs out."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streams.runtimes.batch import fetch_fair

TOPIC = "eng"


class Buffered:
    def __init__(self, backlog: dict[int, int], paused: set[int] | None = None) -> None:
        self.buffers = {TopicPartition(TOPIC, p): list(range(n)) for p, n in backlog.items()}
        self.paused_tps = {TopicPartition(TOPIC, p) for p in paused or set()}

    def assignment(self) -> set[TopicPartition]:
        return set(self.buffers)

    def paused(self) -> set[TopicPartition]:
        return self.paused_tps

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        left = max_records if max_records is not None else 1 << 30
        drained: dict[TopicPartition, list[Any]] = {}
        for tp, buffer in self.buffers.items():
            if (partitions and tp not in partitions) or tp in self.paused_tps or not buffer:
                continue
            drained[tp], self.buffers[tp] = buffer[:left], buffer[left:]
            left -= len(drained[tp])
            if left == 0:
                break
        return drained


def fetch(kafka: Buffered, per_partition: int) -> dict[TopicPartition, list[Any]]:
    """Run `fetch_fair` to its end without an event loop: the stub never suspends.

    `asyncio.run` here would replace the fresh loop pytest-asyncio leaves set after an async
    test, unclosed, and the garbage collector would report it in whichever test ran next."""
    coro = fetch_fair(cast(AIOKafkaConsumer, kafka), 0, per_partition)
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(dict[TopicPartition, list[Any]], done.value)
    coro.close()
    raise AssertionError("fetch_fair waited on a consumer that has everything buffered")


def sizes(batch: dict[TopicPartition, list[Any]]) -> dict[int, int]:
    return {tp.partition: len(records) for tp, records in batch.items()}


def test_a_backlog_on_every_partition_gives_each_its_cap() -> None:
    kafka = Buffered({0: 5000, 1: 5000, 2: 5000, 3: 5000})
    assert sizes(fetch(kafka, 2000)) == {0: 2000, 1: 2000, 2: 2000, 3: 2000}


def test_a_short_partition_gives_what_it_has() -> None:
    kafka = Buffered({0: 5000, 1: 100, 2: 0, 3: 5000})
    assert sizes(fetch(kafka, 2000)) == {0: 2000, 1: 100, 3: 2000}


def test_a_live_batch_smaller_than_the_cap_comes_whole() -> None:
    kafka = Buffered({0: 30, 1: 12, 2: 7, 3: 0})
    assert sizes(fetch(kafka, 2000)) == {0: 30, 1: 12, 2: 7}


def test_paused_partitions_give_nothing() -> None:
    kafka = Buffered({0: 5000, 1: 5000, 2: 5000, 3: 5000}, paused={1, 2})
    assert sizes(fetch(kafka, 2000)) == {0: 2000, 3: 2000}


@given(
    backlog=st.dictionaries(st.integers(0, 7), st.integers(0, 300), min_size=1),
    per_partition=st.integers(1, 400),
)
def test_records_come_in_offset_order_none_twice_and_the_cap_holds(
    backlog: dict[int, int], per_partition: int
) -> None:
    kafka = Buffered(backlog)
    taken: Counter[int] = Counter()
    while any(kafka.buffers.values()):
        waiting = {p for p, n in backlog.items() if n > taken[p]}
        batch = fetch(kafka, per_partition)
        assert {tp.partition for tp in batch} == waiting, "a partition with records was left out"
        assert max(map(len, batch.values())) <= per_partition
        for tp, records in batch.items():
            assert records == list(range(taken[tp.partition], taken[tp.partition] + len(records)))
            taken[tp.partition] += len(records)
    assert taken == Counter({p: n for p, n in backlog.items() if n})
