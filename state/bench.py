"""Throughput of `RedisState.apply` on a generated engagement stream, against a real Redis.

    python -m state.bench --redis-url redis://127.0.0.1:6379/0 --events 100000 [--repeats 3]

Why its own generator: `state` never imports `streams`, and the figure has to move only when the
state code does. The stream is shaped like the real one where it matters for the script's cost:
users in communities, Zipf item popularity, sessions of a few minutes (which is what makes pairs),
the view/click/save mix, and saves into a few boards per user (context pairs). Each repeat writes
under a fresh key prefix, so every run starts from an empty state, and deletes its keys after.
The figure is events per second over the whole stream, median of the repeats; the Redis-side
script time (``INFO commandstats``) is reported too, to tell script cost from client overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import random
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from state.coengagement import Event
from state.config import StateConfig
from state.redis_state import RedisState

TOPIC = "bench"
PARTITIONS = 4
BATCH = 2_000
USERS = 5_000
ITEMS = 10_000
COMMUNITIES = 50
ZIPF_S = 1.0
USER_SKEW = 0.7
ACTIONS = (("view", 0.70), ("click", 0.22), ("save", 0.08))
CONTEXT_SHARE = 0.3  # of saves
BOARDS_PER_USER = 4
SPAN_S = 7 * 86400.0
# Commands the bench or the client sends itself; the rest of commandstats is the script's work.
_CLIENT_COMMANDS = frozenset(
    {"evalsha", "eval", "script|load", "info", "config|resetstat", "scan", "unlink", "get"}
)


class _Stream:
    """Sessions of community-biased Zipf picks; deterministic for one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        weights = [1.0 / (rank**ZIPF_S) for rank in range(1, ITEMS + 1)]
        self.cum = list(itertools.accumulate(weights))
        activity = [1.0 / (rank**USER_SKEW) for rank in range(1, USERS + 1)]
        self.user_cum = list(itertools.accumulate(activity))
        # Each community ranks the catalogue its own way: a shifted popularity order.
        self.shift = [self.rng.randrange(ITEMS) for _ in range(COMMUNITIES)]

    def item(self, community: int) -> str:
        rank = bisect.bisect_left(self.cum, self.rng.random() * self.cum[-1])
        if self.rng.random() < 0.7:  # most picks follow the user's community taste
            rank = (rank + self.shift[community]) % ITEMS
        return f"i{rank}"

    def action(self) -> str:
        draw, acc = self.rng.random(), 0.0
        for name, share in ACTIONS:
            acc += share
            if draw < acc:
                return name
        return ACTIONS[-1][0]

    def session(self, start: float) -> list[Event]:
        """A few minutes of one user's actions, 10-60 s apart, about 8 of them (at most 40)."""
        draw = self.rng.random() * self.user_cum[-1]
        user = bisect.bisect_left(self.user_cum, draw)  # a few heavy users, a long tail
        community = user % COMMUNITIES
        events, ts = [], start
        length = min(1 + int(self.rng.expovariate(1 / 7.0)), 40)
        for _ in range(length):
            action = self.action()
            ctx = None
            if action == "save" and self.rng.random() < CONTEXT_SHARE:
                ctx = f"b{user}.{self.rng.randrange(BOARDS_PER_USER)}"
            events.append(Event(f"u{user}", self.item(community), action, ts, None, ctx))
            ts += self.rng.uniform(10.0, 60.0)
        return events


def generate(n_events: int, seed: int = 7, start_ts: float = 1.7e9) -> list[Event]:
    """`n_events` events in time order: sessions start anywhere in a week, so a user's sessions
    are mostly hours apart (beyond the pair horizon) and pairs come from within a session."""
    stream = _Stream(seed)
    events: list[Event] = []
    span = SPAN_S
    while len(events) < n_events:
        events.extend(stream.session(start_ts + stream.rng.random() * span))
    events = events[:n_events]
    events.sort(key=lambda e: e.ts)
    return events


def partitioned(events: Sequence[Event]) -> dict[int, list[tuple[int, Event]]]:
    """Key by user (like the producer does) and number each partition's events from 0."""
    out: dict[int, list[tuple[int, Event]]] = {p: [] for p in range(PARTITIONS)}
    for event in events:
        mine = out[zlib.crc32(event.user_id.encode()) % PARTITIONS]
        mine.append((len(mine), event))
    return out


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


async def _one_run(
    client: aioredis.Redis, parts: dict[int, list[tuple[int, Event]]], config: StateConfig
) -> tuple[float, float, float]:
    """Wall, script and Redis CPU seconds of applying the stream once, on a fresh prefix."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    state = RedisState(client, config, prefix)
    longest = max(len(batch) for batch in parts.values())
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
    finally:
        await _delete_prefix(client, prefix)
    return wall, script, cpu


async def run_state_bench(
    client: aioredis.Redis, events: int, repeats: int, config: StateConfig | None = None
) -> dict[str, Any]:
    """Events/s of `RedisState.apply` over `events` generated events, median of `repeats` runs."""
    cfg = config if config is not None else StateConfig()
    parts = partitioned(generate(events))
    await client.config_resetstat()
    walls, scripts, cpus = [], [], []
    for _ in range(repeats):
        wall, script, cpu = await _one_run(client, parts, cfg)
        walls.append(wall)
        scripts.append(script)
        cpus.append(cpu)
    stats = await client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    wall_s = statistics.median(walls)
    return {
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
    }


async def _main(url: str, events: int, repeats: int, max_pairs: int | None) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    cfg = StateConfig() if max_pairs is None else StateConfig(max_pairs=max_pairs)
    try:
        return await run_state_bench(client, events, repeats, cfg)
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m state.bench", description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-pairs", type=int, default=None, help="override the default")
    args = parser.parse_args(argv)
    result = asyncio.run(_main(args.redis_url, args.events, args.repeats, args.max_pairs))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
