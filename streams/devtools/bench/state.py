"""Throughput of `RedisState.apply` on a generated engagement stream, against a real Redis.

    python -m streams.devtools.bench.state --redis-url redis://127.0.0.1:6379/0 --events 100000

The stream is the project's one generator (streams/devtools/generate.py) at 5,000 users and
10,000 items in 50 communities: Zipf item popularity, sessions (which is what makes pairs), the
view/click/save mix and board contexts. Each repeat writes under a fresh key prefix, so every
run starts from an empty state, and deletes its keys after. The figure is events per second over
the whole stream, median of the repeats; the Redis-side script time (``INFO commandstats``) is
reported too, to tell script cost from client overhead.

After each apply, before its keys go, every item the stream engaged is read the way a re-encode
pass reads dirty items (`EncodeInputs.items`: each shard's head and list, merged to the model's
top K): once with no kept lists, every list sent in full (a cold pass, or lists that all moved),
then twice with a cache that holds them all, whose second read finds every list unchanged and
gets heads alone. Items per second and Redis CPU per item of the full and the kept read show
what a pass pays for a list that moved and what keeping one saves.

Beside them, the same stream applied in this process to the pure-Python reference
(`state/coengagement.py`, one `CoEngagementGraph` per partition), and every engaged item read
from it (`merge_neighbours` over the partitions, as the Redis read merges its shards): what the
rules cost with each partition's state held by its worker, no round trip and no script (the
redesign the README's throughput section points to). The reference is written to be read, not
to be fast, so the ratios say how far the rules themselves are from the Redis figures, not what
such a worker would reach.

Such a worker must also survive a crash, which Redis's AOF gives the Redis path: with
`--kafka-bootstrap`, the reference runs again with its changelog. After each slice of each
partition, every entity the slice changed is written whole (`CoEngagementGraph.to_records`) to
a compacted topic, keyed by entity, on the partition's own changelog partition, and the
producer is flushed (`acks=all`) once per round of slices, as a worker would before committing
the offsets. It runs at the Redis apply's slice (2,000 events of a partition) and at a live one
(100: at 1,000 events/s over four partitions a 0.25 s fetch brings about 60), since records
per event fall as a slice repeats its users and items. Each log is then read back from its
start and every partition rebuilt from it (`restore`): what a worker handed the partition after
a crash would do, on a log not yet compacted; and again from the same log compacted in full.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from state.coengagement import CoEngagementGraph, Event, merge_neighbours
from state.config import StateConfig
from state.encode_inputs import EncodeInputs
from state.redis_state import RedisState
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.runtimes.client_logs import quiet_chatty_loggers

log = logging.getLogger(__name__)

TOPIC = "bench"
PARTITIONS = 4
BATCH = 2_000
USERS = 5_000
ITEMS = 10_000
COMMUNITIES = 50
READ_K = 10  # neighbours an encoder reads per item (the merge's top K)
CHANGELOG_SLICES = (BATCH, 100)  # events of a partition per changelog slice: drained, live
# Commands the bench or the client sends itself; the rest of commandstats is the script's work.
_CLIENT_COMMANDS = frozenset(
    {"evalsha", "eval", "script|load", "info", "config|resetstat", "scan", "unlink", "get"}
)


def generate(n_events: int, seed: int = 7) -> list[Event]:
    """`n_events` generated events as the state library's `Event`s, in time order."""
    cfg = GeneratorConfig(
        users=USERS, items=ITEMS, communities=COMMUNITIES, events=n_events, seed=seed
    )
    events = [
        Event(e.user_id, e.item_id, e.action, e.ts, e.weight, e.context_id)
        for e in generate_events(cfg)
    ]
    events.sort(key=lambda e: e.ts)
    return events


