"""The stepped search of `sagestream bench --stage goals`: the highest offered rate the worker
sustains live.

Each step runs the worker (warm state: the drained run's consumer group, Redis prefix and vector
store) while a paced producer in another process offers one rate, each event stamped with its
send time. After a warm-up (from its first events on the topic) comes the steady window: only
the passes that end inside it give freshness samples, and once a second the backlog is sampled,
the topic's end offsets minus the group's committed offsets (consumer lag) plus the dirty marks
in Redis. The offered rate that counts is the one the topic saw in the window (end offsets), not
the producer's target. A step passes when both kinds keep freshness p99 <= 2 s and the backlog
does not grow (`verdicts.step_verdict`); the search stops at the first failure, after `bisect`
halvings.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from state import RedisState
from streams.devtools.bench.cpu import CpuMeter, budget
from streams.devtools.bench.e2e import (
    PassRecorder,
    group_joined,
    paced_producer,
    summarise,
    worker_meter,
)
from streams.devtools.bench.naive import spawn
from streams.devtools.bench.verdicts import (
    GOAL_AT_RATE_EPS,
    GOAL_AT_RATE_P99_S,
    GOAL_SUSTAINED_P99_S,
    StepSearch,
    backlog_growth,
    reencoder_load,
    step_verdict,
)
from streams.devtools.generate import GeneratorConfig
from streams.runtimes.batch import BatchRuntime
from streams.runtimes.limits import RunLimits
from streams.runtimes.loop import run_loop
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.vectors.rules import STAGES, PassStats

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 1.0
PRODUCER_START_S = 60.0
PRODUCER_SLACK_S = 5.0  # the producer is given more events than the step needs; it is stopped
RATES = (500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0)


@dataclass(frozen=True)
class LiveConfig:
    rates: Sequence[float] = RATES
    bisect: int = 1  # halvings between the highest pass and the first failure
    warmup_s: float = 15.0
    steady_s: float = 60.0
    users: int = 5000
    items: int = 10000
    seed: int = 7

    def stream(self, rate: float, step: int) -> GeneratorConfig:
        events = math.ceil(rate * (self.warmup_s + self.steady_s + PRODUCER_SLACK_S))
        return GeneratorConfig(
            users=self.users, items=self.items, events=events, seed=self.seed + 10 + step
        )


class StepRecorder(PassRecorder):
    """The worker's metrics, keeping apart the freshness, marks and time of passes that end
    in the window."""

    def __init__(self) -> None:
        super().__init__()
        self.steady: dict[str, list[float]] = {"users": [], "items": []}
        self.steady_from = math.inf
        self.steady_until = math.inf
        self.steady_passes = self.steady_marks = 0
        self.steady_pass_s = 0.0
        self.steady_stages_s: dict[str, float] = {}

    def observe_pass(self, stats: PassStats) -> None:
        super().observe_pass(stats)
        if stats.idle or not self.steady_from <= time.monotonic() <= self.steady_until:
            return
        for kind, samples in stats.freshness_s.items():
            self.steady[kind].extend(samples)
        self.steady_passes += 1
        self.steady_marks += stats.marks
        self.steady_pass_s += stats.pass_s
        for stage, seconds in stats.stages_s.items():
            self.steady_stages_s[stage] = self.steady_stages_s.get(stage, 0.0) + seconds

    def load(self) -> dict[str, Any]:
        """The steady window's passes against its length (`verdicts.reencoder_load`)."""
        window = self.steady_until - self.steady_from
        stages: dict[str, float] = {
            s: self.steady_stages_s[s] for s in STAGES if s in self.steady_stages_s
        }
        return reencoder_load(
            self.steady_passes, self.steady_marks, self.steady_pass_s, window, stages
        )


