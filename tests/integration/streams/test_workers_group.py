"""Scale-out on one Redis and one Qdrant server: N workers in one group, a kill -9, a model switch
with every worker writing, and a recommender reading through the aliases in its own process.

Every wait is for a condition (offsets, backlog, the reader's tally, the alias), never for a
length of time; the deadlines only catch hangs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from encoders.registry import ModelRegistry
from state import RedisState
from state.catalog import CatalogStore
from state.vectors import canonical_version
from streams.cli.main import EXIT_CONFIG
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.produce import produce_catalog, produce_engagements
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.topics import ensure_topics
from tests.support.convergence import assert_converged
from tests.support.harness import (
    REPO,
    Oracle,
    committed_offsets,
    end_offsets,
    read_topic,
    run_worker,
    start_worker,
)
from tests.support.models import two_versions

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

STREAM = GeneratorConfig(users=150, items=300, communities=4, events=6000, seed=53)
WORKERS = 3
DEADLINE_S = 240.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    return two_versions(tmp_path_factory.mktemp("registry"), STREAM)


def group_settings(make_settings: Callable[..., Settings], root: Path) -> Settings:
    settings = make_settings(
        ingest={"batch_max": 250},
        topics={"partitions": 6},
        kafka={"session_timeout_s": 6.0, "heartbeat_interval_s": 2.0},
        models={"registry": str(root), "poll_s": 0.5, "backfill_page": 32},
        reencode={"item_min_change": 0.0, "fanout_min_change": 0.0, "window_s": 0.05},
    )
    ensure_topics(settings)
    produce_catalog(settings, generate_catalog(STREAM))
    return settings


async def until(condition: Callable[[], bool], what: str) -> None:
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < DEADLINE_S, f"still waiting for {what}"
        await asyncio.sleep(0.2)


async def drained(settings: Settings, client: aioredis.Redis) -> None:
    """Every engagement and catalog record committed and every dirty mark turned into vectors.
    The catalog counts too: a killed worker's catalog partitions move only once its session
    times out, and the engagements can drain before that, leaving the items of those partitions
    encoded from the empty-content stand-in (their content not stored yet)."""
    prefix = settings.redis.key_prefix
    state, catalog = RedisState(client, settings.state, prefix), CatalogStore(client, prefix)
    began = time.monotonic()
    while True:
        done = await asyncio.to_thread(committed_to_the_end, settings)
        marks = sum((await state.dirty_backlog()).values()) + await catalog.backlog()
        if done and marks == 0:
            return
        assert time.monotonic() - began < DEADLINE_S, "the group did not drain"
        await asyncio.sleep(0.5)


def committed_to_the_end(settings: Settings) -> bool:
    """Both groups, the engagements' and the catalog's, committed to their topics' ends."""
    engagements = settings.topics.engagements
    if not caught_up(committed_offsets(settings), end_offsets(settings, engagements)):
        return False
    return catalog_stored(settings)


def caught_up(committed: dict[int, int], ends: dict[int, int]) -> bool:
    """Every partition committed to its end (an empty one has nothing to commit)."""
    return all(committed.get(partition, 0) == end for partition, end in ends.items())


def catalog_stored(settings: Settings) -> bool:
    """The catalog group committed to the items topic's end: every item's content is in Redis.

    The tests start the group and wait for this before the first engagement, as items exist
    before anyone engages with them. An item encoded while a neighbour's content had not
    arrived keeps that vector until its own state changes (the item's label counts its own
    content version, not its neighbours'), which the oracle would see with a trained model."""
    items = end_offsets(settings, settings.topics.items)
    return caught_up(committed_offsets(settings, catalog=True), items)


def start_group(settings: Settings, logs: Path, n: int) -> list[subprocess.Popen[bytes]]:
    return [
        start_worker(settings, "--runtime", "batch", log=logs / f"worker{i}.log") for i in range(n)
    ]


def stop_group(workers: list[subprocess.Popen[bytes]]) -> list[int]:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    return [worker.wait(timeout=60) for worker in workers]


async def lost_and_doubled(settings: Settings, state: RedisState) -> tuple[int, int]:
    """Events missing from, and applied twice to, Redis: each user's version counts the events
    applied to it, against the oracle's count of the valid events in the topic."""
    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    oracle = Oracle.from_records(settings, records)
    lost = doubled = 0
    topic = settings.topics.engagements
    for partition, events in oracle.events.items():
        graph = oracle.shards[partition]
        for user in {e.user_id for _, e in events}:
            found = await state.user_version(topic, partition, user) or 0
            lost += max(0, graph.user_version(user) - found)
            doubled += max(0, found - graph.user_version(user))
    return lost, doubled


