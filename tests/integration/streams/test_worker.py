"""The ingest worker on the real Kafka and Redis: effects once, dead letters, commits, kill -9."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from state import RedisState
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.metrics import IngestMetrics
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.limits import RunLimits
from streams.settings import Settings
from streams.wire.topics import ensure_topics
from tests.support.harness import (
    Oracle,
    committed_offsets,
    end_offsets,
    mismatches,
    read_topic,
    run_worker,
    start_worker,
)
from tests.support.streams import DUPLICATES, SMALL, produce_mixed

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


async def state_of(settings: Settings, client: aioredis.Redis) -> RedisState:
    return RedisState(client, settings.state, prefix=settings.redis.key_prefix)


@pytest.mark.parametrize("runtime", ["faust", "batch"])
async def test_every_valid_event_once_every_bad_one_dead_lettered(
    runtime: str,
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    settings = make_settings()
    expected_letters = produce_mixed(settings, SMALL, bad=40)

    code = await asyncio.to_thread(
        run_worker, settings, "--runtime", runtime, "--until-idle", "4", log=tmp_path / "w.log"
    )
    assert code == 0, (tmp_path / "w.log").read_text()[-3000:]

    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    oracle = Oracle.from_records(settings, records)
    # the mis-keyed and keyless ones are invalid; the re-sent ones are valid but change nothing
    assert oracle.valid_count == SMALL.events - 2 + DUPLICATES
    assert oracle.duplicates() == DUPLICATES
    state = await state_of(settings, redis_client)
    assert await mismatches(state, oracle) == []

    letters = await asyncio.to_thread(
        read_topic, settings, settings.topics.dlq(settings.topics.engagements)
    )
    assert len(letters) == len(expected_letters)
    by_value = {payload: reason for payload, reason in expected_letters}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["source.topic"] == settings.topics.engagements
        source = next(
            r
            for r in records
            if r.partition == int(headers["source.partition"])
            and r.offset == int(headers["source.offset"])
        )
        assert source.value == letter.value
        assert headers["error.reason"] == by_value[letter.value]
        assert headers["error.detail"]

    ends = await asyncio.to_thread(end_offsets, settings, settings.topics.engagements)
    assert await asyncio.to_thread(committed_offsets, settings) == ends
    log.info(
        "%s runtime: %d valid events applied once, %d dead-lettered, offsets %s",
        runtime,
        oracle.valid_count,
        len(letters),
        ends,
    )


async def _wait_for_progress(state: RedisState, settings: Settings, minimum: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        marks = [await state.watermark(settings.topics.engagements, p) for p in range(4)]
        if sum((m or 0) for m in marks) >= minimum:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the worker made no progress")


@pytest.mark.parametrize("runtime", ["faust", "batch"])
async def test_kill_9_mid_stream_ends_in_the_uninterrupted_state(
    runtime: str,
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    """I1: SIGKILL the worker at random points, several rounds; the end state equals the oracle."""
    cfg = GeneratorConfig(users=400, items=800, communities=6, events=40_000, seed=5)
    settings = make_settings(ingest={"batch_max": 500})
    ensure_topics(settings)
    produce_engagements(settings, generate_events(cfg))
    state = await state_of(settings, redis_client)
    kills = 0
    for round_no, progress in enumerate((2_000, 12_000, 24_000)):
        worker = start_worker(settings, "--runtime", runtime, log=tmp_path / f"w{round_no}.log")
        try:
            await _wait_for_progress(state, settings, progress)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills += 1
    code = await asyncio.to_thread(
        run_worker, settings, "--runtime", runtime, "--until-idle", "4", log=tmp_path / "final.log"
    )
    assert code == 0

    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    oracle = Oracle.from_records(settings, records)
    diff = await mismatches(state, oracle)
    log.info(
        "%s runtime: %d events, %d kill -9, %d mismatches", runtime, cfg.events, kills, len(diff)
    )
    assert diff == []
    ends = await asyncio.to_thread(end_offsets, settings, settings.topics.engagements)
    assert await asyncio.to_thread(committed_offsets, settings) == ends


@pytest.mark.parametrize("runtime", ["faust", "batch"])
async def test_a_record_as_big_as_the_broker_allows_is_dead_lettered_not_a_poison_pill(
    runtime: str,
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    """A default broker takes a record of about 1 MB; its dead-letter copy with headers would
    be over the producer's limit. It goes as a truncated copy with its size and digest, and
    every valid event around it, on every partition, is applied."""
    settings = make_settings()
    ensure_topics(settings)
    events = list(generate_events(GeneratorConfig(users=60, items=120, events=600, seed=13)))
    produce_engagements(settings, events[:300])
    big = b'{"v":1,"padding":"' + b"x" * (1_048_500 - 20) + b'"}'
    producer = KafkaProducer(**settings.kafka.client_kwargs(), max_request_size=2 * 1024 * 1024)
    try:
        producer.send(settings.topics.engagements, key=b"u-big", value=big).get(timeout=30)
    finally:
        producer.close()
    produce_engagements(settings, events[300:])

    code = await asyncio.to_thread(
        run_worker, settings, "--runtime", runtime, "--until-idle", "4", log=tmp_path / "w.log"
    )
    assert code == 0, (tmp_path / "w.log").read_text()[-3000:]
    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    state = await state_of(settings, redis_client)
    assert await mismatches(state, Oracle.from_records(settings, records)) == []
    (letter,) = await asyncio.to_thread(
        read_topic, settings, settings.topics.dlq(settings.topics.engagements)
    )
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["error.reason"] == "too_large"
    assert headers["original.size"] == str(len(big))
    assert headers["original.sha256"] == hashlib.sha256(big).hexdigest()
    assert big.startswith(letter.value) and len(letter.value) == int(headers["copy.truncated_to"])
    ends = await asyncio.to_thread(end_offsets, settings, settings.topics.engagements)
    assert await asyncio.to_thread(committed_offsets, settings) == ends


async def test_redis_out_of_memory_is_waited_out_and_nothing_is_lost(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
) -> None:
    """Redis refusing writes (maxmemory reached, noeviction) clears when an operator frees
    memory; the worker retries meanwhile instead of exiting 70, and ends exact."""
    settings = make_settings(retry={"initial_s": 0.05, "max_s": 0.2})
    ensure_topics(settings)
    events = list(generate_events(GeneratorConfig(users=50, items=100, events=500, seed=19)))
    produce_engagements(settings, events)
    saved = await redis_client.config_get("maxmemory")
    metrics = IngestMetrics(CollectorRegistry())
    await redis_client.config_set("maxmemory", "1")
    try:
        run = asyncio.create_task(
            BatchRuntime(settings, metrics, RunLimits(max_events=len(events))).run()
        )
        deadline = time.monotonic() + 120
        while not metrics.registry.get_sample_value(
            "sagestream_transient_retries_total", {"step": "state_apply"}
        ):
            assert not run.done() and time.monotonic() < deadline, "no refused apply seen"
            await asyncio.sleep(0.05)
    finally:
        await redis_client.config_set("maxmemory", saved["maxmemory"])
    stats = await asyncio.wait_for(run, 120)
    assert stats.events == len(events)
    records = await asyncio.to_thread(read_topic, settings, settings.topics.engagements)
    state = await state_of(settings, redis_client)
    assert await mismatches(state, Oracle.from_records(settings, records)) == []