class BacklogProbe:
    """The topic's end offsets and the group's committed offsets (kafka-python, in a thread),
    and the dirty marks in Redis."""

    def __init__(self, settings: Settings) -> None:
        self.group = settings.kafka.group_id
        self.admin = KafkaAdminClient(**settings.kafka.client_kwargs())
        self.consumer = KafkaConsumer(**settings.kafka.client_kwargs(), enable_auto_commit=False)
        topic = settings.topics.engagements
        partitions = self.consumer.partitions_for_topic(topic) or set()
        self.partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.redis = redis_client(settings.redis)
        self.state = RedisState(self.redis, settings.state, settings.redis.key_prefix)

    def _offsets(self) -> tuple[int, int]:
        """(sum of end offsets, consumer lag)"""
        ends = self.consumer.end_offsets(self.partitions)
        committed = self.admin.list_group_offsets([self.group]).get(self.group, {})
        lag = 0
        for tp, end in ends.items():
            done = committed.get(tp)
            lag += max(0, end - (done.offset if done is not None and done.offset >= 0 else 0))
        return sum(ends.values()), lag

    async def sample(self) -> tuple[int, int, int]:
        """(end offsets, consumer lag, dirty marks)"""
        ends, lag = await asyncio.to_thread(self._offsets)
        marks = sum((await self.state.dirty_backlog()).values())
        return ends, lag, marks

    async def close(self) -> None:
        await asyncio.to_thread(self.consumer.close)
        await asyncio.to_thread(self.admin.close)
        await self.redis.aclose()


async def _steady_window(
    cfg: LiveConfig,
    probe: BacklogProbe,
    worker: asyncio.Task[Any],
    metrics: StepRecorder,
    cpu: CpuMeter,
) -> list[tuple[float, int, int, int]]:
    """Backlog samples (time, end offsets, lag, marks) once a second through the window, and
    every role's CPU time over it."""
    await asyncio.sleep(max(0.0, metrics.steady_from - time.monotonic()))
    cpu.start()
    end = metrics.steady_from + cfg.steady_s
    samples = []
    while (now := time.monotonic()) < end:
        if worker.done():
            await worker  # raises what stopped it
            raise RuntimeError("the worker stopped inside the steady window")
        samples.append((now, *await probe.sample()))
        await asyncio.sleep(min(SAMPLE_EVERY_S, max(0.0, end - time.monotonic())))
    cpu.settle()
    metrics.steady_until = time.monotonic()
    samples.append((metrics.steady_until, *await probe.sample()))
    return samples


async def _first_events(
    probe: BacklogProbe, ends: int, producer: multiprocessing.process.BaseProcess
) -> None:
    """Wait until the producer's events reach the topic (its interpreter takes seconds)."""
    deadline = time.monotonic() + PRODUCER_START_S
    while (await probe.sample())[0] <= ends:
        if not producer.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the paced producer sent nothing in {PRODUCER_START_S:.0f} s")
        await asyncio.sleep(0.1)


async def offer(settings: Settings, cfg: LiveConfig, rate: float, step: int) -> dict[str, Any]:
    """One step: the worker under `rate` events/s offered; its freshness and backlog."""
    metrics = StepRecorder()
    runtime = BatchRuntime(settings, metrics, RunLimits())
    worker = asyncio.create_task(runtime.run())
    await group_joined(settings, worker)
    log.info("step %d: %.0f events/s offered, %.0f s warm-up, %.0f s steady",
             step + 1, rate, cfg.warmup_s, cfg.steady_s)  # fmt: skip
    probe = await asyncio.to_thread(BacklogProbe, settings)
    ends, _, _ = await probe.sample()
    # the producer's report is not read: it is stopped when the window ends
    producer = spawn(paced_producer, settings.to_env(), cfg.stream(rate, step), rate, "/dev/null")
    try:
        await _first_events(probe, ends, producer)
        metrics.steady_from = time.monotonic() + cfg.warmup_s  # warm-up from the first events
        others = {"producer": producer.pid} if producer.pid is not None else {}
        cpu = await asyncio.to_thread(worker_meter, settings, **others)
        samples = await _steady_window(cfg, probe, worker, metrics, cpu)
    finally:
        producer.terminate()
        await asyncio.to_thread(producer.join)
        runtime.stop()
        await worker
        await probe.close()
    return judge_step(rate, samples, metrics, cpu.cores())


