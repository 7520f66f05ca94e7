"""`sagestream retrain`: train on recent events and promote the result only if it holds up.

One run by default, for cron or a Kubernetes CronJob; ``--every 6h`` runs forever instead.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from kafka.errors import KafkaError

from encoders.exceptions import ModelRejected, RegistryError
from streams.cli.common import say, settings_of
from streams.cli.train import model_args, training_configs
from streams.settings import Settings
from streams.training.retrain import (
    DEFAULT_TOLERANCE,
    RetrainError,
    RetrainJob,
    parse_duration,
    retrain_once,
    run_every,
)

log = logging.getLogger(__name__)
EXIT_USAGE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "retrain",
        help="train on recent events, publish, promote only if it beats the baselines and holds "
        "up against serving",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        metavar="PATH",
        help="model registry root (default: setting models.registry)",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        metavar="PATH",
        help="read engagements from a JSONL file or a directory of *.jsonl files "
        "instead of replaying the engagements topic",
    )
    parser.add_argument(
        "--items",
        type=Path,
        metavar="PATH",
        help="catalog JSONL (default: the items topic; no catalog with --archive)",
    )
    parser.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="only events from this long ago on, e.g. 7d (Kafka: record time; archive: event "
        "time); default: all that is retained",
    )
    parser.add_argument(
        "--max-events", type=_count, metavar="N", help="at most the N newest events"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="promote when the candidate's full NDCG@10 >= serving's x (1 - TOLERANCE), both on "
        "the same fresh data; a negative value demands a gain (-0.05: 5%% better) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--no-baseline-gate",
        action="store_true",
        help="do not also require the candidate to beat the popularity and item co-occurrence "
        "baselines on the same data (they are still reported), e.g. to bootstrap a first model",
    )
    parser.add_argument(
        "--every",
        type=_duration,
        metavar="DURATION",
        help="run forever, one run every DURATION (90s, 30m, 6h); default: one run, then exit",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up reading Kafka after this long without progress (default: %(default)s)",
    )
    model_args(parser)
    parser.set_defaults(func=run)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    registry = args.registry or settings.models.registry
    if registry is None:
        log.error("no model registry: pass --registry or set SAGESTREAM_MODELS__REGISTRY")
        return EXIT_USAGE
    job = RetrainJob(
        registry=registry,
        recipe=partial(training_configs, args),
        tolerance=args.tolerance,
        baseline_gate=not args.no_baseline_gate,
        archive=args.archive,
        items=args.items,
        since_s=args.since,
        max_events=args.max_events,
        read_timeout_s=args.read_timeout,
    )
    if args.every is None:
        return _run_once(job, settings)
    run_every(args.every, partial(_report, job, settings))


def _report(job: RetrainJob, settings: Settings) -> None:
    say(retrain_once(job, settings).line())


def _run_once(job: RetrainJob, settings: Settings) -> int:
    """0 whether the candidate was promoted or not (the gate said why); 1 on errors."""
    try:
        _report(job, settings)
    except (RetrainError, ModelRejected, RegistryError, KafkaError, OSError, ValueError) as err:
        log.error("retrain failed: %s", err)
        return 1
    return 0
