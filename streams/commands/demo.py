"""`sagestream demo`: the real local stack, a generated stream, the worker, the state growing."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque

from deploy import stack
from state import RedisState
from streams.commands.common import say, settings_of
from streams.generate import GeneratorConfig, generate_catalog, generate_events
from streams.produce import produce_catalog, produce_engagements
from streams.resources import redis_client
from streams.settings import Settings
from streams.topics import ensure_topics


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="stack up, generate a stream, run the worker, watch state")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=3000.0, help="offered events per second")
    parser.add_argument("--runtime", choices=["faust", "batch"], default="faust")
    parser.add_argument("--seed", type=int, default=7)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    say("1/4 starting the local stack (the first run downloads Kafka with Maven)")
    for row in stack.up(settings.stack):
        say("    " + row.line())
    ensure_topics(settings)
    cfg = GeneratorConfig(events=args.events, seed=args.seed)
    say(
        f"2/4 producing {args.events} generated events at {args.rate:.0f}/s to "
        f"'{settings.topics.engagements}' ({cfg.users} users, {cfg.items} items)"
    )
    produce_catalog(settings, generate_catalog(cfg))
    producer = threading.Thread(
        target=produce_engagements,
        args=(settings, generate_events(cfg)),
        kwargs={"rate": args.rate},
        daemon=True,
    )
    producer.start()
    say(
        f"3/4 running the worker ({args.runtime} runtime); metrics on "
        f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "--runtime",
            args.runtime,
            "--until-idle",
            "5",
        ],
        env=dict(os.environ, **settings.to_env()),
    )
    try:
        _watch(settings, worker)
    finally:
        if worker.poll() is None:
            worker.terminate()
        worker.wait()
    say("4/4 what the state holds now")
    asyncio.run(_show(settings, cfg))
    return 0


def _applied(settings: Settings) -> int | None:
    url = f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("sagestream_events_applied_total "):
            return int(float(line.split()[1]))
    return None


def _watch(settings: Settings, worker: subprocess.Popen[bytes]) -> None:
    last = -1
    while worker.poll() is None:
        time.sleep(1.0)
        applied = _applied(settings)
        if applied is not None and applied != last:
            backlog = asyncio.run(_backlog(settings))
            say(
                f"    applied {applied:>8,} events   waiting for re-encoding: "
                f"{backlog.get('users', 0):>6,} user and {backlog.get('items', 0):>6,} item marks"
            )
            last = applied


async def _backlog(settings: Settings) -> dict[str, int]:
    client = redis_client(settings.redis)
    try:
        return await RedisState(client, settings.state, settings.redis.key_prefix).dirty_backlog()
    finally:
        await client.aclose()


async def _show(settings: Settings, cfg: GeneratorConfig) -> None:
    from kafka.partitioner.default import murmur2

    client = redis_client(settings.redis)
    state = RedisState(client, settings.state, settings.redis.key_prefix)
    try:
        last = deque(generate_events(cfg), maxlen=1)[0]  # the freshest user and item
        user = last.user_id
        partition = (murmur2(user.encode()) & 0x7FFFFFFF) % settings.topics.partitions
        seq = await state.user_sequence(settings.topics.engagements, partition, user)
        say(
            f"    user {user}: {len(seq)} actions kept, latest: "
            + ", ".join(f"{e.action} {e.item_id}" for e in seq[-5:])
        )
        item = last.item_id
        now = last.ts
        neighbours = await state.item_neighbours(item, 5, now)
        say(
            f"    item {item}: top neighbours " + ", ".join(f"{n} ({w:.3f})" for n, w in neighbours)
        )
    finally:
        await client.aclose()
