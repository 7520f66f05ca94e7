"""Stage `e2e`: events in, vectors out, beside its baselines, measured in one run on one topic.

On a fresh topic holding N generated events:

- ceiling: the raw consume ceiling, aiokafka `getmany` + decode
  (`streams.devtools.bench.ingest.consume_ceiling`);
- naive: a Faust agent that handles one event at a time the way one would first write it
  (`streams.devtools.bench.naive`). It is slow, so it runs on the first `naive_events` events it
  consumes (default min(N, 2000)); the output says how many;
- sagestream: the batch runtime with the updater, events/s from the first event consumed until
  the final drain has turned every dirty mark into vectors (the end of the last pass that found
  marks).

Freshness: the same worker (same consumer group, Redis prefix and vector store, so it continues
after the N events with warm state) runs with the default settings while a paced producer in
another process offers a share (`load_fraction`, half by default) of sagestream's measured rate
for `load_seconds`, each event stamped with its send time. The samples are the re-encoder's own,
per entity and pass
(`PassStats.freshness_s`: the upsert's return minus the oldest event that dirtied the entity),
collected through the metrics' `observe_pass`, the on_pass hook the updater calls after every
pass. Measured from the oldest pending event, they are the pessimistic end; the `event_ts_max`
in the Qdrant payload is the newest one.

Every path encodes with the same promoted model: the one given, or a tiny one trained here on the
bench's stream. No catalog is produced (the bench's catalog topic is its own and stays empty), so
on every path items are encoded from their id-only stand-in content and their neighbours. Vectors
go to embedded Qdrant stores in a temporary directory, one per path: the figures compare the
paths on equal terms but are not Qdrant server figures (embedded mode persists every point to
SQLite; the JSON's pass totals show how much of a pass the upsert takes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from kafka import KafkaAdminClient

from encoders.contract import MANIFEST_FILE
from encoders.registry import ModelRegistry
from state import RedisState
from streams.devtools.bench.cpu import CpuMeter, budget, service_pids
from streams.devtools.bench.ingest import bench_settings, consume_ceiling, drop_prefix
from streams.devtools.bench.naive import run_naive, spawn
from streams.devtools.bench.verdicts import GOAL_E2E_SHARE, GOAL_SPEEDUP
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.metrics import IngestMetrics
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.limits import RunLimits
from streams.runtimes.loop import run_loop
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.vectors.rules import PassStats
from streams.vectors.store import MEMORY, vector_store
from streams.wire.topics import ensure_topics

log = logging.getLogger(__name__)

NAIVE_EVENTS_MAX = 2000
GOAL_P99_S = 2.0  # freshness p99 per entity kind
TRAIN_EVENTS = 3000
PROGRESS_EVERY_S = 5.0
IDLE_STOP_S = 15.0  # a phase whose events stop coming ends instead of hanging
JOIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class E2EConfig:
    events: int
    load_seconds: float = 25.0
    naive_events: int | None = None  # None: min(events, NAIVE_EVENTS_MAX)
    model: Path | None = None  # a registry root with a promoted version, or a version directory
    png: Path | None = None
    qdrant: str = "memory"  # embedded "memory" or "disk" (a path per run), or "server"
    load_fraction: float = 0.5  # offered load for freshness, as a share of sagestream's max
    load_rate: float | None = None  # or this many events/s (topologies compared at one load)
    users: int = 5000
    items: int = 10000
    seed: int = 7

    def stream(self, events: int, seed_offset: int = 0) -> GeneratorConfig:
        return GeneratorConfig(
            users=self.users, items=self.items, events=events, seed=self.seed + seed_offset
        )


class PassRecorder(IngestMetrics):
    """The worker's metrics, also keeping every pass's freshness samples and when it ended.

    `keep_samples=False` keeps counts only, as the product's metrics do (fixed-size
    histograms): a run measuring the worker's memory must not grow a list per event itself."""

    def __init__(self, *, keep_samples: bool = True) -> None:
        super().__init__()
        self.keep_samples = keep_samples
        self.samples: dict[str, list[float]] = {"users": [], "items": []}
        self.encoded = 0
        self.passes = {
            "count": 0,
            "encode_s": 0.0,
            "upsert_s": 0.0,
            "lists_kept": 0,
            "lists_sent": 0,
        }
        self.fanout_rebuilt = 0  # users rebuilt because an item of their window was re-encoded
        self.fanout_left_out = 0  # and those the per-pass bound left out
        self.last_pass_at: float | None = None

    def observe_pass(self, stats: PassStats) -> None:
        super().observe_pass(stats)
        if stats.idle:
            return
        self.last_pass_at = time.monotonic()
        self.encoded += stats.users_encoded + stats.items_encoded
        self.passes["count"] += 1
        self.passes["encode_s"] += stats.encode_s
        self.passes["upsert_s"] += stats.upsert_s
        self.passes["lists_kept"] += stats.lists_kept
        self.passes["lists_sent"] += stats.lists_sent
        self.fanout_rebuilt += stats.fanout_users + stats.fanout_marked
        self.fanout_left_out += stats.fanout_dropped
        if self.keep_samples:
            for kind, samples in stats.freshness_s.items():
                self.samples[kind].extend(samples)

    def pass_summary(self) -> dict[str, float]:
        """Passes that found marks, their onnxruntime and upsert seconds in total, and the
        neighbour lists they read: kept (unchanged since an earlier read) or sent in full."""
        return {name: round(value, 3) for name, value in self.passes.items()}

    def events_applied(self) -> int:
        return int(self.registry.get_sample_value("sagestream_events_applied_total") or 0)