def partitioned(events: Sequence[Event]) -> dict[int, list[tuple[int, Event]]]:
    """Key by user (like the producer does) and number each partition's events from 0."""
    out: dict[int, list[tuple[int, Event]]] = {p: [] for p in range(PARTITIONS)}
    for event in events:
        mine = out[zlib.crc32(event.user_id.encode()) % PARTITIONS]
        mine.append((len(mine), event))
    return out


def engaged_items(parts: dict[int, list[tuple[int, Event]]]) -> list[str]:
    """Every item the stream engaged, in id order: what both reads read back."""
    return sorted({event.item_id for batch in parts.values() for _, event in batch})


async def _script_usec(client: aioredis.Redis) -> float:
    stats = await client.info("commandstats")
    return sum(
        float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def _server_cpu_s(client: aioredis.Redis) -> float:
    """CPU seconds of Redis's main thread: on a busy machine far steadier than wall time."""
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


async def _delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys: list[Any] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        keys.append(key)
        if len(keys) >= 1000:
            await client.unlink(*keys)
            keys = []
    if keys:
        await client.unlink(*keys)


@dataclass(frozen=True)
class Run:
    """Seconds of one run: the apply (wall, scripts, Redis CPU), then the item reads."""

    wall: float
    script: float
    cpu: float
    items: int
    reads: dict[str, tuple[float, float]]  # "full" | "kept" -> (wall, Redis CPU) of one read


async def _timed_read(
    client: aioredis.Redis, inputs: EncodeInputs, items: list[str]
) -> tuple[float, float]:
    cpu_before = await _server_cpu_s(client)
    started = time.perf_counter()
    await inputs.items(items, READ_K)
    wall = time.perf_counter() - started
    return wall, await _server_cpu_s(client) - cpu_before


async def _reads(
    client: aioredis.Redis, config: StateConfig, prefix: str, items: list[str]
) -> dict[str, tuple[float, float]]:
    """The full read (nothing kept), and the kept read (every list held and unchanged)."""
    full = await _timed_read(client, EncodeInputs(client, config, prefix, lists=0), items)
    keeping = EncodeInputs(client, config, prefix, lists=len(items) * PARTITIONS)
    await keeping.items(items, READ_K)  # fills the cache
    return {"full": full, "kept": await _timed_read(client, keeping, items)}


async def _one_run(
    client: aioredis.Redis, parts: dict[int, list[tuple[int, Event]]], config: StateConfig
) -> Run:
    """Applying the stream once on a fresh prefix, then reading its items."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    state = RedisState(client, config, prefix)
    longest = max(len(batch) for batch in parts.values())
    items = engaged_items(parts)
    try:
        usec_before = await _script_usec(client)
        cpu_before = await _server_cpu_s(client)
        started = time.perf_counter()
        for start in range(0, longest, BATCH):
            for partition, batch in parts.items():
                if start < len(batch):
                    await state.apply(TOPIC, partition, batch[start : start + BATCH])
        wall = time.perf_counter() - started
        script = (await _script_usec(client) - usec_before) / 1e6
        cpu = await _server_cpu_s(client) - cpu_before
        reads = await _reads(client, config, prefix, items)
    finally:
        await _delete_prefix(client, prefix)
    return Run(wall, script, cpu, len(items), reads)


@dataclass(frozen=True)
class InProcess:
    """Seconds of one run on the in-process reference: the apply, then reading every item."""

    apply_s: float
    read_s: float
    applied: int  # the graphs' user versions summed: every event of the stream, once
    items: int


def in_process_run(parts: dict[int, list[tuple[int, Event]]], config: StateConfig) -> InProcess:
    """The stream applied to one reference graph per partition, then every engaged item read."""
    graphs = {partition: CoEngagementGraph(config) for partition in sorted(parts)}
    started = time.perf_counter()
    for partition, batch in parts.items():
        graph = graphs[partition]
        for offset, event in batch:
            graph.add(event, offset)
    apply_s = time.perf_counter() - started
    items = engaged_items(parts)
    started = time.perf_counter()
    for item in items:
        merge_neighbours(graphs.values(), item, READ_K)
    read_s = time.perf_counter() - started
    applied = sum(
        graph.user_version(user)
        for partition, graph in graphs.items()
        for user in {event.user_id for _, event in parts[partition]}
    )
    return InProcess(apply_s, read_s, applied, len(items))


def _in_process_figures(
    runs: Sequence[InProcess], events: int, redis_events_per_s: float, redis_full_read: float
) -> dict[str, Any]:
    """Events and items per second of the reference, medians, and each over its Redis figure."""
    events_per_s = events / statistics.median(run.apply_s for run in runs)
    items_per_s = runs[0].items / statistics.median(run.read_s for run in runs)
    return {
        "events_per_s": round(events_per_s, 1),
        "runs_events_per_s": [round(events / run.apply_s, 1) for run in runs],
        "x_redis_apply": round(events_per_s / redis_events_per_s, 2),
        "read_items_per_s": round(items_per_s, 1),
        "x_redis_full_read": round(items_per_s / redis_full_read, 2),
    }


@dataclass(frozen=True)
class Changelog:
    """One run of the reference writing its changelog: seconds, and what it wrote where."""

    topic: str
    seconds: float
    records: int
    bytes: int
    keys: int  # distinct (partition, key): the records a fully compacted log would keep


def changelog_topic(bootstrap: str, create: bool, name: str) -> None:
    """Create the compacted changelog topic `name`, or delete it."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sagestream-bench")
    try:
        if create:
            compacted = {"cleanup.policy": "compact"}
            admin.create_topics([NewTopic(name, PARTITIONS, 1, topic_configs=compacted)])
        else:
            admin.delete_topics([name])
    finally:
        admin.close()


