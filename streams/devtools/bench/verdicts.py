"""The judgements of `sagestream bench --stage goals`, pure so they are tested without services.

- `StepSearch`: which offered rate to try next, and the highest that passed;
- `backlog_growth`: whether what waits (consumer lag plus dirty marks) grew over a steady window;
- `step_verdict`: whether one offered rate was sustained;
- `reencoder_load`: how busy the re-encoder's passes kept it over a window, and their cost a mark;
- `rss_flatness`: whether the worker's memory stayed flat over a long run;
- `ceiling_of`: the raw consume ceiling from its samples;
- `assess` and `format_goals`: each of issue 11's figures beside its goal, `met` or `not met`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

GOAL_SUSTAINED_EPS = 5000.0  # the highest sustained offered rate, events/s
GOAL_SUSTAINED_P99_S = 2.0  # freshness p99 per kind that a sustained step keeps
GOAL_AT_RATE_EPS = 1000.0  # ... and at this rate
GOAL_AT_RATE_P99_S = 1.0  # ... this p99
GOAL_INGEST_SHARE = 0.15  # ingest / raw consume ceiling
AIM_INGEST_SHARE = 0.25  # the longer aim
GOAL_SPEEDUP = 50.0  # drained sagestream / naive per-event agent
GOAL_E2E_SHARE = 0.10  # drained sagestream / raw consume ceiling
GOAL_MEMORY_EVENTS = 1_000_000  # the RSS goal is judged after this many events
RSS_TOLERANCE = 0.05  # flat: the last quarter's RSS within 5% above the second quarter's
BACKLOG_GROWTH_SHARE = 0.02  # growing: gaining more than 2% of the offered rate
ACHIEVED_SHARE = 0.95  # a step whose producer offered less than this share is not a pass
MIN_BACKLOG_SAMPLES = 3
BISECT_GRAIN_EPS = 50.0
MIN_CEILING_SAMPLES = 3  # the ceiling is read at least this often, whatever `repeats` says

Status = Literal["met", "not met", "not measured", "reported"]  # reported: a figure, no threshold


# -- the stepped search ------------------------------------------------------------------------


@dataclass
class StepSearch:
    """Offered rates in increasing order until the first failure, then `bisect` halvings of the
    gap between the highest pass (0 when none) and the lowest failure, on a 50 events/s grain."""

    rates: Sequence[float]
    bisect: int = 1
    outcomes: dict[float, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rates or list(self.rates) != sorted(set(self.rates)) or self.rates[0] <= 0:
            raise ValueError(f"rates must be positive and increasing: {list(self.rates)}")

    def record(self, rate: float, passed: bool) -> None:
        self.outcomes[rate] = passed

    @property
    def best(self) -> float | None:
        """The highest offered rate that passed, None when none did."""
        passed = [rate for rate, ok in self.outcomes.items() if ok]
        return max(passed) if passed else None

    def next_rate(self) -> float | None:
        """The next rate to offer, or None when the search is over."""
        failed = [rate for rate, ok in self.outcomes.items() if not ok]
        if not failed:
            untried = [rate for rate in self.rates if rate not in self.outcomes]
            return untried[0] if untried else None
        bisected = sum(rate not in self.rates for rate in self.outcomes)
        if bisected >= self.bisect:
            return None
        low, high = self.best or 0.0, min(failed)
        middle = round((low + high) / 2 / BISECT_GRAIN_EPS) * BISECT_GRAIN_EPS
        return middle if low < middle < high else None


# -- the ceiling -------------------------------------------------------------------------------


def ceiling_of(samples: Sequence[float]) -> float:
    """The fastest sample. Nothing makes a consumer read faster than it can, but a stall of this
    shared machine makes one read slower: 20,000 events take about 0.1 s at the ceiling, so one
    quarter-second pause read 54k events/s among 190k ones, and its median of one judged the
    ingest share 0.175 `met`. A low ceiling flatters every ratio read against it; the best of
    several cannot."""
    if not samples:
        raise ValueError("no ceiling samples")
    return max(samples)


# -- one step ----------------------------------------------------------------------------------


def theil_sen_slope(samples: Sequence[tuple[float, float]]) -> float:
    """The median of the slopes between every two samples: one slow pass's spike in the middle
    of a window moves it little, where it tilts a least-squares line."""
    times = np.asarray([t for t, _ in samples], dtype=np.float64)
    values = np.asarray([v for _, v in samples], dtype=np.float64)
    first, second = np.triu_indices(len(samples), k=1)
    apart = times[second] - times[first]
    keep = apart > 0
    if not keep.any():
        return 0.0
    return float(np.median((values[second] - values[first])[keep] / apart[keep]))


def backlog_growth(samples: Sequence[tuple[float, float]], rate: float) -> dict[str, Any]:
    """The backlog's (lag + dirty marks) trend over time, per second (`theil_sen_slope`),
    against the offered rate: `growing` when it gains more than BACKLOG_GROWTH_SHARE of that
    rate (the worker absorbs less than 98% of the load); None with too few samples to judge."""
    if len(samples) < MIN_BACKLOG_SAMPLES:
        return {"samples": len(samples), "slope_per_s": None, "growing": None}
    values = [v for _, v in samples]
    slope = theil_sen_slope(samples)
    return {
        "samples": len(samples),
        "first": round(values[0]),
        "last": round(values[-1]),
        "max": round(max(values)),
        "slope_per_s": round(slope, 1),
        "limit_per_s": round(BACKLOG_GROWTH_SHARE * rate, 1),
        "growing": slope > BACKLOG_GROWTH_SHARE * rate,
    }


def step_verdict(
    rate: float,
    achieved_eps: float,
    p99_s: Mapping[str, float | None],
    growing: bool | None,
) -> list[str]:
    """Why an offered rate was not sustained; an empty list is a pass."""
    reasons = []
    if achieved_eps < ACHIEVED_SHARE * rate:
        reasons.append(f"the producer offered only {achieved_eps:,.0f} events/s")
    for kind, p99 in p99_s.items():
        if p99 is None:
            reasons.append(f"no {kind} freshness samples in the steady window")
        elif p99 > GOAL_SUSTAINED_P99_S:
            reasons.append(f"{kind} p99 {p99:.2f} s > {GOAL_SUSTAINED_P99_S:g} s")
    if growing is None:
        reasons.append("too few backlog samples to judge its growth")
    elif growing:
        reasons.append("the backlog grew")
    return reasons


def reencoder_load(
    passes: int,
    marks: int,
    pass_s: float,
    window_s: float,
    stages_s: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What a step's passes (those ending in its window) cost: the share of the window they
    took, the marks they read a second and their seconds a mark, in all and in each step of a
    pass (`stages_s`: the passes' seconds per step). A pass costs about the same per mark
    whatever its size, so a share near 1 is the step's edge, a steadier sign of it than the
    freshness p99, which a few slow passes move a lot; the split says where to cut."""
    return {
        "passes": passes,
        "marks": marks,
        "pass_s": round(pass_s, 3),
        "window_s": round(window_s, 3),
        "busy": round(pass_s / window_s, 3) if window_s > 0 else None,
        "marks_per_s": round(marks / window_s, 1) if window_s > 0 else None,
        "ms_per_mark": round(1000 * pass_s / marks, 3) if marks else None,
        "ms_per_mark_by_stage": {
            stage: round(1000 * seconds / marks, 3) for stage, seconds in (stages_s or {}).items()
        }
        if marks
        else {},
    }