# -- the model ---------------------------------------------------------------------------------


def prepare_model(model: Path | None, root: Path, stream: GeneratorConfig) -> tuple[Path, str]:
    """A registry root with a promoted version: the one given, a copy of a given version
    directory, or a tiny model trained on `stream` (needs the trainer extra)."""
    if model is None:
        return root, train_tiny_model(root, stream)
    promoted = ModelRegistry(model).promoted()
    if promoted is not None:
        return model, promoted
    if (model / MANIFEST_FILE).is_file():
        shutil.copytree(model, root / "versions" / model.name)
        ModelRegistry(root).promote(model.name)
        return root, model.name
    raise ValueError(f"{model}: neither a registry with a promoted version nor a version directory")


def train_tiny_model(root: Path, stream: GeneratorConfig) -> str:
    """One epoch of the tests' tiny model on the stream's first events, published and promoted."""
    from streams.devtools.tiny_model import publish_tiny_model

    started = time.perf_counter()
    first = replace(stream, events=min(stream.events, TRAIN_EVENTS))
    log.info("training a tiny model (one epoch on %d events)", first.events)
    registry, version = publish_tiny_model(root, first)
    registry.promote(version)
    log.info("trained and promoted %s in %.0fs", version, time.perf_counter() - started)
    return version


def paced_producer(env: dict[str, str], stream: GeneratorConfig, rate: float, out: str) -> None:
    """The offered load, in a process of its own; events carry their send time."""
    os.environ.update(env)
    started = time.monotonic()
    sent = produce_engagements(Settings.load(), generate_events(stream), rate=rate, stamp_now=True)
    Path(out).write_text(json.dumps({"sent": sent, "seconds": time.monotonic() - started}))


# -- sagestream: the batch runtime with the updater ------------------------------------------------


async def _progress(label: str, metrics: PassRecorder, total: int) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        log.info(
            "%s: %d/%d events applied, %d vectors written",
            label,
            metrics.events_applied(),
            total,
            metrics.encoded,
        )


async def run_worker(settings: Settings, events: int, label: str) -> tuple[PassRecorder, float]:
    """A bounded batch runtime with the updater; returns its metrics and its first-event time."""
    metrics = PassRecorder()
    runtime = BatchRuntime(
        settings, metrics, RunLimits(max_events=events, until_idle_s=IDLE_STOP_S)
    )
    ticker = asyncio.create_task(_progress(label, metrics, events))
    try:
        stats = await runtime.run()
    finally:
        ticker.cancel()
    if stats.first_batch_at is None or metrics.last_pass_at is None:
        raise RuntimeError(f"{label}: no events were turned into vectors")
    if stats.events < events:
        raise RuntimeError(f"{label}: only {stats.events} of {events} events arrived")
    return metrics, stats.first_batch_at


def worker_meter(settings: Settings, **others: int) -> CpuMeter:
    """CPU by role around a worker run in this process: the services it talks to, and others
    (a producer) by pid."""
    services, unmeasured = service_pids(settings)
    roles = {"worker": [os.getpid()], **services, **{name: [pid] for name, pid in others.items()}}
    return CpuMeter(roles, unmeasured)


