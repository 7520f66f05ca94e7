"""Stage `goals`: issue 11's five figures, each beside its goal and its baselines, in one run.

On one fresh topic and one model (`e2e.prepare_model`), in this order:

1. drained end-to-end (`e2e.measure_throughput`): the raw consume ceiling, the naive per-event
   agent and sagestream until every mark is a vector, over `events` generated events;
2. ingest: the batch runtime without the updater (fresh prefix each repeat) over the same
   events, against the ceiling: the ingest is the median of `repeats` runs, the ceiling the
   fastest of at least three reads (`verdicts.ceiling_of`; the read of step 1 is the first), and
   the drained figure is also read against that ceiling;
3. the sustainable live rate (`live.live_search`): the drained worker's state, offered rates in
   steps;
4. fan-out: the users the drained run's fan-out marked, and the users left behind their items
   after the drain (streams/devtools/bench/behind.py);
5. memory (`memory`): `memory_events` more events through the worker in a process of its own,
   its RSS sampled; then the Redis bytes per user and per item of those events' state. The
   worker reads on in the live steps' consumer group but applies to a key prefix (and writes to
   collections) of its own, empty before, so the bytes are the million's alone, whichever steps
   the search took. On the live steps' state they were not: those steps' events carry the wall
   clock and the million's the generator's times, months older, so a user that had acted live
   paired none of its million's events (older than `max_event_age_s` behind its newest).

The run's Redis keys and Qdrant collections are dropped after; the topic stays, as every bench's.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streams.devtools.bench.behind import users_behind
from streams.devtools.bench.cpu import budget, save_cores_png
from streams.devtools.bench.e2e import (
    E2EConfig,
    drop_vectors,
    measure_throughput,
    path_settings,
    prepare_model,
    worker_meter,
)
from streams.devtools.bench.ingest import (
    batch_runtime,
    bench_settings,
    consume_ceiling,
    drop_prefix,
)
from streams.devtools.bench.live import LiveConfig, live_search, save_freshness_png
from streams.devtools.bench.memory import redis_footprint, rss_run, save_rss_png
from streams.devtools.bench.verdicts import (
    MIN_CEILING_SAMPLES,
    assess,
    ceiling_of,
    rss_flatness,
)
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.runtimes.loop import run_loop
from streams.settings import Settings

log = logging.getLogger(__name__)

RSS_SAMPLES = 100  # RSS samples over the memory run, by default


@dataclass(frozen=True)
class GoalsConfig:
    events: int = 20_000  # drained run, ingest and their baselines
    memory_events: int = 1_000_000  # the RSS run
    rss_every: int | None = None  # None: memory_events / RSS_SAMPLES
    repeats: int = 3  # ingest runs (median) and ceiling reads (the fastest; at least 3)
    live: LiveConfig = field(default_factory=LiveConfig)
    naive_events: int | None = None
    model: Path | None = None
    qdrant: str = "server"
    png: Path | None = None  # freshness by offered load; the RSS (-rss.png), cores (-cpu.png)

    def e2e(self) -> E2EConfig:
        live = self.live
        return E2EConfig(
            events=self.events,
            naive_events=self.naive_events,
            model=self.model,
            qdrant=self.qdrant,
            users=live.users,
            items=live.items,
            seed=live.seed,
        )

    def memory_stream(self) -> GeneratorConfig:
        live = self.live
        return GeneratorConfig(
            users=live.users, items=live.items, events=self.memory_events, seed=live.seed + 3
        )


def sibling_png(png: Path, what: str) -> Path:
    return png.with_name(f"{png.stem}-{what}{png.suffix}")


def run_goals_bench(base: Settings, cfg: GoalsConfig) -> dict[str, Any]:
    """Every figure of the module docstring, from one run."""
    if cfg.qdrant == "server" and not base.qdrant.url:
        raise ValueError("--qdrant server needs a server URL (qdrant.url or the stack's Qdrant)")
    topic = f"bench-goals-{uuid.uuid4().hex[:8]}"
    e2e = cfg.e2e()
    with tempfile.TemporaryDirectory(prefix="sagestream-goals-") as tmp:
        work = Path(tmp)
        registry, version = prepare_model(cfg.model, work / "models", e2e.stream(cfg.events))
        naive = path_settings(base, topic, registry, cfg.qdrant, work)
        sage = path_settings(base, topic, registry, cfg.qdrant, work)
        fresh = path_settings(base, topic, registry, cfg.qdrant, work)
        fresh = fresh.model_copy(update={"kafka": sage.kafka})  # reads on after the live steps
        try:
            throughput, _ = measure_throughput(e2e, naive, sage, work, version)
            run_users = {e.user_id for e in generate_events(e2e.stream(cfg.events))}
            behind = run_loop(users_behind(sage, version, run_users))
            ingest = ingest_figures(base, topic, cfg, throughput["eps"]["ceiling"])
            live = live_search(sage, cfg.live)
            memory = memory_figures(fresh, cfg, work)
        finally:
            for settings in (naive, sage, fresh):
                run_loop(drop_prefix(settings))
                drop_vectors(settings)
    result = {
        "stage": "goals",
        "events": cfg.events,
        "partitions": sage.topics.partitions,
        "cpus": os.cpu_count(),
        "qdrant": throughput["qdrant"],
        "model": {"version": version, "source": str(cfg.model or "tiny, trained here")},
        "throughput": throughput,
        "ingest": ingest,
        "drained": drained_figures(throughput, ingest["ceiling_eps"]),
        "live": live,
        "fanout": {
            "reencodes": throughput["fanout_users"],
            "left_out_by_the_pass_bound": throughput["fanout_dropped"],
            "users_behind_after_drain": behind["behind"],
            "behind": behind,
        },
        "memory": memory,
    }
    result["goals"] = [asdict(goal) for goal in assess(result)]
    result["png"] = save_pngs(result, cfg.png)
    return result


def ingest_figures(base: Settings, topic: str, cfg: GoalsConfig, ceiling: float) -> dict[str, Any]:
    """The ingest path (no updater) over the topic's events, beside the raw consume ceiling."""
    ceilings = [ceiling]
    ingest_only = base.model_copy(
        update={"models": base.models.model_copy(update={"registry": None})}
    )
    for _ in range(max(cfg.repeats, MIN_CEILING_SAMPLES) - 1):
        ceilings.append(run_loop(consume_ceiling(ingest_only, topic, cfg.events)))
    runs = []
    cpu = worker_meter(ingest_only)
    for i in range(cfg.repeats):
        fresh = bench_settings(ingest_only, topic)
        try:
            cpu.start()
            runs.append(run_loop(batch_runtime(fresh, cfg.events)))
            cpu.settle()
        finally:
            run_loop(drop_prefix(fresh))
        log.info("ingest run %d/%d: %.0f events/s", i + 1, cfg.repeats, runs[-1])
    ceiling, median = ceiling_of(ceilings), statistics.median(runs)
    events_per_s = cfg.events * cfg.repeats / cpu.elapsed_s
    return {
        "method": "batch runtime, no updater, fresh prefix per run; median of the runs, "
        "against the fastest ceiling read",
        "eps": round(median),
        "runs": [round(r) for r in runs],
        "ceiling_eps": round(ceiling),
        "ceiling_runs": [round(c) for c in ceilings],
        "share": round(median / ceiling, 4),
        "cpu": budget(cpu.cores(), events_per_s, os.cpu_count() or 1),  # the runs together
    }