async def test_three_workers_lose_one_to_kill_9_and_end_exact(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    models: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    root, first, _ = models
    settings = group_settings(make_settings, root)
    state = RedisState(redis_client, settings.state, prefix=settings.redis.key_prefix)
    events = list(generate_events(STREAM))
    cut = len(events) * 3 // 5
    workers = start_group(settings, tmp_path, WORKERS)
    try:
        await until(lambda: catalog_stored(settings), "the catalog stored")
        produce_engagements(settings, events[:cut])

        def committed() -> int:
            return sum(committed_offsets(settings).values())

        await until(lambda: committed() >= cut // 4, "the group's first commits")
        workers[0].send_signal(signal.SIGKILL)
        assert workers[0].wait(timeout=30) == -9
        produce_engagements(settings, events[cut:])
        await drained(settings, redis_client)  # the survivors took the killed worker's partitions
    finally:
        codes = stop_group(workers)
    assert codes[1:] == [0] * (WORKERS - 1), [p.read_text()[-2000:] for p in tmp_path.glob("*.log")]
    valid, checked = await assert_converged(
        settings, redis_client, ModelRegistry(root).load(first), generate_catalog(STREAM)
    )
    lost, doubled = await lost_and_doubled(settings, state)
    assert lost == doubled == 0
    log.info(
        "group: %d events, %d workers, 1 kill -9, lost %d, doubled %d, %d vectors checked, "
        "0 mismatches",
        valid,
        WORKERS,
        lost,
        doubled,
        checked,
    )


class ReaderProcess:
    """tests/support/reader.py in its own process; its tally is read from the file it rewrites."""

    def __init__(self, settings: Settings, out: Path, users: list[str]) -> None:
        env = dict(os.environ, **settings.to_env())
        self.out = out
        cmd = [sys.executable, "-m", "tests.support.reader", str(out), *users]
        self._log = open(out.with_suffix(".log"), "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=self._log)

    def tally(self) -> dict[str, object]:
        try:
            found: dict[str, object] = json.loads(self.out.read_text())
            return found
        except (FileNotFoundError, json.JSONDecodeError):
            return {"rounds": 0, "errors": [], "versions": []}

    def saw(self, version: str, rounds: int = 20) -> bool:
        tally = self.tally()
        return version in tally["versions"] and int(tally["rounds"]) >= rounds  # type: ignore

    def stop(self) -> dict[str, object]:
        self.out.with_suffix(".stop").touch()
        assert self.proc.wait(timeout=60) == 0, self.out.with_suffix(".log").read_text()[-2000:]
        self._log.close()
        return self.tally()


async def test_a_switch_with_every_worker_writing_ends_exact_and_readers_never_see_a_gap(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    models: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    root, first, second = models
    registry = ModelRegistry(root)
    settings = group_settings(make_settings, root)
    events = list(generate_events(STREAM))
    half = len(events) // 2
    workers = start_group(settings, tmp_path, WORKERS)
    reader: ReaderProcess | None = None
    try:
        await until(lambda: catalog_stored(settings), "the catalog stored")
        produce_engagements(settings, events[:half])
        await drained(settings, redis_client)
        users = sorted({e.user_id for e in events[:half]})
        reader = ReaderProcess(settings, tmp_path / "reader.json", users)
        await until(lambda: reader is not None and reader.saw(first), "the reader on the first")
        registry.promote(second)
        with vector_store(settings) as store:

            def serving() -> bool:
                return store.serving_version() == canonical_version(second)

            sent = half
            while sent < len(events) and not serving():  # writes go on through the switch
                produce_engagements(settings, events[sent : sent + 200])
                sent += 200
                await asyncio.sleep(0.2)
            await until(serving, "the flip")
        produce_engagements(settings, events[sent:])
        await until(lambda: reader is not None and reader.saw(second), "the reader on the second")
        await drained(settings, redis_client)
    finally:
        tally = reader.stop() if reader is not None else {}
        codes = stop_group(workers)
    logs = {p.name: p.read_text() for p in tmp_path.glob("worker*.log")}
    assert codes == [0] * WORKERS, {k: v[-2000:] for k, v in logs.items()}
    assert tally["errors"] == [], tally["errors"][:5]  # type: ignore[index]
    assert tally["versions"] == sorted([canonical_version(first), canonical_version(second)])
    assert all("switched to" in text for text in logs.values()), "a worker never switched"
    valid, checked = await assert_converged(
        settings, redis_client, registry.load(second), generate_catalog(STREAM)
    )
    log.info(
        "switch with %d workers writing: %d events, reader %d rounds, 0 errors, versions %s; "
        "every vector of %s equals the oracle (%d checked, users included)",
        WORKERS,
        valid,
        tally["rounds"],
        tally["versions"],
        second,
        checked,
    )


async def test_a_batch_worker_refuses_a_group_run_by_faust_workers_in_one_line(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    """The two runtimes assign partitions differently, so the broker refuses a mixed group;
    the batch worker says so and which setting to change, instead of a traceback (exit 70)."""
    settings = make_settings()
    ensure_topics(settings)
    events = list(generate_events(GeneratorConfig(users=40, items=80, events=200, seed=17)))
    produce_engagements(settings, events)
    faust_log = tmp_path / "faust.log"
    faust = start_worker(settings, "--runtime", "faust", log=faust_log)
    try:
        state = RedisState(redis_client, settings.state, prefix=settings.redis.key_prefix)
        await until_consumed(state, settings, len(events), faust, faust_log)  # it holds the group
        log = tmp_path / "batch.log"
        code = await asyncio.to_thread(
            run_worker, settings, "--runtime", "batch", timeout=120, log=log
        )
    finally:
        faust.send_signal(signal.SIGTERM)
        await asyncio.to_thread(faust.wait, 120)
    assert code == EXIT_CONFIG, log.read_text()[-3000:]
    assert "has workers of the Faust runtime" in log.read_text()
    assert "Traceback" not in log.read_text()


async def until_consumed(
    state: RedisState, settings: Settings, count: int, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Until the partitions' watermarks account for `count` records (bounded: a hang fails)."""
    deadline = time.monotonic() + 180
    topic = settings.topics.engagements
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        marks = [await state.watermark(topic, p) for p in range(settings.topics.partitions)]
        if sum(m + 1 for m in marks if m is not None) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not consumed within 180s: {log.read_text()[-3000:]}")
