"""RELIABILITY scenario 9 and 10: a new model is promoted while events flow and readers read.

The updater (real Redis, an embedded Qdrant shared with a reader thread) notices the promotion,
validates the model, dual-writes, backfills and flips. The reader does what a downstream
recommender does - a user's vector through the alias, then that model's nearest items - and must
never fail, come back short, or mix versions. A poisoned promotion is refused and counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from encoders.registry import ModelRegistry
from state import RedisState, StateError, VectorStore
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.produce import produce_engagements
from streams.metrics import IngestMetrics
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.limits import RunLimits
from streams.settings import Settings
from streams.vectors.backfill import Backfill, run_backfill
from streams.vectors.store import vector_store
from streams.vectors.switch import ModelWatcher
from streams.vectors.updater import Updater
from streams.wire.events import Engagement
from streams.wire.topics import ensure_topics
from tests.support.harness import Oracle, mismatches, read_topic
from tests.support.models import two_versions
from tests.support.reader import read_round
from tests.support.vectors_world import World, assert_matches_oracle

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

STREAM = GeneratorConfig(users=40, items=80, communities=3, events=1600, seed=37)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    return two_versions(tmp_path_factory.mktemp("registry"), STREAM)


@pytest.fixture
def store(qdrant_store: VectorStore) -> VectorStore:
    """The test server (this test's collection prefix)."""
    return qdrant_store


class Reader(threading.Thread):
    """A downstream recommender in a loop: user vector via the alias, then that model's items."""

    def __init__(self, store: VectorStore, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.store, self.users = store, users
        self.stop = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []
        self.versions: set[str] = set()

    def run(self) -> None:
        rng = random.Random(5)
        while not self.stop.is_set():
            user = rng.choice(self.users)
            try:
                self._round(user)
            except StateError as err:
                self.errors.append(f"read failed: {err}")
            self.rounds += 1
            self.stop.wait(0.005)  # a steady reader, not a busy loop; a stop ends the pause

    def _round(self, user: str) -> None:
        self.errors += read_round(self.store, user, self.versions)


class Feed:
    """Paces the stream by the switch itself, so the overlap holds on any machine.

    Each backfill page first applies the next chunk of events, and the call that finds the
    backfill done applies whatever is left before the flip: events flow through the whole switch
    however fast the machine runs it. A page also waits until the reader has read the old
    version a few times, so the reader sees both sides of the flip.
    """

    def __init__(self, world: World, events: list[Engagement], reader: Reader) -> None:
        self.world, self.rest, self.reader = world, events, reader
        self.pages_fed = 0

    def pace(self, monkeypatch: pytest.MonkeyPatch) -> None:
        page = Backfill.step

        async def paced(backfill: Backfill) -> bool:
            await until(lambda: self.reader.rounds >= READER_ROUNDS, "the reader's first rounds")
            await self.feed(CHUNK)
            done = await page(backfill)
            if done:
                await self.feed(len(self.rest))
            return done

        monkeypatch.setattr(Backfill, "step", paced)

    async def feed(self, n: int) -> None:
        chunk, self.rest = self.rest[:n], self.rest[n:]
        if chunk:
            await self.world.apply(chunk)
            self.pages_fed += 1


CHUNK, READER_ROUNDS = 25, 25


async def until(condition: Callable[[], bool], what: str, deadline_s: float = 120.0) -> None:
    """Wait for a condition another task or thread makes true; the deadline only catches hangs."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < deadline_s, f"still waiting for {what}"
        await asyncio.sleep(0.01)


async def test_switch_under_load_never_shows_readers_a_gap(
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
    models: tuple[Path, str, str],
    store: VectorStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, first, second = models
    registry = ModelRegistry(root)
    settings = make_settings(
        reencode={"item_min_change": 0.0, "fanout_min_change": 0.0, "window_s": 0.05},
        models={"registry": str(root), "poll_s": 0.2, "backfill_page": 16},
    )
    world = World(redis_client, settings, registry.load(first), store)
    events = list(generate_events(STREAM))
    await world.put(generate_catalog(STREAM))
    await world.apply(events[:800])
    store.prepare(first, world.bundle.dim)
    store.flip(first)
    await world.reencoder.run_until_idle(world.shards)

    metrics = IngestMetrics(CollectorRegistry())
    watcher = ModelWatcher(registry, world.reencoder, store, redis_client, settings, metrics)
    failed: list[bool] = []
    updater = Updater(
        world.reencoder,
        lambda: world.shards,
        metrics,
        lambda: failed.append(True),
        store,
        settings.retry.backoff(),
        watcher,
    )
    reader = Reader(store, world.engaged()[0])
    feed = Feed(world, events[800:], reader)
    feed.pace(monkeypatch)
    reader.start()
    updater.start()
    began = time.monotonic()
    registry.promote(second)
    await until(lambda: switches(metrics) > 0, "the switch")
    flipped_at = reader.rounds
    await until(lambda: reader.rounds >= flipped_at + READER_ROUNDS, "reads after the flip")
    await updater.drain(asyncio.Event())
    reader.stop.set()
    await asyncio.to_thread(reader.join, 30)

    took = time.monotonic() - began
    log.info(
        "model switch %s -> %s in %.1fs under load: %d events in %d chunks during it, "
        "%d reader rounds, %d errors, versions seen %s",
        first,
        second,
        took,
        len(events) - 800,
        feed.pages_fed,
        reader.rounds,
        len(reader.errors),
        sorted(reader.versions),
    )
    assert not failed
    assert switches(metrics) == 1 and store.serving_version() == second
    assert not reader.errors, reader.errors[:5]
    assert reader.versions == {first, second} and reader.rounds >= 2 * READER_ROUNDS
    assert not feed.rest, "the switch finished before every event was applied"
    assert feed.pages_fed >= 2, "no backfill page overlapped the stream"
    # the new version holds every entity, each equal to a from-scratch encode (users too:
    # the fan-out rebuilt those built before a later change of one of their items)
    checked = await assert_matches_oracle(world, registry.load(second))
    log.info("vectors of the new version equal to the oracle: %d", checked)


async def test_a_poisoned_promotion_is_refused_and_the_old_model_keeps_serving(
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
    models: tuple[Path, str, str],
    store: VectorStore,
    tmp_path: Path,
) -> None:
    copy, good, poisoned = with_poisoned_promotion(models, tmp_path / "registry")
    settings = make_settings(models={"registry": str(tmp_path / "registry")})
    world = World(redis_client, settings, copy.load(good), store)
    store.prepare(good, world.bundle.dim)
    store.flip(good)
    await world.apply([Engagement("e1", "u1", "i1", "save", 1.7e9)])
    metrics = IngestMetrics(CollectorRegistry())
    watcher = ModelWatcher(copy, world.reencoder, store, redis_client, settings, metrics)
    await watcher.poll()
    await watcher.poll()  # refused once, not retried on every poll
    assert watcher.switch is None and world.reencoder.bundle.version == good
    rejected = metrics.registry.get_sample_value(
        "sagestream_model_rejections_total", {"version": poisoned}
    )
    assert rejected == 1
    assert metrics.registry.get_sample_value("sagestream_promoted_model_refused") == 1
    await world.reencoder.run_until_idle(world.shards)  # the old model keeps encoding
    assert store.get("users", ["u1"])["u1"].payload["model_version"] == good
    copy.rollback()  # the operator's answer to the alert: the refusal is over
    await watcher.poll()
    assert metrics.registry.get_sample_value("sagestream_promoted_model_refused") == 0


@pytest.mark.parametrize("serving", ["previous", "nothing"])
async def test_a_restart_under_a_poisoned_promotion_keeps_ingesting_and_counts_it(
    serving: str,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
    models: tuple[Path, str, str],
    store: VectorStore,
    tmp_path: Path,
) -> None:
    """RELIABILITY: no crash loop. A worker restarted while a broken version is promoted
    serves what the aliases serve (and refuses the promotion, counted); with nothing else to
    serve it ingests without vectors. Either way it runs to the end of the stream."""
    copy, good, poisoned = with_poisoned_promotion(models, tmp_path / "registry")
    if serving == "previous":
        store.prepare(good, copy.load(good).dim)
        store.flip(good)

    settings = make_settings(models={"registry": str(tmp_path / "registry")})
    ensure_topics(settings)
    events = list(generate_events(GeneratorConfig(users=12, items=30, events=200, seed=41)))
    produce_engagements(settings, events)
    metrics = IngestMetrics(CollectorRegistry())
    stats = await BatchRuntime(settings, metrics, RunLimits(max_events=len(events))).run()
    assert stats.events == len(events)

    value = metrics.registry.get_sample_value
    assert value("sagestream_model_rejections_total", {"version": poisoned}) == 1
    assert value("sagestream_promoted_model_refused") == 1
    state = RedisState(redis_client, settings.state, prefix=settings.redis.key_prefix)
    oracle = Oracle.from_records(settings, read_topic(settings, settings.topics.engagements))
    assert await mismatches(state, oracle) == []  # every event applied either way
    users = {e.user_id for e in events}
    if serving == "previous":
        stored = store.get("users", users)
        assert stored.keys() == users
        assert {p.payload["model_version"] for p in stored.values()} == {good}
    else:
        assert store.serving_version() is None


def switches(metrics: IngestMetrics) -> float:
    return metrics.registry.get_sample_value("sagestream_model_switches_total") or 0.0


def with_poisoned_promotion(
    models: tuple[Path, str, str], root: Path
) -> tuple[ModelRegistry, str, str]:
    """A registry at `root` where a good version was promoted, then a copy of it promoted and
    truncated afterwards (a half-synced volume). Returns it, the good and the poisoned name."""
    source, first = ModelRegistry(models[0]), models[1]
    registry = ModelRegistry(root)
    good = clone(source, first, registry)
    registry.promote(good)
    poisoned = clone(source, first, registry)
    registry.promote(poisoned)
    onnx = next(registry.path(poisoned).glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    return registry, good, poisoned


def clone(source: ModelRegistry, version: str, into: ModelRegistry) -> str:
    """Publish a copy of `version` into another registry; returns the new version's name."""
    staging = into.staging()
    for path in source.path(version).iterdir():
        (staging / path.name).write_bytes(path.read_bytes())
    return into.publish(staging, source.show(version))


async def test_backfill_command_fills_a_new_version_then_flips(
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
    models: tuple[Path, str, str],
    tmp_path: Path,
) -> None:
    """`sagestream backfill --version V --flip`: every entity into V (insert_only), then flip."""
    root, first, second = models
    registry = ModelRegistry(root)
    settings = make_settings(
        models={"registry": str(root), "backfill_page": 32},
        reencode={"item_min_change": 0.0, "fanout_min_change": 0.0},
    )
    with vector_store(settings) as store:
        world = World(redis_client, settings, registry.load(first), store)
        await world.put(generate_catalog(STREAM))
        await world.apply(list(generate_events(STREAM))[:600])
        store.prepare(first, world.bundle.dim)
        store.flip(first)
        await world.reencoder.run_until_idle(world.shards)
    done = await run_backfill(settings, redis_client, second, flip=True)
    users, _ = world.engaged()
    assert done["insert_only"] == 1.0
    assert done["users"] == len(users) and done["items"] == len(generate_catalog(STREAM))
    with vector_store(settings) as store:
        world.store = store
        assert store.serving_version() == second
        await assert_matches_oracle(world, registry.load(second))