async def _send_batches(
    producer: AIOKafkaProducer, topic: str, partition: int, records: list[tuple[str, bytes]]
) -> asyncio.Future[Any]:
    """Records into as few batches as they fit; resolves when all are acknowledged. aiokafka's
    batch API makes one call per batch, not one per record: 30-40% more events/s here."""
    acks: list[asyncio.Future[Any]] = []
    batch = producer.create_batch()
    for key, value in records:
        while batch.append(key=key.encode(), value=value, timestamp=None) is None:
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()  # that one was full
    if batch.record_count():
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    every: asyncio.Future[list[Any]] = asyncio.gather(*acks)
    return every


def _changelog_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=0,  # the batches are built here, full: lingering would only delay a round
        max_batch_size=1 << 20,
    )


async def changelog_run(
    parts: dict[int, list[tuple[int, Event]]],
    config: StateConfig,
    bootstrap: str,
    size: int,
    *,
    drop: bool = True,
) -> Changelog:
    """The stream applied to one reference graph per partition in slices of `size` events, each
    slice's changed entities written to a fresh compacted topic, flushed once per round; the
    topic is deleted after unless `drop` is False (then it is the caller's)."""
    topic = f"bench-changelog-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(changelog_topic, bootstrap, True, topic)
    producer = _changelog_producer(bootstrap)
    graphs = {partition: CoEngagementGraph(config) for partition in sorted(parts)}
    records = written = 0
    keys: set[tuple[int, str]] = set()
    sent: list[asyncio.Future[Any]] = []
    try:
        await producer.start()
        started = time.perf_counter()
        for start in range(0, max(len(batch) for batch in parts.values()), size):
            for partition, batch in parts.items():
                chunk = batch[start : start + size]
                if not chunk:
                    continue
                graph = graphs[partition]
                graph.add_many((e for _, e in chunk), (o for o, _ in chunk))
                out = graph.to_records(graph.take_changed())
                sent.append(await _send_batches(producer, topic, partition, out))
                records += len(out)
                written += sum(len(key) + len(value) for key, value in out)
                keys.update((partition, key) for key, _ in out)
            await asyncio.gather(*sent)  # a checkpoint: the slices are in the log before a commit
            sent.clear()
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
        if drop:
            await asyncio.to_thread(changelog_topic, bootstrap, False, topic)
    return Changelog(topic, seconds, records, written, len(keys))


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Is any partition's position short of its end offset?"""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def restore(
    bootstrap: str, topic: str, config: StateConfig
) -> tuple[float, dict[int, list[tuple[str, bytes]]], dict[int, CoEngagementGraph]]:
    """Seconds to read a changelog from its start to its end and rebuild a graph per partition
    from it (what a worker handed a partition would do); the records read, and the graphs."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    logs: dict[int, list[tuple[str, bytes]]] = {p: [] for p in range(PARTITIONS)}
    await consumer.start()
    try:
        started = time.perf_counter()
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        while await _behind(consumer, ends):
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                logs[tp.partition] += [(m.key.decode(), m.value) for m in messages]
        graphs = {p: CoEngagementGraph.from_records(config, log) for p, log in logs.items()}
        return time.perf_counter() - started, logs, graphs
    finally:
        await consumer.stop()


def compacted(log: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """What Kafka's log cleaner leaves of one partition's log once it has cleaned all of it: the
    newest record of each key, in the order of their offsets."""
    newest: dict[str, tuple[int, bytes]] = {}
    for offset, (key, value) in enumerate(log):
        newest[key] = (offset, value)
    return [(key, value) for key, (_, value) in sorted(newest.items(), key=lambda kv: kv[1][0])]


async def _restores(bootstrap: str, topic: str, config: StateConfig) -> tuple[float, float]:
    """Seconds to restore from the log as written, and from the same log fully compacted (the
    cleaner's work done here, on a second topic: the broker cleans only closed segments, on
    its own schedule)."""
    as_written, logs, _ = await restore(bootstrap, topic, config)
    clean = f"{topic}-compacted"
    await asyncio.to_thread(changelog_topic, bootstrap, True, clean)
    try:
        producer = _changelog_producer(bootstrap)
        await producer.start()
        try:
            await asyncio.gather(
                *[
                    await _send_batches(producer, clean, partition, compacted(log))
                    for partition, log in logs.items()
                ]
            )
        finally:
            await producer.stop()
        return as_written, (await restore(bootstrap, clean, config))[0]
    finally:
        await asyncio.to_thread(changelog_topic, bootstrap, False, clean)


async def _changelog_figures(
    parts: dict[int, list[tuple[int, Event]]],
    config: StateConfig,
    bootstrap: str,
    repeats: int,
    baselines: dict[str, float],
) -> dict[str, Any]:
    """Per slice size: events/s (median), records and bytes per event, and the ratios to the
    Redis apply and to the reference without a changelog."""
    events = sum(len(batch) for batch in parts.values())
    out: dict[str, Any] = {}
    for size in CHANGELOG_SLICES:
        runs, restores, compact_restores = [], [], []
        for n in range(repeats):
            log.info(
                "the reference with its changelog, slices of %d: run %d/%d", size, n + 1, repeats
            )
            run = await changelog_run(parts, config, bootstrap, size, drop=False)
            try:
                as_written, compact = await _restores(bootstrap, run.topic, config)
            finally:
                await asyncio.to_thread(changelog_topic, bootstrap, False, run.topic)
            runs.append(run)
            restores.append(as_written)
            compact_restores.append(compact)
        events_per_s = events / statistics.median(run.seconds for run in runs)
        out[str(size)] = {
            "events_per_s": round(events_per_s, 1),
            "runs_events_per_s": [round(events / run.seconds, 1) for run in runs],
            "records_per_event": round(runs[0].records / events, 3),
            "bytes_per_event": round(runs[0].bytes / events, 1),
            "x_redis_apply": round(events_per_s / baselines["redis"], 2),
            "x_in_process": round(events_per_s / baselines["in_process"], 2),
            # the log read from its start (not yet compacted) and every partition rebuilt
            "restore_s": round(statistics.median(restores), 3),
            "restore_records_per_s": round(runs[0].records / statistics.median(restores), 1),
            "compacted_records": runs[0].keys,
            "restore_compacted_s": round(statistics.median(compact_restores), 3),
        }
    return out


def _read_figures(runs: Sequence[Run]) -> dict[str, Any]:
    """Items per second and Redis CPU microseconds per item of each read, medians."""
    out: dict[str, Any] = {"items": runs[0].items, "k": READ_K}
    for kind in ("full", "kept"):
        walls = [run.reads[kind][0] for run in runs]
        cpus = [run.reads[kind][1] for run in runs]
        out[kind] = {
            "items_per_s": round(runs[0].items / statistics.median(walls), 1),
            "redis_cpu_us_per_item": round(statistics.median(cpus) / runs[0].items * 1e6, 2),
        }
    return out


async def run_state_bench(
    client: aioredis.Redis,
    events: int,
    repeats: int,
    config: StateConfig | None = None,
    kafka: str | None = None,
) -> dict[str, Any]:
    """Events/s of `RedisState.apply` over `events` generated events, median of `repeats` runs;
    with `kafka` (bootstrap servers), also of the reference writing its changelog there."""
    cfg = config if config is not None else StateConfig()
    parts = partitioned(generate(events))
    await client.config_resetstat()
    runs = []
    for n in range(repeats):
        log.info("the Redis apply and reads: run %d/%d", n + 1, repeats)
        runs.append(await _one_run(client, parts, cfg))
    walls = [run.wall for run in runs]
    scripts = [run.script for run in runs]
    cpus = [run.cpu for run in runs]
    stats = await client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    wall_s = statistics.median(walls)
    read = _read_figures(runs)
    log.info("the in-process reference, %d runs", repeats)
    reference = _in_process_figures(
        [in_process_run(parts, cfg) for _ in range(repeats)],
        events,
        events / wall_s,
        read["full"]["items_per_s"],
    )
    result = {
        "events": events,
        "repeats": repeats,
        "events_per_s": round(events / wall_s, 1),
        "runs_events_per_s": [round(events / w, 1) for w in walls],
        "script_s": round(statistics.median(scripts), 3),
        "script_events_per_s": round(events / statistics.median(scripts), 1),
        "redis_cpu_events_per_s": round(events / statistics.median(cpus), 1),
        "script_calls": calls.get("evalsha", 0) + calls.get("eval", 0),
        "redis_calls_per_event": round(
            sum(n for k, n in calls.items() if k not in _CLIENT_COMMANDS) / (events * repeats),
            2,
        ),
        "commandstats": {k: n for k, n in sorted(calls.items(), key=lambda kv: -kv[1])},
        "read": read,
        "in_process": reference,
    }
    if kafka is not None:
        baselines = {"redis": events / wall_s, "in_process": reference["events_per_s"]}
        result["changelog"] = await _changelog_figures(parts, cfg, kafka, repeats, baselines)
    return result


async def _main(
    url: str, events: int, repeats: int, cfg: StateConfig, kafka: str | None
) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    try:
        return await run_state_bench(client, events, repeats, cfg, kafka)
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.devtools.bench.state", description=__doc__
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--kafka-bootstrap",
        default=None,
        help="also run the reference with its changelog on this Kafka (host:port)",
    )
    for name in ("max_pairs", "slice_size", "trim_every"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=None, help="override the StateConfig default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    quiet_chatty_loggers()
    default = StateConfig()
    cfg = StateConfig(
        max_pairs=args.max_pairs or default.max_pairs,
        slice_size=args.slice_size or default.slice_size,
        trim_every=args.trim_every or default.trim_every,
    )
    result = asyncio.run(
        _main(args.redis_url, args.events, args.repeats, cfg, args.kafka_bootstrap)
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