# -- memory ------------------------------------------------------------------------------------


def rss_flatness(samples: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """RSS samples (events applied, bytes): first, last, max, the slope over the second half
    (bytes per 100,000 events) and `flat`: the mean of the last quarter (by events) within
    RSS_TOLERANCE above the second quarter's; None when a quarter has no sample."""
    if not samples:
        return {"samples": 0, "flat": None}
    events = np.asarray([e for e, _ in samples], dtype=np.float64)
    rss = np.asarray([r for _, r in samples], dtype=np.float64)
    total = float(events.max())
    second = rss[(events >= 0.25 * total) & (events < 0.5 * total)]
    last = rss[events >= 0.75 * total]
    half = events >= 0.5 * total
    slope = None
    if half.sum() >= 2 and np.ptp(events[half]) > 0:
        slope = round(float(np.polyfit(events[half], rss[half], 1)[0]) * 100_000)
    flat = None
    if second.size and last.size:
        flat = bool(last.mean() <= (1 + RSS_TOLERANCE) * second.mean())
    return {
        "samples": len(samples),
        "first_bytes": int(rss[0]),
        "last_bytes": int(rss[-1]),
        "max_bytes": int(rss.max()),
        "second_quarter_mean_bytes": int(second.mean()) if second.size else None,
        "last_quarter_mean_bytes": int(last.mean()) if last.size else None,
        "second_half_slope_bytes_per_100k_events": slope,
        "flat": flat,
    }


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    figure: str
    value: str
    goal: str
    status: Status

    def line(self) -> str:
        return f"  {self.figure:<36} {self.value:<44} {self.goal:<44} {self.status}"


def _status(met: bool | None) -> Status:
    return "not measured" if met is None else "met" if met else "not met"


def _live_goals(live: Mapping[str, Any]) -> list[Goal]:
    best = live["sustained_eps"]
    at = live["at_goal_rate"]
    p99 = at.get("p99_s")
    return [
        Goal(
            "sustainable live rate",
            "none sustained" if best is None else f"{best:,.0f} events/s",
            f">= {GOAL_SUSTAINED_EPS:,.0f} events/s at p99 <= {GOAL_SUSTAINED_P99_S:g} s",
            _status(best is not None and best >= GOAL_SUSTAINED_EPS),
        ),
        Goal(
            f"freshness p99 at {GOAL_AT_RATE_EPS:,.0f} events/s",
            "not reached" if p99 is None else f"{p99:.2f} s (worse kind)",
            f"<= {GOAL_AT_RATE_P99_S:g} s",
            _status(p99 is not None and p99 <= GOAL_AT_RATE_P99_S),
        ),
    ]


def _throughput_goals(ingest: Mapping[str, Any], drained: Mapping[str, Any]) -> list[Goal]:
    share, speedup, e2e = ingest["share"], drained["speedup"], drained["share"]
    return [
        Goal(
            "ingest / raw consume ceiling",
            f"{share:.3f} ({ingest['eps']:,} of {ingest['ceiling_eps']:,} events/s)",
            f">= {GOAL_INGEST_SHARE:g} (aim {AIM_INGEST_SHARE:g})",
            _status(share >= GOAL_INGEST_SHARE),
        ),
        Goal(
            "drained e2e / naive per-event agent",
            f"{speedup:.1f}x ({drained['eps']:,} vs {drained['naive_eps']:,} events/s)",
            f">= {GOAL_SPEEDUP:g}x",
            _status(speedup >= GOAL_SPEEDUP),
        ),
        Goal(
            "drained e2e / raw consume ceiling",
            f"{e2e:.3f}",
            f">= {GOAL_E2E_SHARE:g}",
            _status(e2e >= GOAL_E2E_SHARE),
        ),
    ]


def _fanout_goals(fanout: Mapping[str, Any]) -> list[Goal]:
    """Users the fan-out marked in the drained run, and users behind their items after it."""
    reencodes, behind = fanout["reencodes"], fanout["users_behind_after_drain"]
    return [
        Goal(
            "fan-out re-encodes (users)",
            f"{reencodes:,}",
            "counted (users whose items changed)",
            "reported",
        ),
        Goal(
            "users behind their items (drained)",
            "not measured" if behind is None else f"{behind:,}",
            "0",
            _status(None if behind is None else behind == 0),
        ),
    ]


def _memory_goals(memory: Mapping[str, Any]) -> list[Goal]:
    rss, redis, events = memory["rss"], memory["redis"], memory["events"]
    flat = rss["flat"]
    if flat is None:
        value = f"not judged ({rss['samples']} samples)"
    else:
        value = (
            f"{'flat' if flat else 'growing'} over {events:,} events "
            f"({rss['second_quarter_mean_bytes'] / 2**20:,.0f} -> "
            f"{rss['last_quarter_mean_bytes'] / 2**20:,.0f} MiB)"
        )
    short = events < GOAL_MEMORY_EVENTS
    return [
        Goal(
            "worker RSS",
            value,
            f"flat (+{RSS_TOLERANCE:.0%}) over {GOAL_MEMORY_EVENTS:,} events",
            _status(None if short or flat is None else flat),
        ),
        Goal(
            "Redis bytes per user / per item",
            f"{redis['bytes_per_user']:,.0f} / {redis['bytes_per_item']:,.0f}",
            "MEMORY USAGE of the run's keys",
            "reported" if redis["users"] else "not measured",
        ),
    ]


def assess(result: Mapping[str, Any]) -> list[Goal]:
    """Every figure of the goals stage beside its goal."""
    return [
        *_live_goals(result["live"]),
        *_throughput_goals(result["ingest"], result["drained"]),
        *_fanout_goals(result["fanout"]),
        *_memory_goals(result["memory"]),
    ]


def format_goals(goals: Iterable[Goal]) -> list[str]:
    header = f"  {'figure':<36} {'value':<44} {'goal':<44} status"
    return [header, *(goal.line() for goal in goals)]
