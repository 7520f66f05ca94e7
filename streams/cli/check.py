"""`sagestream check`: one line per dependency a worker needs; exit 0 when all answer."""

from __future__ import annotations

import argparse

from streams.cli.common import say, settings_of
from streams.runtimes.preflight import clients_quiet, preflight


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help="ask Kafka, Redis, Qdrant and the model registry whether a worker could start",
        description="Exit 0 when every configured dependency answers and the promoted model "
        "loads, 1 otherwise; one line each (ok, FAIL, or -- for what is not configured).",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per dependency (5)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    with clients_quiet():
        verdicts = preflight(settings, args.timeout)
    for verdict in verdicts:
        say(verdict.line())
    return 1 if any(v.failed for v in verdicts) else 0
