"""`sagestream worker`: the ingest stream processor."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from streams.cli.common import settings_of
from streams.exceptions import ConfigError
from streams.health import Health
from streams.metrics import IngestMetrics
from streams.runtimes.limits import RunLimits
from streams.runtimes.loop import run_loop
from streams.runtimes.preflight import clients_quiet, preflight
from streams.runtimes.wiring import EXIT_FATAL
from streams.settings import Settings
from streams.wire.topics import ensure_topics

log = logging.getLogger(__name__)
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a dependency failed the start-up check
CHECK_TIMEOUT_S = 5.0
STARTUP_CHECKS = ("kafka", "redis", "qdrant", "registry")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("worker", help="consume engagements into the Redis state")
    parser.add_argument(
        "--runtime",
        choices=["batch", "faust"],
        default="batch",
        help="the aiokafka batch loop (default: 1.7x Faust's ingest rate here, see the README), "
        "or the Faust agent over the same core",
    )
    parser.add_argument("--max-events", type=int, help="stop after this many records")
    parser.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="stop when no engagement or catalog record arrived for this long (burst mode)",
    )
    parser.add_argument("--stats", type=Path, help="write run statistics (JSON) here on exit")
    parser.add_argument(
        "--skip-checks",
        action="store_true",
        help="start without first asking Kafka, Redis, Qdrant and the registry (as `sagestream "
        "check` does); a dependency that does not answer then shows as the worker connects",
    )
    parser.add_argument(
        "--check-timeout",
        type=float,
        default=CHECK_TIMEOUT_S,
        metavar="SECONDS",
        help=f"per dependency in the start-up check ({CHECK_TIMEOUT_S:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if not args.skip_checks and not dependencies_answer(settings, args.check_timeout):
        return EXIT_UNAVAILABLE
    ensure_topics(settings)
    limits = RunLimits(max_events=args.max_events, until_idle_s=args.until_idle)
    probe = settings.metrics
    metrics = IngestMetrics(health=Health(probe.stale_after_s, probe.startup_s))
    if args.runtime == "batch":
        from streams.runtimes.batch import BatchRuntime

        metrics.serve_from(settings.metrics)
        try:
            stats = run_loop(BatchRuntime(settings, metrics, limits, args.seams).run())
        except ConfigError:  # the operator's to fix, said in one line by the entry point
            raise
        except Exception:  # nothing was committed past the failed batch; say so and stop
            log.critical("batch failed; stopped without committing it", exc_info=True)
            return EXIT_FATAL
        events, seconds = stats.events, stats.seconds
        code = 0
    else:
        from streams.runtimes.faust import FaustRuntime

        runtime = FaustRuntime(settings, metrics, limits, args.seams)
        code = runtime.run()
        events, seconds = runtime.processed, runtime.busy_seconds
    if args.stats:
        args.stats.write_text(json.dumps({"events": events, "seconds": seconds}))
    return code


def dependencies_answer(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
    """Fail in seconds, naming the cause, rather than in a client's bootstrap retries (a wrong
    port or password costs kafka-python about 40 s and says only "unable to bootstrap"). The
    model is left to the updater, which refuses a broken one without stopping ingest."""
    with clients_quiet():
        failed = [v for v in preflight(settings, timeout_s, STARTUP_CHECKS) if v.failed]
    for verdict in failed:
        log.error("start-up check failed: %s", verdict.line())
    return not failed
