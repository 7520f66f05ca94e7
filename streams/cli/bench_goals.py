"""`sagestream bench --stage goals`: issue 11's figures, each with its goal, `met` or `not met`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from streams.cli.common import bench_settings_up, say


def run_goals(args: argparse.Namespace) -> int:
    from streams.devtools.bench.goals import GoalsConfig, run_goals_bench
    from streams.devtools.bench.live import LiveConfig

    if args.model is not None and not args.model.is_dir():
        raise SystemExit(f"--model {args.model}: not a directory")
    cfg = GoalsConfig(
        events=args.events or 20_000,
        memory_events=args.memory_events,
        rss_every=args.rss_every,
        repeats=args.repeats or 3,
        live=LiveConfig(
            rates=args.rates, bisect=args.bisect, warmup_s=args.warmup_s, steady_s=args.steady_s
        ),
        naive_events=args.naive_events,
        model=args.model,
        qdrant=args.qdrant or "server",
        png=args.png or (args.json.with_suffix(".png") if args.json else None),
    )
    settings = bench_settings_up(args, cfg.qdrant)
    result = run_goals_bench(settings, cfg)
    report_goals(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def report_goals(result: dict[str, Any]) -> None:
    from streams.devtools.bench.cpu import describe as describe_cpu
    from streams.devtools.bench.verdicts import Goal, format_goals

    say(
        f"goals benchmark: {result['events']:,} events drained, {result['partitions']} "
        f"partitions, model {result['model']['version']} ({result['model']['source']}), "
        f"Qdrant {result['qdrant']}, {result['cpus']} CPUs"
    )
    say(f"drained run {describe_cpu(result['throughput']['sagestream_cpu'])}")
    say(f"ingest runs {describe_cpu(result['ingest']['cpu'])}")
    _report_steps(result["live"])
    memory = result["memory"]
    rss, redis = memory["rss"], memory["redis"]
    if rss["samples"]:
        slope = rss["second_half_slope_bytes_per_100k_events"]
        say(
            f"worker RSS over {memory['events']:,} events ({memory['seconds']:g} s, "
            f"{rss['samples']} samples): first {rss['first_bytes'] / 2**20:.0f} MiB, last "
            f"{rss['last_bytes'] / 2**20:.0f}, max {rss['max_bytes'] / 2**20:.0f}; second half "
            + ("slope not judged" if slope is None else f"{slope / 2**10:+,.0f} KiB/100k events")
        )
    say(
        f"Redis ({redis['method']}): {redis['users']:,} users, {redis['items']:,} items; "
        f"{redis['bytes']['shared']:,} bytes shared (contexts, marks, watermarks)"
    )
    for line in format_goals(Goal(**goal) for goal in result["goals"]):
        say(line)
    if result["png"]:
        say(f"  freshness by offered load: {result['png']['freshness']}")
        say(f"  worker RSS: {result['png']['rss']}")
        say(f"  cores by role: {result['png']['cpu']}")


def _report_steps(live: dict[str, Any]) -> None:
    from streams.devtools.bench.cpu import describe as describe_cpu

    say(
        f"live steps ({live['warmup_s']:g} s warm-up, {live['steady_s']:g} s steady; "
        f"{live['method']}):"
    )
    for step in live["steps"]:
        kinds = "  ".join(
            f"{kind} p50/p99 {f['p50_s']:.2f}/{f['p99_s']:.2f} s" if f["samples"] else f"{kind} -"
            for kind, f in step["kinds"].items()
        )
        slope = step["backlog"]["slope_per_s"]
        say(
            f"  {step['offered_eps']:>7,.0f} offered ({step['achieved_eps']:>6,} in the window)  "
            f"{kinds}  backlog slope "
            + ("-" if slope is None else f"{slope:+,.0f}/s")
            + f"  {'sustained' if step['passed'] else 'NOT: ' + '; '.join(step['reasons'])}"
        )
        say(f"           {describe_cpu(step['cpu'])}; {lists_kept(step['passes'])}")
        say(f"           {reencoder_busy(step['load'])}")
        if split := stage_split(step["load"]):
            say(f"           {split}")


def lists_kept(passes: dict[str, Any]) -> str:
    """The share of neighbour lists the step's passes did not have to read again."""
    kept, sent = passes.get("lists_kept", 0), passes.get("lists_sent", 0)
    if not kept + sent:
        return "no neighbour lists read"
    return f"neighbour lists kept {kept / (kept + sent):.0%} of {kept + sent:,}"


def stage_split(load: dict[str, Any]) -> str:
    """A mark's cost by step of a pass, in the order a pass runs them ('' when none ran)."""
    by_stage = load.get("ms_per_mark_by_stage") or {}
    if not by_stage:
        return ""
    return "a mark by step (ms): " + ", ".join(f"{s} {ms:.3f}" for s, ms in by_stage.items())


def reencoder_busy(load: dict[str, Any]) -> str:
    """How much of the steady window the passes took, and what a mark cost them."""
    if not load["passes"]:
        return "re-encoder: no pass ended in the window"
    return (
        f"re-encoder busy {load['busy']:.0%} of the window: {load['passes']:,} passes, "
        f"{load['marks_per_s']:,.0f} marks/s at {load['ms_per_mark']:.2f} ms a mark"
    )
