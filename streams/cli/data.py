"""`sagestream generate` and `sagestream replay`: events onto the engagement topic."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from streams.cli.common import say, settings_of
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.produce import produce_catalog, produce_engagements
from streams.training.datasets import load_dataset
from streams.wire.events import encode_engagement
from streams.wire.topics import ensure_topics


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gen = sub.add_parser("generate", help="a synthetic engagement stream with planted structure")
    gen.add_argument("--events", type=int, default=50_000)
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--items", type=int, default=2000)
    gen.add_argument("--communities", type=int, default=8)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    gen.add_argument("--out", type=Path, help="write JSONL here instead of producing to Kafka")
    gen.add_argument("--no-catalog", action="store_true", help="skip the catalog topic")
    gen.set_defaults(func=run_generate)

    rep = sub.add_parser(
        "replay", help="produce a real interaction log onto the topic in time order"
    )
    rep.add_argument("--data", type=Path, required=True)
    rep.add_argument(
        "--format", choices=["movielens", "movielens-csv", "pairs", "jsonl"], required=True
    )
    rep.add_argument("--items", type=Path, help="catalog JSONL for --format jsonl")
    rep.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    rep.add_argument("--limit", type=int, help="send only the first N events")
    rep.set_defaults(func=run_replay)


def run_generate(args: argparse.Namespace) -> int:
    cfg = GeneratorConfig(
        users=args.users,
        items=args.items,
        communities=args.communities,
        events=args.events,
        seed=args.seed,
    )
    if args.out:
        with args.out.open("wb") as out:
            for event in generate_events(cfg):
                out.write(encode_engagement(event) + b"\n")
        say(f"wrote {cfg.events} events to {args.out}")
        return 0
    settings = settings_of(args)
    ensure_topics(settings)
    if not args.no_catalog:
        say(f"catalog: {produce_catalog(settings, generate_catalog(cfg))} items")
    sent = produce_engagements(settings, generate_events(cfg), rate=args.rate)
    say(f"produced {sent} events to {settings.topics.engagements}")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    ensure_topics(settings)
    dataset = load_dataset(args.data, args.format, args.items)
    if dataset.items:
        say(f"catalog: {produce_catalog(settings, dataset.items.values())} items")
    events = itertools.islice(dataset.events, args.limit)
    sent = produce_engagements(settings, events, rate=args.rate)
    say(f"replayed {sent} events from {args.data} to {settings.topics.engagements}")
    return 0
