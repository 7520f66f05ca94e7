"""`sagestream bench --stage ingest|encoders|e2e|train|qdrant|goals`: figures beside their
baselines, in one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deploy import stack
from streams.cli.common import add_topology, bench_settings_up, on_server, say, settings_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bench", help="measure throughput against same-run baselines")
    parser.add_argument(
        "--stage",
        choices=["ingest", "encoders", "e2e", "train", "qdrant", "goals"],
        default="ingest",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="model version directory (encoders, e2e) or registry root (e2e; default: train one)",
    )
    parser.add_argument(
        "--events", type=int, help="ingest 200,000, e2e and goals 20,000, train 300,000"
    )
    parser.add_argument("--threads", type=int, default=2, help="train: torch threads")
    parser.add_argument(
        "--repeats",
        type=int,
        help="runs per path, medians quoted (ingest 3, goals 3, encoders 20, train 2 epochs)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--load-seconds", type=float, default=25.0, help="e2e: freshness load duration"
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        help="e2e, goals: events the naive path handles (min(N, 2000))",
    )
    parser.add_argument(
        "--png",
        type=Path,
        help="e2e: freshness histogram; goals: freshness by offered load, and beside it the "
        "RSS curve as NAME-rss.png and the cores by role as NAME-cpu.png (default: beside --json)",
    )
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.5,
        help="e2e: freshness load as a share of sagestream's measured max (default 0.5)",
    )
    parser.add_argument(
        "--load-rate",
        type=float,
        help="e2e: freshness load in events/s (overrides --load-fraction)",
    )
    parser.add_argument(
        "--qdrant",
        choices=["memory", "disk", "server"],
        help="e2e: embedded Qdrant in memory (the default) or on disk (one SQLite commit per "
        "point), or the Qdrant server (qdrant.url, else the stack's; the default of goals), "
        "a collection prefix per path",
    )
    add_goals_arguments(parser)
    add_topology(parser)
    parser.set_defaults(func=run)


def add_goals_arguments(parser: argparse.ArgumentParser) -> None:
    from streams.devtools.bench.live import RATES

    parser.add_argument(
        "--rates",
        type=lambda text: tuple(float(rate) for rate in text.split(",")),
        default=RATES,
        help="goals: offered rates to step through, increasing (default "
        + ",".join(f"{rate:g}" for rate in RATES)
        + ")",
    )
    parser.add_argument(
        "--bisect", type=int, default=1, help="goals: halvings after the first failed step (1)"
    )
    parser.add_argument(
        "--warmup-s", type=float, default=15.0, help="goals: warm-up of each step (15 s)"
    )
    parser.add_argument(
        "--steady-s", type=float, default=60.0, help="goals: steady window of each step (60 s)"
    )
    parser.add_argument(
        "--memory-events",
        type=int,
        default=1_000_000,
        help="goals: events of the worker RSS run (1,000,000, the goal's; fewer for a quick run)",
    )
    parser.add_argument(
        "--rss-every", type=int, help="goals: RSS sampled every this many events (N/100)"
    )


def run(args: argparse.Namespace) -> int:
    if args.stage == "goals":
        from streams.cli.bench_goals import run_goals

        return run_goals(args)
    if args.stage == "encoders":
        return run_encoders(args)
    if args.stage == "e2e":
        return run_e2e(args)
    if args.stage == "train":
        return run_train_stage(args)
    if args.stage == "qdrant":
        return run_qdrant_stage(args)
    from streams.devtools.bench.ingest import run_ingest_bench

    settings = settings_of(args)
    stack.up(settings.stack)
    result = run_ingest_bench(settings, args.events or 200_000, args.repeats or 3)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_encoders(args: argparse.Namespace) -> int:
    """onnxruntime against torch eager at batch 1, 64 and 512 (needs the trainer extra)."""
    from encoders.bench import format_table, run_encoder_bench

    if args.model is None:
        raise SystemExit("--stage encoders needs --model VERSION_DIR")
    result = run_encoder_bench(args.model, repeats=args.repeats or 20)
    sys.stdout.write(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_qdrant_stage(args: argparse.Namespace) -> int:
    """Indexed against exact search on a Qdrant server, per collection setting."""
    from streams.devtools.bench.qdrant import QdrantBenchConfig, run_qdrant_bench

    settings = settings_of(args)
    stack.up(settings.stack)
    server = on_server(settings)
    if server is None or server.qdrant.url is None:
        raise SystemExit(f"--stage qdrant needs a server: {stack.NO_QDRANT}")
    key = server.qdrant.api_key
    cfg = QdrantBenchConfig(
        url=server.qdrant.url,
        api_key=key.get_secret_value() if key else None,
        items=args.events or 100_000,
        grpc_port=server.qdrant.grpc_port,
    )
    result = run_qdrant_bench(cfg)
    say(
        f"qdrant benchmark: {cfg.items:,} {cfg.vectors} vectors (dim {cfg.dim}), {cfg.queries} "
        f"queries, recall@{cfg.k} of the HNSW search against exact search on the same server"
    )
    for row in result["rows"]:
        say(
            f"  {row['variant']:<50} upsert {row['upsert_points_per_s']:>7,}/s "
            f"({row['upsert_vs_default']:.2f}x), guarded updates "
            f"{row['guarded_update_points_per_s']:>7,}/s  index {row['index_build_s']:>5.1f} s "
            f"({row['indexed_share']:.0%} in HNSW)  "
            f"recall@10 {row['recall@10']:.4f}  search p50/p99 {row['hnsw']['p50_ms']}/"
            f"{row['hnsw']['p99_ms']} ms  exact {row['exact']['p50_ms']}/"
            f"{row['exact']['p99_ms']} ms"
        )
        for ef in row["by_ef"][1:]:
            say(
                f"  {'':<50} hnsw_ef {ef['hnsw_ef']:>4}: recall@10 {ef['recall@10']:.4f}  "
                f"search p50/p99 {ef['p50_ms']}/{ef['p99_ms']} ms"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_train_stage(args: argparse.Namespace) -> int:
    """Epoch time on a generated 20k-item stream and on its 2k-item twin (same events)."""
    from streams.devtools.bench.train import TrainBenchConfig, run_train_bench

    cfg = TrainBenchConfig(
        events=args.events or 300_000, repeats=args.repeats or 2, threads=args.threads
    )
    result = run_train_bench(cfg)
    say(
        f"training benchmark: {cfg.events:,} events, {cfg.users:,} users, "
        f"{result['threads']} threads on {result['cpus']} CPUs, median of {cfg.repeats} epochs"
    )
    for size in result["sizes"]:
        mode = "exact softmax" if size["exact_softmax"] else "sampled softmax"
        say(
            f"  {size['items']:>7,} items: epoch {size['epoch_s']:>6.1f} s "
            f"({size['steps']} steps {size['steps_s']} s + validation {size['validation_s']} s, "
            f"{mode}; data built in {size['build_s']} s; val NDCG@10 {size['val_ndcg@10']})"
        )
    goals = result["goals"]
    say(
        f"  epoch at {result['sizes'][0]['items']:,} items   goal <= "
        f"{goals['epoch_s']['goal_max']:g} s: {_met(goals['epoch_s']['met'])}"
    )
    say(
        f"  growth for 10x the catalogue {result['growth']:>5}x   goal <= "
        f"{goals['growth']['goal_max']:g}x: {_met(goals['growth']['met'])}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_e2e(args: argparse.Namespace) -> int:
    """Ceiling, naive and sagestream events/s, then freshness at half sagestream's rate."""
    from streams.devtools.bench.e2e import E2EConfig, run_e2e_bench

    if args.model is not None and not args.model.is_dir():
        raise SystemExit(f"--model {args.model}: not a directory")
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    cfg = E2EConfig(
        events=args.events or 20_000,
        load_seconds=args.load_seconds,
        naive_events=args.naive_events,
        model=args.model,
        png=png,
        qdrant=args.qdrant or "memory",
        load_fraction=args.load_fraction,
        load_rate=args.load_rate,
    )
    settings = bench_settings_up(args, cfg.qdrant)
    result = run_e2e_bench(settings, cfg)
    report_e2e(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def report_e2e(result: dict[str, Any]) -> None:
    from streams.devtools.bench.cpu import describe as describe_cpu

    eps, goals = result["eps"], result["goals"]
    say(
        f"end-to-end benchmark: {result['events']:,} events, {result['partitions']} partitions, "
        f"model {result['model']['version']} ({result['model']['source']}), "
        f"Qdrant {result['qdrant']}, {result['cpus']} CPUs"
    )
    labels = {
        "ceiling": "raw consume ceiling (aiokafka getmany + decode)",
        "naive": f"naive: Faust agent, per event (first {result['naive_events']:,} events)",
        "sagestream": "sagestream: batch runtime + updater, drained",
    }
    for name, label in labels.items():
        say(f"  {label:<62} {eps[name]:>9,} events/s")
    vectors, distinct = result["vectors"], result["distinct"]
    if vectors["sagestream"]:  # counted only when the stores were on disk
        say(
            f"  vectors: sagestream {vectors['sagestream']['users']:,} users, "
            f"{vectors['sagestream']['items']:,} items (engaged: {distinct['users']:,}, "
            f"{distinct['items']:,}); naive {vectors['naive']['users']:,} users, "
            f"{vectors['naive']['items']:,} items"
        )
    say(f"  dirty marks left after sagestream's run: {result['marks_left']}")
    say(f"  sagestream's run, {describe_cpu(result['sagestream_cpu'])}")
    for name, value in result["ratios"].items():
        goal = ""
        if name in goals:
            goal = f"   goal >= {goals[name]['goal_min']:g}: {_met(goals[name]['met'])}"
        say(f"  ratio {name:<56} {value:>9}{goal}")
    _report_freshness(result)


def _report_freshness(result: dict[str, Any]) -> None:
    fresh, p99 = result["freshness"], result["goals"]["freshness_p99_s"]
    say(
        f"freshness at {fresh['offered_eps']:,} events/s offered"
        + (f" ({fresh['load_fraction']:g} of sagestream's max)" if fresh["load_fraction"] else "")
        + f", {fresh['achieved_eps']:,} achieved, for {fresh['load_seconds']:g} s, "
        f"window {fresh['window_s']} s ({fresh['method']}):"
    )
    for kind, figures in fresh["kinds"].items():
        if not figures["samples"]:
            say(f"  {kind:<6} no samples")
            continue
        say(
            f"  {kind:<6} p50 {figures['p50_s']:.3f} s   p90 {figures['p90_s']:.3f} s   "
            f"p99 {figures['p99_s']:.3f} s   max {figures['max_s']:.3f} s   "
            f"({figures['samples']:,} samples)   goal p99 <= {p99['goal_max']:g} s: "
            f"{_met(figures['p99_s'] <= p99['goal_max'])}"
        )
    passes = {"sagestream run": result["sagestream_passes"], "under load": fresh["passes"]}
    say(
        "  re-encode passes that found marks: "
        + "; ".join(
            f"{name} {p['count']} (onnxruntime {p['encode_s']:.2f} s, upsert {p['upsert_s']:.2f} s)"
            for name, p in passes.items()
        )
    )
    if fresh["png"]:
        say(f"  histogram: {fresh['png']}")


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


def report(result: dict[str, Any]) -> None:
    say(
        f"ingest benchmark: {result['events']} events, {result['partitions']} partitions, "
        f"median of {result['repeats']} runs"
    )
    labels = {
        "ceiling": "raw consume ceiling (aiokafka getmany + decode)",
        "batch": "sagestream ingest, batch runtime",
        "faust": "sagestream ingest, Faust runtime",
    }
    for name, label in labels.items():
        runs = ", ".join(f"{r:,}" for r in result["runs"][name])
        say(f"  {label:<50} {result['eps'][name]:>10,} events/s   [{runs}]")
    for name, value in result["ratios"].items():
        say(f"  ratio {name:<44} {value:>10}")