async def group_joined(settings: Settings, worker: asyncio.Task[Any]) -> None:
    """Wait until the worker owns its partitions, so the load meets a ready worker."""
    group = settings.kafka.group_id
    admin = await asyncio.to_thread(KafkaAdminClient, **settings.kafka.client_kwargs())
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:
            found = await asyncio.to_thread(admin.describe_groups, [group])
            info = found.get(group) or {}
            if info.get("group_state") == "Stable" and info.get("members"):
                return
            if worker.done():
                await worker
                raise RuntimeError("the worker stopped before joining its group")
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group} did not settle in {JOIN_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        admin.close()


async def under_load(
    settings: Settings, stream: GeneratorConfig, rate: float, work: Path
) -> tuple[PassRecorder, dict[str, float]]:
    """The worker while a paced producer offers `rate` events/s; returns samples and the load."""
    worker = asyncio.create_task(run_worker(settings, stream.events, "under load"))
    await group_joined(settings, worker)
    report = work / "producer.json"
    producer = spawn(paced_producer, settings.to_env(), stream, rate, str(report))
    try:
        metrics, _ = await worker
    finally:
        await asyncio.to_thread(producer.join)
    load: dict[str, float] = json.loads(report.read_text())
    return metrics, load


# -- the run -----------------------------------------------------------------------------------


def path_settings(base: Settings, topic: str, registry: Path, store: str, work: Path) -> Settings:
    """One path's settings: its own embedded store (in memory or on disk under `work`), or its
    own collection prefix on the server `base` names."""
    settings = bench_settings(base, topic)
    name = settings.redis.key_prefix  # fresh per path (bench_settings)
    if store == "server":
        qdrant = settings.qdrant.model_copy(update={"collection_prefix": f"{name}_"})
    else:
        path = work / f"qdrant-{name}" if store == "disk" else Path(MEMORY)
        qdrant = settings.qdrant.model_copy(update={"url": None, "path": path})
    return settings.model_copy(
        update={
            "models": settings.models.model_copy(update={"registry": registry}),
            "qdrant": qdrant,
            "metrics": settings.metrics.model_copy(update={"enabled": False}),
        }
    )


def _where(settings: Settings) -> str:
    if settings.qdrant.url:
        return f"server {settings.qdrant.url}, a collection prefix per path"
    where = "in memory" if str(settings.qdrant.path) == MEMORY else "on disk"
    return f"embedded (local mode, {where}), one store per path"


def count_vectors(settings: Settings, version: str) -> dict[str, int]:
    """Points per kind a path wrote; an in-memory store is gone with its worker ({})."""
    if settings.qdrant.url is None and str(settings.qdrant.path) == MEMORY:
        return {}
    with vector_store(settings) as store:
        return {kind: store.count(kind, version=version) for kind in ("users", "items")}


def drop_vectors(settings: Settings) -> None:
    if settings.qdrant.url:
        with vector_store(settings) as store:
            store.purge()


async def marks_left(settings: Settings) -> int:
    client = redis_client(settings.redis)
    try:
        state = RedisState(client, settings.state, settings.redis.key_prefix)
        return sum((await state.dirty_backlog()).values())
    finally:
        await client.aclose()


def summarise(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"samples": 0}
    p50, p90, p99 = np.percentile(np.asarray(samples), [50, 90, 99])
    return {
        "samples": len(samples),
        "p50_s": round(float(p50), 4),
        "p90_s": round(float(p90), 4),
        "p99_s": round(float(p99), 4),
        "max_s": round(float(max(samples)), 4),
    }


def save_png(freshness: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """Freshness histograms per entity kind, with p50, p99 and the goal marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    for index, (kind, samples) in enumerate(freshness.items(), start=1):
        ax = fig.add_subplot(1, len(freshness), index)
        ax.hist(samples, bins=60, color="tab:blue", alpha=0.8)
        if samples:
            p50, p99 = np.percentile(np.asarray(samples), [50, 99])
            ax.axvline(float(p50), color="tab:green", label=f"p50 {p50:.2f} s")
            ax.axvline(float(p99), color="tab:orange", label=f"p99 {p99:.2f} s")
        ax.axvline(GOAL_P99_S, color="tab:red", linestyle="--", label=f"goal p99 {GOAL_P99_S} s")
        ax.set_title(f"{kind} ({len(samples)} samples)")
        ax.set_xlabel("freshness: upsert time - event time (s)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def run_e2e_bench(base: Settings, cfg: E2EConfig) -> dict[str, Any]:
    """Every figure of the module docstring, from one run; temporary state is removed after."""
    if base.qdrant.url and cfg.qdrant != "server":
        log.warning("qdrant.url is not used: each path writes an embedded store of its own")
    if cfg.qdrant == "server" and not base.qdrant.url:
        raise ValueError("--qdrant server needs a server URL (qdrant.url or the stack's Qdrant)")
    topic = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="sagestream-e2e-") as tmp:
        work = Path(tmp)
        registry, version = prepare_model(cfg.model, work / "models", cfg.stream(cfg.events))
        naive = path_settings(base, topic, registry, cfg.qdrant, work)
        sage = path_settings(base, topic, registry, cfg.qdrant, work)
        try:
            result, sage_eps = measure_throughput(cfg, naive, sage, work, version)
            rate = cfg.load_rate or sage_eps * cfg.load_fraction
            result["freshness"] = _freshness(cfg, sage, rate, work)
        finally:
            for settings in (naive, sage):
                run_loop(drop_prefix(settings))
                drop_vectors(settings)
    result["goals"] = _goals(result)
    result["model"] = {"version": version, "source": str(cfg.model or "tiny, trained here")}
    return result


def _goals(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    speedup = result["ratios"]["sagestream/naive"]
    share = result["ratios"]["sagestream/ceiling"]
    p99 = max(f.get("p99_s", float("inf")) for f in result["freshness"]["kinds"].values())
    return {
        "sagestream/naive": {
            "goal_min": GOAL_SPEEDUP,
            "value": speedup,
            "met": speedup >= GOAL_SPEEDUP,
        },
        "sagestream/ceiling": {
            "goal_min": GOAL_E2E_SHARE,
            "value": share,
            "met": share >= GOAL_E2E_SHARE,
        },
        "freshness_p99_s": {"goal_max": GOAL_P99_S, "value": p99, "met": p99 <= GOAL_P99_S},
    }


def measure_throughput(
    cfg: E2EConfig, naive: Settings, sage: Settings, work: Path, version: str
) -> tuple[dict[str, Any], float]:
    """Ceiling, naive and sagestream on one topic of `cfg.events` events; and sagestream's."""
    topic = sage.topics.engagements
    ensure_topics(sage)
    events = list(generate_events(cfg.stream(cfg.events)))
    log.info("producing %d events to %s", len(events), topic)
    produce_engagements(sage, events)
    log.info("raw consume ceiling")
    ceiling = run_loop(consume_ceiling(sage, topic, cfg.events))
    naive_n = min(cfg.events, cfg.naive_events or NAIVE_EVENTS_MAX)
    naive_stats = run_naive(naive, naive_n, work)
    naive_eps = naive_stats["events"] / naive_stats["seconds"]
    log.info("sagestream: the batch runtime with the updater, %d events", cfg.events)
    cpu = worker_meter(sage)
    cpu.start()
    metrics, first = run_loop(run_worker(sage, cfg.events, "sagestream"))
    cpu.settle()
    sage_eps = cfg.events / (cast(float, metrics.last_pass_at) - first)
    result = {
        "stage": "e2e",
        "events": cfg.events,
        "partitions": sage.topics.partitions,
        "cpus": os.cpu_count(),
        "qdrant": _where(sage),
        "eps": {
            "ceiling": round(ceiling),
            "naive": round(naive_eps),
            "sagestream": round(sage_eps),
        },
        "naive_events": int(naive_stats["events"]),
        "ratios": {
            "sagestream/naive": round(sage_eps / naive_eps, 2),
            "sagestream/ceiling": round(sage_eps / ceiling, 4),
            "naive/ceiling": round(naive_eps / ceiling, 6),
        },
        "distinct": {
            "users": len({e.user_id for e in events}),
            "items": len({e.item_id for e in events}),
        },
        "vectors": {
            "naive": count_vectors(naive, version),
            "sagestream": count_vectors(sage, version),
        },
        "marks_left": run_loop(marks_left(sage)),
        "sagestream_passes": metrics.pass_summary(),
        "fanout_users": metrics.fanout_rebuilt,
        "fanout_dropped": metrics.fanout_left_out,
        # the whole run (start-up and group join included): CPU per event, not per second
        "sagestream_cpu": budget(cpu.cores(), cfg.events / cpu.elapsed_s, os.cpu_count() or 1),
    }
    return result, sage_eps


def _freshness(cfg: E2EConfig, sage: Settings, rate: float, work: Path) -> dict[str, Any]:
    """Freshness per entity kind while `rate` events/s are offered for `cfg.load_seconds`."""
    stream = cfg.stream(max(1, round(rate * cfg.load_seconds)), seed_offset=1)
    log.info("freshness: %.0f events/s offered for %.0fs", rate, cfg.load_seconds)
    loaded, load = run_loop(under_load(sage, stream, rate, work))
    if cfg.png is not None:
        title = f"freshness at {rate:,.0f} events/s offered, window {sage.reencode.window_s} s"
        save_png(loaded.samples, cfg.png, title)
    return {
        "method": "per entity and pass: upsert return minus its oldest dirtying event",
        "offered_eps": round(rate),
        "load_fraction": None if cfg.load_rate else cfg.load_fraction,
        "achieved_eps": round(load["sent"] / load["seconds"]),
        "events": int(load["sent"]),
        "load_seconds": cfg.load_seconds,
        "window_s": sage.reencode.window_s,
        "kinds": {kind: summarise(samples) for kind, samples in loaded.samples.items()},
        "passes": loaded.pass_summary(),
        "png": str(cfg.png) if cfg.png else None,
    }
