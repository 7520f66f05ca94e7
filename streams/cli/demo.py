"""`sagestream demo`: the whole loop on the real local stack, end to end, in a few minutes.

1. stack up (Kafka KRaft + Redis with AOF, on loopback);
2. a generated catalog and a first part of a generated stream into Kafka;
3. a first model: `sagestream retrain` replays that log, trains, publishes and promotes;
4. the worker with the updater, while the rest of the stream arrives live at `--rate`;
5. freshness of the live part (upsert time minus event time), from the worker's /metrics;
6. recommendations read back from Qdrant the way a downstream recommender reads them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from deploy import stack
from streams.cli.common import CommandSettings, add_topology, on_server, say, settings_of
from streams.cli.vectors import recommend, show
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.produce import produce_catalog, produce_engagements
from streams.metrics import quantile_from_buckets
from streams.settings import Settings
from streams.vectors.store import vector_store
from streams.wire.events import Engagement
from streams.wire.topics import ensure_topics

PROM = "sagestream_"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="stack, stream, first model, worker, fresh vectors")
    parser.add_argument("--events", type=int, default=16_000)
    parser.add_argument("--history", type=float, default=0.6, help="share produced before training")
    parser.add_argument("--rate", type=float, default=250.0, help="live events per second")
    parser.add_argument("--runtime", choices=["batch", "faust"], default="batch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the first model")
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    parser.add_argument("--seed", type=int, default=7)
    add_topology(parser)
    parser.set_defaults(func=run)


def demo_settings(base: CommandSettings, workdir: Path) -> CommandSettings:
    """The user's settings, with the demo's own registry under `workdir` and its vectors on the
    stack's Qdrant server (its own collection prefix), else in embedded Qdrant under `workdir`.

    Fresh names each run (topics, group, key and collection prefix), so a second demo starts
    clean."""
    tag = time.strftime("%Y%m%d%H%M%S")
    server = on_server(base)
    if server is None:
        qdrant = base.qdrant.model_copy(update={"path": workdir / tag / "qdrant"})
    else:
        qdrant = server.qdrant.model_copy(update={"collection_prefix": f"demo{tag}_"})
    return base.model_copy(
        update={
            "topics": base.topics.model_copy(
                update={"engagements": f"demo-{tag}", "items": f"demo-items-{tag}"}
            ),
            "kafka": base.kafka.model_copy(update={"group_id": f"demo-{tag}"}),
            "redis": base.redis.model_copy(update={"key_prefix": f"demo{tag}"}),
            "models": base.models.model_copy(update={"registry": workdir / tag / "models"}),
            "qdrant": qdrant,
        }
    )


def run(args: argparse.Namespace) -> int:
    settings = demo_settings(settings_of(args), args.workdir)
    env = dict(os.environ, **settings.to_env())
    say("1/6 starting the local stack (the first run downloads Kafka with Maven)")
    for row in stack.up(settings.stack):
        say("    " + row.line())
    if settings.qdrant.url is None:
        say(f"    {stack.NO_QDRANT}; the demo uses embedded Qdrant at {settings.qdrant.path}")
    ensure_topics(settings)
    cfg = GeneratorConfig(events=args.events, seed=args.seed)
    events = list(generate_events(cfg))
    cut = int(len(events) * args.history)
    say(f"2/6 {len(generate_catalog(cfg))} catalog items and {cut} past events into Kafka")
    produce_catalog(settings, generate_catalog(cfg))
    produce_engagements(settings, events[:cut])
    say(f"3/6 training a first model on the retained log ({args.epochs} epochs)")
    retrain = [sys.executable, "-m", "streams.cli", "retrain", "--epochs", str(args.epochs)]
    # A first model of a few epochs, there to show freshness: it is served whatever it scores
    # against the baselines (the line retrain prints still says how it compares).
    retrain += ["--dim", "32", "--no-baseline-gate"]
    if subprocess.run(retrain, env=env, check=False).returncode != 0:
        say("    training failed; see the log above")
        return 1
    say(
        f"4/6 the worker ({args.runtime} runtime) catches up, then {len(events) - cut} live events "
        f"at {args.rate:.0f}/s; metrics on "
        f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    )
    live = _run_worker(settings, env, args.runtime, events[cut:], args.rate, cut)
    say("5/6 freshness of the live events (vector upsert time minus event time)")
    for kind in ("users", "items"):
        say(f"    {kind:<5} {live.line(kind)}")
    say("6/6 what a downstream recommender reads from Qdrant now")
    with vector_store(settings) as store:
        last = events[-1]
        show(recommend(store, last.user_id, None, 5))
        show(recommend(store, None, last.item_id, 5))
    if settings.qdrant.url is None:
        where = f"SAGESTREAM_QDRANT__PATH={settings.qdrant.path}"
    else:
        where = (
            f"SAGESTREAM_QDRANT__URL={settings.qdrant.url} "
            f"SAGESTREAM_QDRANT__COLLECTION_PREFIX={settings.qdrant.collection_prefix}"
        )
    say(f"    try: {where} sagestream query --user ID")
    return 0


@dataclass
class Freshness:
    """Freshness histogram deltas of the live phase, per kind: bucket bound -> count."""

    before: dict[str, dict[float, float]]
    after: dict[str, dict[float, float]]

    def line(self, kind: str) -> str:
        delta = {
            le: n - self.before.get(kind, {}).get(le, 0.0)
            for le, n in self.after.get(kind, {}).items()
        }
        total = delta.get(float("inf"), 0.0)
        if total <= 0:
            return "no samples"
        p50, p99 = (quantile_from_buckets(delta, q) for q in (0.5, 0.99))
        return f"{total:>7,.0f} vectors   p50 {p50:.2f}s   p99 {p99:.2f}s"


def _run_worker(
    settings: Settings,
    env: dict[str, str],
    runtime: str,
    live: list[Engagement],
    rate: float,
    history: int,
) -> Freshness:
    """Run the worker; once it has caught up (history applied, no marks left in a backlog
    reading, refreshed every 5 s), produce the live part; stop it when that is done too."""
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--runtime", runtime]
    worker = subprocess.Popen(cmd, env=env)
    before: dict[str, dict[float, float]] = {}
    after: dict[str, dict[float, float]] = {}
    producer: threading.Thread | None = None
    caught_up_at: float | None = None
    total = history + len(live)
    try:
        while worker.poll() is None:
            time.sleep(1.0)
            text = _scrape(settings)
            if text is None:
                continue
            samples = _samples(text)
            applied = _total(samples, "events_applied_total")
            backlog = _total(samples, "dirty_backlog")
            say(f"    applied {applied:>8,.0f} events   waiting for re-encoding: {backlog:>6,.0f}")
            if caught_up_at is None and applied >= history:
                caught_up_at = time.monotonic()
            settled = caught_up_at is not None and time.monotonic() - caught_up_at > 6.0
            if producer is None and settled and backlog == 0:
                before = _freshness_buckets(samples)
                producer = threading.Thread(
                    target=produce_engagements,
                    args=(settings, live),
                    kwargs={"rate": rate, "stamp_now": True},
                    daemon=True,
                )
                producer.start()
            if producer is not None:
                after = _freshness_buckets(samples)
                if applied >= total and backlog == 0 and not producer.is_alive():
                    break
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        worker.wait()
    return Freshness(before, after)


def _scrape(settings: Settings) -> str | None:
    url = f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _total(samples: list[Sample], name: str) -> float:
    """The sum of a metric's samples over its labels (a counter, or the backlog of all kinds)."""
    return sum(s.value for s in samples if s.name == PROM + name)


def _freshness_buckets(samples: list[Sample]) -> dict[str, dict[float, float]]:
    """freshness_seconds_bucket counts per kind: upper bound -> cumulative count."""
    out: dict[str, dict[float, float]] = {}
    for s in samples:
        if s.name == PROM + "freshness_seconds_bucket":
            out.setdefault(s.labels["kind"], {})[float(s.labels["le"])] = s.value
    return out
