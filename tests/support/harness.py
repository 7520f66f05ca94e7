"""Shared by integration tests: real workers as child processes, topics read back, the oracle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from state import CoEngagementGraph, RedisState, merge_neighbours
from streams.settings import Settings
from streams.wire.events import Engagement, decode_engagement
from tests.support.faults import FaultPlan

REPO = Path(__file__).resolve().parents[2]


def start_worker(
    settings: Settings, *args: str, log: Path | None = None, faults: FaultPlan | None = None
) -> subprocess.Popen[bytes]:
    """The real `sagestream worker` in its own process, so it can be killed with SIGKILL;
    with `faults`, through the seams of tests/support/faults.py."""
    env = dict(os.environ, **settings.to_env())
    entry = "streams.cli"
    if faults is not None:
        env.update(faults.to_env())
        entry = "tests.support.faults"
    cmd = [sys.executable, "-m", entry, "worker", *args]
    if log is None:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def run_worker(
    settings: Settings,
    *args: str,
    timeout: float = 240,
    log: Path | None = None,
    faults: FaultPlan | None = None,
) -> int:
    proc = start_worker(settings, *args, log=log, faults=faults)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def read_topic(settings: Settings, topic: str, timeout_s: float = 30) -> list[ConsumerRecord]:
    """Every record of `topic`, without a consumer group, in (partition, offset) order."""
    consumer = KafkaConsumer(
        **settings.kafka.client_kwargs(), enable_auto_commit=False, group_id=None
    )
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def committed_offsets(
    settings: Settings, timeout_s: float = 30, *, catalog: bool = False
) -> dict[int, int]:
    """The group's committed offsets of the engagements topic (with `catalog`, the catalog
    group's of the items topic). A broker that answers "no coordinator yet" (a fresh cluster
    creating __consumer_offsets, or a coordinator moving) is asked again until it has one: that
    is a state to wait out, not a failure."""
    group = settings.kafka.group_id + (".catalog" if catalog else "")
    topic = settings.topics.items if catalog else settings.topics.engagements
    deadline = time.monotonic() + timeout_s
    while True:
        admin = KafkaAdminClient(**settings.kafka.client_kwargs())
        try:
            found = admin.list_group_offsets({group: None})[group]
            break
        except KafkaError as err:
            if not err.retriable or time.monotonic() > deadline:
                raise
        finally:
            admin.close()
        time.sleep(0.2)
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


@dataclass
class Oracle:
    """State recomputed from scratch: every valid event applied once, per partition, in order."""

    settings: Settings
    shards: dict[int, CoEngagementGraph] = field(default_factory=dict)
    events: dict[int, list[tuple[int, Engagement]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @classmethod
    def from_records(cls, settings: Settings, records: Iterable[ConsumerRecord]) -> Oracle:
        oracle = cls(settings)
        for record in records:
            decoded = decode_engagement(record.value or b"")
            key_ok = record.key == getattr(decoded, "user_id", "").encode()
            if isinstance(decoded, Engagement) and key_ok:
                oracle.events[record.partition].append((record.offset, decoded))
        for partition, events in oracle.events.items():
            graph = CoEngagementGraph(settings.state)
            graph.add_many((event for _, event in events), (offset for offset, _ in events))
            oracle.shards[partition] = graph
        return oracle

    @property
    def valid_count(self) -> int:
        return sum(len(v) for v in self.events.values())

    def items(self) -> set[str]:
        return {e.item_id for events in self.events.values() for _, e in events}

    def duplicates(self) -> int:
        """Valid events that repeated a recent event id of their user (applied as no-ops)."""
        return sum(graph.duplicates for graph in self.shards.values())


async def mismatches(state: RedisState, oracle: Oracle) -> list[str]:
    """Every difference between Redis and the oracle (empty means I1 holds)."""
    topic = oracle.settings.topics.engagements
    found: list[str] = []
    for partition, events in oracle.events.items():
        graph = oracle.shards[partition]
        if await state.watermark(topic, partition) != events[-1][0]:
            found.append(f"partition {partition}: watermark differs")
        for user in sorted({e.user_id for _, e in events}):
            if await state.user_sequence(topic, partition, user) != graph.sequence(user):
                found.append(f"user {user}: sequence differs")
            if await state.user_version(topic, partition, user) != graph.user_version(user):
                found.append(f"user {user}: version differs")
    k = oracle.settings.state.k_max
    found += await _holder_mismatches(state, oracle)
    for item in sorted(oracle.items()):
        expected = merge_neighbours(oracle.shards.values(), item, k)
        got = await state.item_neighbours(item, k)
        if not _same_weights(got, expected):
            found.append(f"item {item}: neighbours differ")
        if await state.item_version(item) != sum(
            g.item_version(item) for g in oracle.shards.values()
        ):
            found.append(f"item {item}: version differs")
    return found


async def _holder_mismatches(state: RedisState, oracle: Oracle) -> list[str]:
    """Each item's holders in each partition (coengagement rule 8) against the oracle's."""
    holders = await state.holders(sorted(oracle.items()))
    found = []
    for partition, graph in oracle.shards.items():
        held = holders.get((oracle.settings.topics.engagements, partition), {})
        for item in sorted({e.item_id for _, e in oracle.events[partition]}):
            if held.get(item, {}) != dict(graph.holders(item)):
                found.append(f"item {item}: holders in partition {partition} differ")
    return found


def _same_weights(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    if len(got) != len(expected):
        return False
    want = dict(expected)
    return all(i in want and abs(w - want[i]) <= 1e-9 * max(1.0, abs(w)) for i, w in got)


def probe(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as page:
            return page.status, json.loads(page.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
    except OSError:
        return 0, {}  # not listening yet


def until_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    """Poll as a readiness probe does; the bound is generous, only a hung start reaches it."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        code, body = probe(url)
        if code == 200:
            return body
        time.sleep(0.5)
    raise AssertionError(f"not ready within 180s: {log.read_text()[-3000:]}")
