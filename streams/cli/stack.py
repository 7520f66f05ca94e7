"""`sagestream stack up|down|status|purge`: the local real Kafka, Redis and Qdrant."""

from __future__ import annotations

import argparse

from deploy import stack
from streams.cli.common import say, settings_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("stack", help="start, stop or inspect the local Kafka, Redis, Qdrant")
    parser.add_argument("action", choices=["up", "down", "status", "purge"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = settings_of(args).stack
    if args.action == "up":
        stack.up(cfg)
    elif args.action == "down":
        stack.down(cfg)
    elif args.action == "purge":
        stack.purge(cfg)
    rows = stack.status(cfg)
    for row in rows:
        say(row.line())
    if cfg.qdrant_server() is None:
        say(stack.NO_QDRANT)
    say(f"data: {cfg.run_dir}")
    if args.action == "status":
        return 0 if all(r.running for r in rows) else 3
    return 0
