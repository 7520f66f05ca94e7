"""`sagestream bench --stage ingest`: throughput beside its baselines, measured in one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deploy import stack
from streams.commands.common import say, settings_of


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bench", help="measure throughput against same-run baselines")
    parser.add_argument("--stage", choices=["ingest", "encoders"], default="ingest")
    parser.add_argument("--model", type=Path, help="model version directory (stage encoders)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--repeats", type=int, help="runs per path, medians quoted (ingest 3, encoders 20)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.stage == "encoders":
        return run_encoders(args)
    from streams.bench import run_ingest_bench

    settings = settings_of(args)
    stack.up(settings.stack)
    result = run_ingest_bench(settings, args.events, args.repeats or 3)
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
