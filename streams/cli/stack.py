"""`sagestream stack up|down|status|purge`: the local real Kafka, Redis and Qdrant."""

from __future__ import annotations

import argparse
import json

from deploy import stack
from streams.cli.common import add_topology, say, settings_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("stack", help="start, stop or inspect the local Kafka, Redis, Qdrant")
    parser.add_argument("action", choices=["up", "down", "status", "purge"])
    add_topology(parser)
    parser.set_defaults(func=run)


def client_env(cfg: stack.StackConfig) -> list[str]:
    """`StackConfig.client_settings` as the environment variables the worker reads."""
    lines = []
    for section, fields in cfg.client_settings().items():
        for name, value in fields.items():
            shown = json.dumps(value) if isinstance(value, list) else str(value)
            lines.append(f"SAGESTREAM_{section.upper()}__{name.upper()}={shown!r}")
    return lines


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
    if cfg.topology == "cluster" and args.action in ("up", "status"):
        say("the product's settings for it (or pass --topology cluster to the commands):")
        for line in client_env(cfg):
            say(f"    {line}")
    if args.action == "status":
        return 0 if all(r.running for r in rows) else 3
    return 0