def drained_figures(throughput: Mapping[str, Any], ceiling: float) -> dict[str, Any]:
    eps = throughput["eps"]
    return {
        "eps": eps["sagestream"],
        "naive_eps": eps["naive"],
        "speedup": throughput["ratios"]["sagestream/naive"],
        "share": round(eps["sagestream"] / ceiling, 4),
    }


def memory_figures(sage: Settings, cfg: GoalsConfig, work: Path) -> dict[str, Any]:
    log.info("producing %d events for the RSS run", cfg.memory_events)
    produce_engagements(sage, generate_events(cfg.memory_stream()))
    every = cfg.rss_every or max(1, cfg.memory_events // RSS_SAMPLES)
    run = rss_run(sage, cfg.memory_events, every, work)
    samples = [(int(e), int(r)) for e, r in run["samples"]]
    return {
        "events": run["events"],
        "seconds": run["seconds"],
        "rss_every": every,
        "rss": rss_flatness(samples),
        "rss_samples": samples,
        "redis": run_loop(redis_footprint(sage)),
    }


def save_pngs(result: Mapping[str, Any], png: Path | None) -> dict[str, str] | None:
    if png is None:
        return None
    rss, cpu = sibling_png(png, "rss"), sibling_png(png, "cpu")
    save_freshness_png(result["live"], png)
    memory = result["memory"]
    save_rss_png(memory["rss_samples"], memory["rss"], rss)
    windows = [
        ("drained", result["throughput"]["sagestream_cpu"]),
        ("ingest", result["ingest"]["cpu"]),
        *((f"{step['offered_eps']:,.0f}/s", step["cpu"]) for step in result["live"]["steps"]),
    ]
    save_cores_png(windows, cpu)
    return {"freshness": str(png), "rss": str(rss), "cpu": str(cpu)}
