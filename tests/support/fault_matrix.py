"""The fault matrix: every fault of the reliability issue under a steady stream, one table.

    .venv/bin/python -m tests.support.fault_matrix [--runtime batch|faust] [--events 3000]
        [--rate 300] [--only ROW ...] [--out table.md] [--topology single|cluster]

`--topology cluster` runs the same stream on the cluster topology (deploy/cluster.py: three
Kafka brokers, a Redis Cluster of three masters with a replica each, three Qdrant peers) with
its own rows: one node of each engine killed and brought back, and a model switch mid-stream.

One native stack of its own (random free ports below the ephemeral range, so the test stack and
a demo are untouched; `appendfsync always`), and per row its own topics, key prefix and
collections. The worker runs with a promoted tiny model, so every row also writes vectors. A
third of the way into the stream the row's fault is injected; the worker (restarted where the
fault killed it) runs until the stream has been idle for `IDLE_S`.

Columns: `sent` valid events (the from-scratch count: duplicates excluded), `applied` events in
Redis (users' versions), `dup` duplicates skipped, `dead` dead letters (distinct sources) and
how many the row sent, `lost` / `doubled` per user (from-scratch minus Redis, and the reverse),
`state` differences from the from-scratch state (tests/support/harness.py `mismatches`),
`vectors` checked against the from-scratch vector oracle and how many differ, `offsets` whether
the commits reached the end, `recover s` from the fault until everything sent before it is in
Redis (for a worker kill, its restart included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import redis
from kafka import KafkaProducer
from redis.crc import key_slot

from deploy import cluster
from deploy.stack import StackConfig, down, purge, stop, up
from encoders.registry import ModelRegistry
from state import RedisState
from state.vectors import canonical_version
from streams.devtools.generate import (
    GeneratorConfig,
    generate_catalog,
    generate_events,
    malformed_payloads,
)
from streams.devtools.produce import produce_catalog, produce_engagements, produce_raw
from streams.devtools.tiny_model import publish_tiny_model
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.events import encode_engagement
from streams.wire.topics import ensure_topics
from tests.support.harness import (
    Oracle,
    committed_offsets,
    end_offsets,
    mismatches,
    read_topic,
    start_worker,
)
from tests.support.services import own_stack
from tests.support.vectors_world import World, vector_mismatches

log = logging.getLogger("fault_matrix")

WARM_UP = 50
IDLE_S = 30  # longer than a broker restart (up to ~20 s on a loaded 2-core machine): a
# worker in burst mode counts an outage as idle time (see the README)
STREAM = GeneratorConfig(users=80, items=160, communities=4, events=3000, seed=43)
COLUMNS = ["fault", "sent", "applied", "dup", "dead (sent)", "lost", "doubled", "state"]
COLUMNS += ["vectors (differ)", "offsets", "recover s", "exit"]


@dataclass
class Row:
    """One fault's run: its settings, the worker it started, what it did."""

    name: str
    settings: Settings
    stack: StackConfig
    args: list[str]
    folder: Path
    stream: GeneratorConfig
    registry: ModelRegistry | None = None
    worker: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    dead_sent: int = 0
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        name = "".join(ch if ch.isalnum() else "-" for ch in self.name)
        self.worker = start_worker(
            self.settings, *self.args, log=self.folder / f"{name}-{self.restarts}.log"
        )

    def restart(self, sig: signal.Signals) -> None:
        assert self.worker is not None
        self.worker.send_signal(sig)
        code = self.worker.wait(timeout=60)
        self.notes.append(f"worker exit {code} on {sig.name}")
        self.restarts += 1
        self.start()


def _kill_and_restart(component: str) -> Callable[[Row], None]:
    def inject(row: Row) -> None:
        stop(row.stack, component, signal.SIGKILL)
        time.sleep(1.0)
        up(row.stack)

    return inject


def _client_kill(row: Row) -> None:
    url = row.settings.redis.url
    with redis.Redis.from_url(url) as client:
        killed = client.client_kill_filter(_type="normal", skipme=True)
    row.notes.append(f"{killed} Redis connections killed")


