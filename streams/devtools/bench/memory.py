"""Memory figures of `sagestream bench --stage goals`: the worker's RSS over a long drained run,
and Redis bytes per user and per item.

RSS: the worker runs in a process of its own (nothing else of the bench in its memory) over
`events` events produced beforehand, and samples its own resident set (/proc/self/statm, Linux)
every `every` events applied. `verdicts.rss_flatness` judges the curve. Its metrics keep counts
and histograms only, as the product's do: a list of every freshness sample (one or more per
event) in the measured process would be growth of the bench's own.

Redis: `MEMORY USAGE ... SAMPLES 0` (exact) of every key under the run's prefix, grouped by the
key schema of `state/keys.py`: a user's keys (sequence, user hash, recent event ids) and an
item's (item hash, neighbour zset, one of each per partition that saw the item, and under the
item's own tag its content, encode basis and readers); what is shared
(contexts, dirty marks, watermarks, the trim queue) is reported apart. Per user and per item are
those sums over the distinct users and items that have keys.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from state import keys
from streams.devtools.bench.e2e import IDLE_STOP_S, PassRecorder
from streams.devtools.bench.naive import spawn
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.client_logs import quiet_chatty_loggers
from streams.runtimes.limits import RunLimits
from streams.runtimes.loop import run_loop
from streams.runtimes.wiring import redis_client
from streams.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_POLL_S = 0.25
SCAN_BATCH = 1000
USER_KEYS = {keys.SEQUENCE: "users", keys.USER: "users", keys.EVENT_IDS: "users"}
ITEM_KEYS = {keys.ITEM: "items", keys.NEIGHBOURS: "items"}
ITEM_OWN_KEYS = frozenset({keys.CATALOG, keys.BASIS, keys.READERS})


@dataclass(frozen=True)
class RssRun:
    events: int
    every: int
    out: str


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _sampled_worker(settings: Settings, run: RssRun) -> dict[str, Any]:
    metrics = PassRecorder(keep_samples=False)  # a list of every freshness sample grew the RSS
    limits = RunLimits(max_events=run.events, until_idle_s=IDLE_STOP_S)
    runtime = BatchRuntime(settings, metrics, limits)
    samples = [(0, rss_bytes())]

    async def sample() -> None:
        next_at = run.every
        while True:
            await asyncio.sleep(SAMPLE_POLL_S)
            applied = metrics.events_applied()
            if applied >= next_at:
                samples.append((applied, rss_bytes()))
                next_at = (applied // run.every + 1) * run.every

    sampler = asyncio.create_task(sample())
    try:
        stats = await runtime.run()
    finally:
        sampler.cancel()
    samples.append((metrics.events_applied(), rss_bytes()))
    return {
        "events": stats.events,
        "seconds": round(stats.seconds, 1),
        "samples": samples,
        "fanout_users": metrics.fanout_rebuilt,
    }


def _rss_process(env: dict[str, str], run: RssRun) -> None:
    """The worker's own process, with the settings of its parent."""
    os.environ.update(env)
    quiet_chatty_loggers()
    result = run_loop(_sampled_worker(Settings.load(), run))
    Path(run.out).write_text(json.dumps(result))


def rss_run(settings: Settings, events: int, every: int, work: Path) -> dict[str, Any]:
    """The worker over the next `events` records of its group, its RSS every `every` events."""
    run = RssRun(events, every, str(work / "rss.json"))
    log.info("worker RSS over %d events, sampled every %d", events, every)
    process = spawn(_rss_process, settings.to_env(), run)
    process.join()
    if process.exitcode != 0 or not Path(run.out).exists():
        raise RuntimeError(f"the RSS worker failed (exit code {process.exitcode})")
    result: dict[str, Any] = json.loads(Path(run.out).read_text())
    return result


def classify(key: str) -> tuple[str, str]:
    """(users|items|shared, entity id) of a key under the schema of state/keys.py."""
    head, tagged, rest = key.partition("}" + keys.SEP)
    if not tagged:
        return "shared", ""
    own = head.partition("{" + keys.ITEM_TAG + keys.SEP)[2]
    if own and rest in ITEM_OWN_KEYS:  # an item's content, basis and readers: its own tag
        return "items", own
    name, _, entity = rest.partition(keys.SEP)
    kind = USER_KEYS.get(name) or ITEM_KEYS.get(name)
    return (kind, entity) if kind and entity else ("shared", "")


class Footprint:
    def __init__(self) -> None:
        self.bytes = {"users": 0, "items": 0, "shared": 0}
        self.keys = {"users": 0, "items": 0, "shared": 0}
        self.entities: dict[str, set[str]] = {"users": set(), "items": set()}

    def add(self, names: Sequence[str], sizes: Sequence[int | None]) -> None:
        for name, size in zip(names, sizes, strict=True):
            kind, entity = classify(name)
            self.bytes[kind] += int(size or 0)
            self.keys[kind] += 1
            if entity:
                self.entities[kind].add(entity)

    def summary(self) -> dict[str, Any]:
        users, items = len(self.entities["users"]), len(self.entities["items"])
        return {
            "method": "MEMORY USAGE SAMPLES 0 of every key under the prefix, grouped by key kind",
            "users": users,
            "items": items,
            "bytes": self.bytes,
            "keys": self.keys,
            "bytes_per_user": round(self.bytes["users"] / users) if users else 0,
            "bytes_per_item": round(self.bytes["items"] / items) if items else 0,
        }


async def _sizes(client: aioredis.Redis, names: Sequence[str]) -> list[int | None]:
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.memory_usage(name, samples=0)
        sizes: list[int | None] = await pipe.execute()
    return sizes


async def redis_footprint(settings: Settings) -> dict[str, Any]:
    """Bytes per user and per item under the settings' key prefix."""
    client = redis_client(settings.redis)
    footprint = Footprint()
    try:
        batch: list[str] = []
        async for key in client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=5000):
            batch.append(key.decode() if isinstance(key, bytes) else key)
            if len(batch) >= SCAN_BATCH:
                footprint.add(batch, await _sizes(client, batch))
                batch = []
        if batch:
            footprint.add(batch, await _sizes(client, batch))
    finally:
        await client.aclose()
    return footprint.summary()


def save_rss_png(samples: Sequence[Sequence[int]], flatness: dict[str, Any], path: Path) -> None:
    """The worker's RSS against events applied, the quarters that judge flatness shaded."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot(1, 1, 1)
    events = [e for e, _ in samples]
    ax.plot(events, [r / 2**20 for _, r in samples], marker=".", color="tab:blue")
    total = max(events) if events else 0
    for start, end in ((0.25, 0.5), (0.75, 1.0)):
        ax.axvspan(start * total, end * total, color="tab:grey", alpha=0.15)
    verdict = {True: "flat", False: "growing", None: "not judged"}[flatness["flat"]]
    ax.set_title(f"worker RSS over {total:,} events: {verdict} (shaded: the quarters compared)")
    ax.set_xlabel("events applied")
    ax.set_ylabel("RSS (MiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