def judge_step(
    rate: float,
    samples: Sequence[tuple[float, int, int, int]],
    metrics: StepRecorder,
    cores: Mapping[str, float | None],
) -> dict[str, Any]:
    (t0, ends0, *_), (t1, ends1, *_) = samples[0], samples[-1]
    achieved = (ends1 - ends0) / (t1 - t0) if t1 > t0 else 0.0
    backlog = backlog_growth([(t, lag + marks) for t, _, lag, marks in samples], rate)
    kinds = {kind: summarise(found) for kind, found in metrics.steady.items()}
    p99 = {kind: figures.get("p99_s") for kind, figures in kinds.items()}
    reasons = step_verdict(rate, achieved, p99, backlog["growing"])
    log.info("step at %.0f events/s: %s", rate, "; ".join(reasons) or "sustained")
    return {
        "offered_eps": rate,
        "achieved_eps": round(achieved),
        "kinds": kinds,
        "backlog": backlog,
        "backlog_samples": [(round(t - t0, 2), lag, marks) for t, _, lag, marks in samples],
        "passed": not reasons,
        "reasons": reasons,
        "passes": metrics.pass_summary(),
        "load": metrics.load(),
        "cpu": budget(cores, achieved, os.cpu_count() or 1),
    }


def live_search(settings: Settings, cfg: LiveConfig) -> dict[str, Any]:
    """Steps of increasing offered rate until the first that is not sustained (and bisection)."""
    search = StepSearch(cfg.rates, cfg.bisect)
    steps: list[dict[str, Any]] = []
    while (rate := search.next_rate()) is not None:
        step = run_loop(offer(settings, cfg, rate, len(steps)))
        search.record(rate, step["passed"])
        steps.append(step)
    return {
        "method": "per step: warm-up, then a steady window; freshness of the passes ending in "
        "it; backlog = consumer lag (end - committed offsets) + dirty marks, sampled each second",
        "warmup_s": cfg.warmup_s,
        "steady_s": cfg.steady_s,
        "rates": list(cfg.rates),
        "bisect": cfg.bisect,
        "steps": steps,
        "sustained_eps": search.best,
        "at_goal_rate": at_rate(steps, GOAL_AT_RATE_EPS),
    }


def at_rate(steps: Sequence[Mapping[str, Any]], rate: float) -> dict[str, Any]:
    """The worse kind's steady p99 at one offered rate; None when that step never ran."""
    found = next((step for step in steps if step["offered_eps"] == rate), None)
    p99s = [f.get("p99_s") for f in found["kinds"].values()] if found else []
    worst = None if not p99s or None in p99s else max(p99s)
    return {"offered_eps": rate, "p99_s": worst}


def save_freshness_png(live: Mapping[str, Any], path: Path) -> None:
    """Freshness p50 and p99 per kind against the offered rate, with the goals."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    steps = sorted(live["steps"], key=lambda step: step["offered_eps"])
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot(1, 1, 1)
    rates = [step["offered_eps"] for step in steps]
    for kind, colour in (("users", "tab:blue"), ("items", "tab:green")):
        for q, style in (("p50_s", ":"), ("p99_s", "-")):
            values = [step["kinds"][kind].get(q, math.nan) for step in steps]
            ax.plot(rates, values, style, color=colour, marker="o", label=f"{kind} {q[:3]}")
    failed = [step["offered_eps"] for step in steps if not step["passed"]]
    for rate in failed:
        ax.axvline(rate, color="grey", alpha=0.3, linewidth=8)
    ax.axhline(GOAL_SUSTAINED_P99_S, color="tab:red", linestyle="--",
               label=f"goal p99 <= {GOAL_SUSTAINED_P99_S:g} s")  # fmt: skip
    ax.plot([GOAL_AT_RATE_EPS], [GOAL_AT_RATE_P99_S], "r*", markersize=12,
            label=f"goal p99 <= {GOAL_AT_RATE_P99_S:g} s at {GOAL_AT_RATE_EPS:,.0f}/s")  # fmt: skip
    ax.set_yscale("log")
    seconds = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(seconds)
    ax.yaxis.set_minor_formatter(seconds)
    ax.set_xlabel("offered events/s (grey: not sustained)")
    ax.set_ylabel("freshness in the steady window (s)")
    best = live["sustained_eps"]
    ax.set_title(
        f"freshness by offered load; sustained {best or 0:,.0f} events/s "
        f"(steady {live['steady_s']:g} s after {live['warmup_s']:g} s warm-up)"
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