def _poison(row: Row) -> None:
    """Malformed records, an oversized one, a keyless one and three re-sent events."""
    settings, topic = row.settings, row.settings.topics.engagements
    malformed = malformed_payloads(seed=5, n=10)
    produce_raw(settings, [(b"u-bad", payload) for payload, _ in malformed], topic)
    big = b'{"v":1,"padding":"' + b"x" * (1_048_500 - 20) + b'"}'
    producer = KafkaProducer(**settings.kafka.client_kwargs(), max_request_size=2 * 1024 * 1024)
    try:
        producer.send(topic, key=b"u-big", value=big).get(timeout=30)
    finally:
        producer.close()
    events = list(generate_events(row.stream))[:3]
    produce_raw(settings, [(None, encode_engagement(events[0]))], topic)
    produce_engagements(settings, events)  # sent before: duplicates
    row.dead_sent = len(malformed) + 2


def _wait(what: str, done: Callable[[], bool], limit_s: float = 120) -> float:
    """Seconds until `done()` (polled); a fault that never settles fails the row loudly."""
    since = time.monotonic()
    while not done():
        if time.monotonic() - since > limit_s:
            raise RuntimeError(f"{what} did not happen within {limit_s:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - since


def _redis_master_kill(row: Row) -> None:
    """kill -9 the master serving partition 0's keys; once its replica has taken over, start
    the old master again (it rejoins as a replica of the new one)."""
    key = f"{row.settings.redis.key_prefix}:{{{row.settings.topics.engagements}.0}}:wm"
    wanted = key_slot(key.encode())
    nodes = cluster.redis_cluster_nodes(row.stack)
    master = next(n for n in nodes if n["role"] == "master" and _serves(n["slots"], wanted))
    name = f"redis-{row.stack.redis_ports.index(int(master['address'].rsplit(':', 1)[1])) + 1}"
    cluster.kill(row.stack, name)

    def promoted() -> bool:
        now = cluster.redis_cluster_nodes(row.stack)
        return any(
            n["role"] == "master" and n["id"] != master["id"] and _serves(n["slots"], wanted)
            for n in now
        )

    took = _wait("the replica's promotion", promoted)
    cluster.start_node(row.stack, name)
    back = _wait("the old master's return as a replica", lambda: cluster.whole(row.stack))
    row.notes.append(f"{name} killed; replica promoted after {took:.1f}s; back in {back:.1f}s")


def _serves(slots: str, slot: int) -> bool:
    for part in slots.split():
        if part.startswith("["):  # a slot being migrated
            continue
        low, _, high = part.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


def _kafka_broker_kill(row: Row) -> None:
    """kill -9 the broker leading partition 0 of the stream; start it again 5 s later."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**row.settings.kafka.client_kwargs())
    try:
        topic = admin.describe_topics([row.settings.topics.engagements])[0]
    finally:
        admin.close()
    leader = next(p["leader_id"] for p in topic["partitions"] if p["partition_index"] == 0)
    name = f"kafka-{leader}"
    cluster.kill(row.stack, name)
    time.sleep(5.0)
    cluster.start_node(row.stack, name, wait=False)
    back = _wait("the broker's return", lambda: cluster.whole(row.stack))
    row.notes.append(f"{name} (leader of partition 0) killed for 5 s; whole {back:.1f}s later")


def _qdrant_peer_kill(row: Row) -> None:
    """kill -9 the peer the worker talks to (the first URL); start it again 5 s later."""
    cluster.kill(row.stack, "qdrant-1")
    time.sleep(5.0)
    cluster.start_node(row.stack, "qdrant-1")
    back = _wait("the peer's return", lambda: cluster.whole(row.stack))
    row.notes.append(f"qdrant-1 killed for 5 s; whole {back:.1f}s later")


def _switch(row: Row) -> None:
    """Promote a second model mid-stream: the worker dual-writes, backfills and flips."""
    assert row.registry is not None
    promoted = row.registry.promoted()
    other = next(v for v in row.registry.list() if v != promoted)
    row.registry.promote(other)
    row.notes.append(f"promoted {other} over {promoted}")


FAULTS: dict[str, Callable[[Row], None]] = {
    "none": lambda row: None,
    "worker SIGKILL": lambda row: row.restart(signal.SIGKILL),
    "worker SIGTERM": lambda row: row.restart(signal.SIGTERM),
    "Redis kill -9": _kill_and_restart("redis"),
    "Redis CLIENT KILL": _client_kill,
    "Kafka kill -9": _kill_and_restart("kafka"),
    "Qdrant kill -9": _kill_and_restart("qdrant"),
    "poison records": _poison,
}
CLUSTER_FAULTS: dict[str, Callable[[Row], None]] = {
    "none": lambda row: None,
    "Redis master kill -9": _redis_master_kill,
    "Kafka broker kill -9": _kafka_broker_kill,
    "Qdrant peer kill -9": _qdrant_peer_kill,
    "model switch": _switch,
    "worker SIGKILL": lambda row: row.restart(signal.SIGKILL),
}


def faults(stack: StackConfig) -> dict[str, Callable[[Row], None]]:
    return CLUSTER_FAULTS if stack.topology == "cluster" else FAULTS


def row_settings(stack: StackConfig, name: str, registry: ModelRegistry) -> Settings:
    tag = "fm" + "".join(ch for ch in name.lower() if ch.isalnum())[:20]
    clients = stack.client_settings()
    return Settings.load(
        kafka={**clients["kafka"], "group_id": f"g-{tag}"},
        topics={**clients["topics"], "engagements": f"eng-{tag}", "items": f"items-{tag}"},
        redis={**clients["redis"], "key_prefix": tag},
        qdrant={**clients.get("qdrant", {}), "collection_prefix": f"{tag}_"},
        models={"registry": str(registry.root), "poll_s": 1.0},
        reencode={"item_min_change": 0.0, "fanout_min_change": 0.0, "window_s": 0.05},
        ingest={"batch_max": 250},
        metrics={"port": 0},
    )


def applied_offsets(settings: Settings) -> dict[int, int]:
    """Per partition, the next offset Redis has not applied (-1 while Redis is away)."""

    async def read() -> dict[int, int]:
        client = redis_client(settings.redis)
        try:
            state = RedisState(client, settings.state, settings.redis.key_prefix)
            topic = settings.topics.engagements
            marks = [await state.watermark(topic, p) for p in range(settings.topics.partitions)]
            return {p: -1 if m is None else m + 1 for p, m in enumerate(marks)}
        finally:
            await client.aclose()

    try:
        return asyncio.run(read())
    except Exception:  # down during the fault: not recovered yet
        return {}


def wait_recovered(row: Row, before: dict[int, int], since: float, limit_s: float) -> float:
    """Seconds from `since` until Redis holds every offset below `before` (nan: never)."""
    # the last records of a partition may be invalid (never in the watermark): compare with the
    # last valid offset below each end, read from the topic once it is reachable again
    while time.monotonic() - since < limit_s:
        applied = applied_offsets(row.settings)
        if applied and all(applied.get(p, 0) >= end for p, end in before.items()):
            return time.monotonic() - since
        time.sleep(0.1)
    return float("nan")


def last_valid_ends(settings: Settings, ends: dict[int, int]) -> dict[int, int]:
    """One past the last valid event below each end offset (what the watermark reaches)."""
    oracle = Oracle.from_records(settings, read_topic(settings, settings.topics.engagements))
    found = {}
    for p, end in ends.items():
        offsets = [off for off, _ in oracle.events.get(p, []) if off < end]
        if offsets:
            found[p] = offsets[-1] + 1
    return found


def run_row(
    name: str, stack: StackConfig, registry: ModelRegistry, args: argparse.Namespace, folder: Path
) -> dict[str, str]:
    stream = replace(STREAM, events=args.events)
    settings = row_settings(stack, name, registry)
    ensure_topics(settings)
    produce_catalog(settings, generate_catalog(stream))
    worker_args = ["--runtime", args.runtime, "--until-idle", str(IDLE_S)]
    row = Row(name, settings, stack, worker_args, folder, stream, registry)
    row.start()
    events = list(generate_events(stream))
    rate = args.rate
    # the first events wait for the worker to start: the fault meets a worker that keeps up
    produce_engagements(settings, events[:WARM_UP])
    live = last_valid_ends(settings, end_offsets(settings, settings.topics.engagements))
    wait_recovered(row, live, time.monotonic(), limit_s=120)
    events = events[WARM_UP:]
    producer = threading.Thread(
        target=produce_engagements, args=(settings, events), kwargs={"rate": rate}, daemon=True
    )
    producer.start()
    time.sleep(len(events) / rate / 3)
    before = end_offsets(settings, settings.topics.engagements)
    since = time.monotonic()
    faults(stack)[name](row)
    recover_s = wait_recovered(row, last_valid_ends(settings, before), since, limit_s=180)
    producer.join()
    assert row.worker is not None
    code = row.worker.wait(timeout=300)
    cells = asyncio.run(evaluate(row))
    notes = "; ".join(row.notes)
    log.info("%s: worker exit %d%s", name, code, f" ({notes})" if notes else "")
    return {**cells, "fault": name, "recover s": f"{recover_s:.1f}", "exit": str(code)}


async def evaluate(row: Row) -> dict[str, str]:
    settings = row.settings
    topic = settings.topics.engagements
    oracle = Oracle.from_records(settings, read_topic(settings, topic))
    client = redis_client(settings.redis)
    try:
        state = RedisState(client, settings.state, settings.redis.key_prefix)
        sent = applied = lost = doubled = 0
        for p, events in oracle.events.items():
            for user in {e.user_id for _, e in events}:
                want = oracle.shards[p].user_version(user)
                got = await state.user_version(topic, p, user)
                sent, applied = sent + want, applied + got
                lost, doubled = lost + max(0, want - got), doubled + max(0, got - want)
        differences = len(await mismatches(state, oracle))
        registry = ModelRegistry(Path(str(settings.models.registry)))
        served = registry.promoted()
        assert served is not None
        with vector_store(settings) as store:
            world = World(client, settings, registry.load(served, 1), store)
            world.replayed({p: [e for _, e in evs] for p, evs in oracle.events.items()})
            world.content = {i.item_id: i for i in generate_catalog(row.stream)}
            checked, problems = await vector_mismatches(world)
            serving = store.serving_version()
            if serving != canonical_version(served):  # readers must see the promoted model
                problems.append(f"aliases serve {serving}, not the promoted {served}")
    finally:
        await client.aclose()
    letters = read_topic(settings, settings.topics.dlq(topic))
    sources = {
        (dict(r.headers)["source.partition"], dict(r.headers)["source.offset"]) for r in letters
    }
    ends = end_offsets(settings, topic)
    return {
        "sent": str(sent),
        "applied": str(applied),
        "dup": str(oracle.duplicates()),
        "dead (sent)": f"{len(sources)} ({row.dead_sent})",
        "lost": str(lost),
        "doubled": str(doubled),
        "state": str(differences),
        "vectors (differ)": f"{checked} ({len(problems)})",
        "offsets": "end" if committed_offsets(settings) == ends else "behind",
    }


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["batch", "faust"], default="batch")
    parser.add_argument("--events", type=int, default=STREAM.events)
    parser.add_argument("--rate", type=float, default=300.0, help="events a second")
    parser.add_argument("--only", nargs="*", choices=[*FAULTS, *CLUSTER_FAULTS], help="rows")
    parser.add_argument("--topology", choices=["single", "cluster"], default="single")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka", "httpx", "state.retry"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    stack = own_stack(appendfsync="always", topology=args.topology)  # the crash rows kill Redis
    names = args.only or list(faults(stack))
    unknown = [n for n in names if n not in faults(stack)]
    if unknown:
        parser.error(f"rows {unknown} are not rows of the {args.topology} topology")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fault-matrix-") as tmp:
        folder = args.logs or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder / "registry", ignore_errors=True)  # a kept --logs folder's last run
        registry, version = publish_tiny_model(folder / "registry", STREAM)
        if "model switch" in names:  # the version the row promotes mid-stream
            publish_tiny_model(folder / "registry", STREAM, seed=4)
        registry.promote(version)
        try:
            up(stack)
        except Exception:
            down(stack)  # its processes stopped; its run dir, with the logs the error names, kept
            raise
        try:
            for name in names:
                registry.promote(version)
                log.info("row: %s", name)
                rows.append(run_row(name, stack, registry, args, folder))
                sys.stdout.write(table(rows[-1:]).splitlines()[-1] + "\n")
                sys.stdout.flush()
        finally:
            purge(stack)
    text = table(rows)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if any(not healthy(row) for row in rows) else 0


def healthy(row: dict[str, str]) -> bool:
    """Nothing lost, doubled or different, every dead letter accounted for, offsets at the end,
    and the worker ended well."""
    dead, sent = row["dead (sent)"].split()
    return (
        row["lost"] == row["doubled"] == row["state"] == "0"
        and row["vectors (differ)"].endswith("(0)")
        and sent == f"({dead})"
        and row["offsets"] == "end"
        and row["exit"] == "0"
    )


if __name__ == "__main__":
    sys.exit(main())
