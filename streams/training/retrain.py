"""Periodic retraining: recent events in, a gated candidate model out.

A run replays recent engagements (Kafka's retained log, or a JSONL archive), builds training data
the way `sagestream train` does, trains, and publishes the candidate whatever it scores, so every
run can be inspected with `sagestream models`. The candidate is promoted only when

    (nothing is serving   or   candidate >= serving * (1 - tolerance))
    and candidate > co-occurrence   and   candidate > popularity

Every version is scored by one function (``encoders.workflow.evaluate_version``, through
onnxruntime, as the worker runs them) on the same fresh data: full-ranking NDCG@10 on each user's
held-out last event, the metric `train` reports. Not on the validation targets: the candidate
picked its best epoch on those, which would flatter it against the serving version. The baselines
(``encoders.baselines``: training popularity and the standard item co-occurrence recommender,
fitted on the same histories) are scored on the same cases, and must be beaten outright: a model
that a count table outranks is not worth serving. ``RetrainJob.baseline_gate=False`` (the
``--no-baseline-gate`` flag) leaves only the comparison with serving, e.g. to bootstrap a first
model; the baselines are still reported.

Kafka is read the way a tool reads it, not the way the worker does: partitions assigned by hand,
no consumer group, nothing committed, so the worker's group and offsets are never touched.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from encoders import contract as c
from encoders.data import TrainingData
from encoders.evaluate import leave_one_out
from encoders.features import FeaturizerConfig
from encoders.model import ModelConfig
from encoders.registry import ModelRegistry
from encoders.train import TrainConfig
from encoders.workflow import evaluate_version, train_and_export
from streams.exceptions import SagestreamError
from streams.settings import Settings
from streams.training.data import BASELINE_NEIGHBOURS, build_training_data, featurise_items
from streams.training.datasets import load_catalog, load_dataset
from streams.wire.events import (
    CatalogItem,
    Engagement,
    Rejection,
    decode_catalog_items,
    decode_engagements,
)

log = logging.getLogger(__name__)

GATE_METRIC = ("full", "ndcg@10")  # a key path into the metrics evaluate_version returns
DEFAULT_TOLERANCE = 0.01
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")

_T = TypeVar("_T")

# The featuriser, model and training settings, once the catalog fixes the featuriser's layout.
Recipe = Callable[[Mapping[str, CatalogItem]], tuple[FeaturizerConfig, ModelConfig, TrainConfig]]


class RetrainError(SagestreamError):
    """A run cannot go on (no events, no topic, Kafka stalled); nothing was promoted."""


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``6h``, ``1d`` or a sum such as ``1h30m``. A unit is
    required: a bare number reads as seconds to some and minutes to others."""
    spec = text.strip().lower()
    if not _DURATION.fullmatch(spec):
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 6h or 1h30m")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(spec))
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return seconds


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's verdict on one candidate, with the numbers it was made on. ``baselines`` holds
    the gate metric of each baseline on the same cases (empty: none was scored)."""

    candidate: str
    candidate_score: float
    serving: str | None
    serving_score: float | None
    tolerance: float
    baselines: Mapping[str, float] = field(default_factory=dict)
    baseline_gate: bool = True  # False: baselines are reported, not required

    @property
    def bar(self) -> float | None:
        """The score the candidate must reach; None when nothing is serving."""
        if self.serving_score is None:
            return None
        return self.serving_score * (1.0 - self.tolerance)

    @property
    def unbeaten(self) -> tuple[str, ...]:
        """Names of the baselines the candidate does not beat (strictly), best first."""
        return tuple(
            name
            for name, score in sorted(self.baselines.items(), key=lambda kv: -kv[1])
            if not self.candidate_score > score
        )

    @property
    def promote(self) -> bool:
        bar = self.bar
        holds = bar is None or self.candidate_score >= bar
        return holds and not (self.baseline_gate and self.unbeaten)

    def line(self) -> str:
        metric = "/".join(GATE_METRIC)
        got = f"candidate {self.candidate} {metric} {self.candidate_score:.4f}"
        if self.promote:
            verdict = f"promoted {self.candidate}"
        elif self.serving is not None:
            verdict = f"kept serving {self.serving}"
        else:
            verdict = f"did not promote {self.candidate}"
        if self.bar is None:
            against = "nothing was serving"
        else:
            sign = ">=" if self.candidate_score >= self.bar else "<"
            against = (
                f"{sign} {self.bar:.4f} = serving {self.serving} {self.serving_score:.4f} x "
                f"{1.0 - self.tolerance:g}"
            )
        return f"{verdict}: {got}{'; ' if self.bar is None else ' '}{against}{self._baselines()}"

    def _baselines(self) -> str:
        if not self.baselines:
            return ""
        shown = ", ".join(
            f"{name} {score:.4f}"
            for name, score in sorted(self.baselines.items(), key=lambda kv: -kv[1])
        )
        if not self.unbeaten:
            return f"; beats the baselines {shown}"
        lost = " and ".join(self.unbeaten)
        plural = "s" if len(self.unbeaten) > 1 else ""
        gate = "" if self.baseline_gate else " (baseline gate off)"
        return f"; does not beat the {lost} baseline{plural}{gate}: {shown}"


@dataclass(frozen=True, slots=True)
class RetrainJob:
    """What one run reads, trains and gates with; the command builds it from flags."""

    registry: Path
    recipe: Recipe
    tolerance: float = DEFAULT_TOLERANCE
    baseline_gate: bool = True  # the candidate must also beat popularity and co-occurrence
    archive: Path | None = None  # None: replay Kafka's engagements topic
    items: Path | None = None  # None: the items topic (Kafka), or no catalog (archive)
    since_s: float | None = None
    max_events: int | None = None
    read_timeout_s: float = 60.0


# -- events ---------------------------------------------------------------------------------


def read_log(
    settings: Settings,
    topic: str,
    *,
    since_s: float | None = None,
    newest: int | None = None,
    timeout_s: float = 60.0,
) -> list[ConsumerRecord]:
    """Records of ``topic`` up to the end offsets seen at the start, from ``since_s`` ago (record
    time) or the beginning, at most the ``newest`` per partition. No group, no commits."""
    kwargs = settings.kafka.client_kwargs()
    kwargs["client_id"] = f"{settings.kafka.client_id}-retrain"
    consumer = KafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False)
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise RetrainError(f"topic {topic!r} does not exist")
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(parts)
        ends: dict[TopicPartition, int] = consumer.end_offsets(parts)
        starts = _start_offsets(consumer, parts, ends, since_s)
        for tp in parts:
            first = starts[tp] if newest is None else max(starts[tp], ends[tp] - newest)
            consumer.seek(tp, first)
        return _read_to(consumer, ends, timeout_s)
    finally:
        consumer.close()


def _start_offsets(
    consumer: KafkaConsumer,
    parts: Sequence[TopicPartition],
    ends: Mapping[TopicPartition, int],
    since_s: float | None,
) -> dict[TopicPartition, int]:
    if since_s is None:
        return dict(consumer.beginning_offsets(parts))
    cutoff_ms = int((time.time() - since_s) * 1000)
    found = consumer.offsets_for_times({tp: cutoff_ms for tp in parts})
    # None: no record that new in the partition, so nothing to read there
    return {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in parts}


def _read_to(
    consumer: KafkaConsumer, ends: Mapping[TopicPartition, int], timeout_s: float
) -> list[ConsumerRecord]:
    """Poll until every partition reached its end offset; give up after ``timeout_s`` without
    progress rather than hang a cron job."""
    records: list[ConsumerRecord] = []
    last_progress = time.monotonic()
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        if time.monotonic() - last_progress > timeout_s:
            raise RetrainError(f"no progress reading to the end offsets for {timeout_s:g} s")
        for tp, batch in consumer.poll(timeout_ms=500).items():
            records.extend(r for r in batch if r.offset < ends[tp])
            last_progress = time.monotonic()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _valid(what: str, decoded: Sequence[_T | Rejection]) -> list[_T]:
    """Decoded records without the rejections (the worker dead-letters those)."""
    kept = [d for d in decoded if not isinstance(d, Rejection)]
    rejected = len(decoded) - len(kept)
    if rejected:
        log.warning("skipped %d %s records the worker would dead-letter", rejected, what)
    return kept


def kafka_events(settings: Settings, job: RetrainJob) -> list[Engagement]:
    """Engagements replayed from the retained log (``since`` by record time)."""
    records = read_log(
        settings,
        settings.topics.engagements,
        since_s=job.since_s,
        newest=job.max_events,
        timeout_s=job.read_timeout_s,
    )
    events = _valid("engagement", decode_engagements([r.value or b"" for r in records]))
    return newest_events(events, job.max_events)


def kafka_catalog(settings: Settings, timeout_s: float) -> dict[str, CatalogItem]:
    """The items topic replayed in full: the content the worker encodes from (last one wins)."""
    records = read_log(settings, settings.topics.items, timeout_s=timeout_s)
    values = [r.value for r in records if r.value is not None]
    items = _valid("catalog", decode_catalog_items(values))
    return {item.item_id: item for item in items}


def archive_events(path: Path, since_s: float | None, max_events: int | None) -> list[Engagement]:
    """Engagements from one JSONL file, or every ``*.jsonl`` under a directory (``since`` by
    event time: an archive has no other clock)."""
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise RetrainError(f"{path}: no *.jsonl files")
    events = [e for f in files for e in load_dataset(f, "jsonl").events]
    if since_s is not None:
        cutoff = time.time() - since_s
        events = [e for e in events if e.ts >= cutoff]
    return newest_events(events, max_events)


def newest_events(events: Iterable[Engagement], limit: int | None) -> list[Engagement]:
    """Time-ordered (stable), at most the ``limit`` newest."""
    ordered = sorted(events, key=attrgetter("ts"))
    return ordered if limit is None else ordered[max(0, len(ordered) - limit) :]


# -- one run --------------------------------------------------------------------------------


def gate_score(metrics: Mapping[str, Any]) -> float:
    section, name = GATE_METRIC
    return float(metrics[section][name])


def baseline_scores(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The gate metric of each baseline in ``metrics`` (as ``evaluate_version`` returns them)."""
    return {name: gate_score(scored) for name, scored in metrics["baselines"].items()}


def evaluate_saved(
    directory: Path, data: TrainingData, catalog: Mapping[str, CatalogItem], seed: int, threads: int
) -> dict[str, Any]:
    """The metrics of a saved version on ``data`` (and of the baselines on the same cases),
    re-featurised with the version's own featuriser settings (an older version may hash or lay
    out content differently)."""
    feat = FeaturizerConfig.from_dict(json.loads((directory / c.FEATURIZER_FILE).read_text()))
    token_ids, dense = featurise_items(data.item_ids, catalog, feat)
    own = replace(data, token_ids=token_ids, dense=dense)
    return evaluate_version(directory, own, seed, threads)


def _inputs(job: RetrainJob, settings: Settings) -> tuple[list[Engagement], dict[str, CatalogItem]]:
    if job.archive is not None:
        events = archive_events(job.archive, job.since_s, job.max_events)
        source = str(job.archive)
    else:
        events = kafka_events(settings, job)
        source = f"topic {settings.topics.engagements}"
    if job.items is not None:
        catalog = load_catalog(job.items)
    elif job.archive is None:
        catalog = kafka_catalog(settings, job.read_timeout_s)
    else:
        catalog = {}
    log.info("retrain: %d events from %s, %d catalog items", len(events), source, len(catalog))
    if not events:
        raise RetrainError(f"no events to train on from {source}")
    return events, catalog


def retrain_once(job: RetrainJob, settings: Settings) -> Decision:
    """Read, train, publish, score both versions on the same data, promote if the gate passes."""
    events, catalog = _inputs(job, settings)
    feat, model_cfg, train_cfg = job.recipe(catalog)
    data = build_training_data(
        events, catalog, feat, max(BASELINE_NEIGHBOURS, model_cfg.neighbours)
    )
    if not len(leave_one_out(data.sequences, "test")):
        raise RetrainError("no user has three events: nothing to score a model on")
    registry = ModelRegistry(job.registry)
    outcome = train_and_export(data, feat, model_cfg, train_cfg, registry)
    serving = registry.promoted()
    metrics = {
        version: evaluate_saved(
            registry.path(version), data, catalog, train_cfg.seed, train_cfg.threads
        )
        for version in (outcome.version, serving)
        if version is not None
    }
    decision = Decision(
        outcome.version,
        gate_score(metrics[outcome.version]),
        serving,
        None if serving is None else gate_score(metrics[serving]),
        job.tolerance,
        baseline_scores(metrics[outcome.version]),  # same data, same cases for every version
        job.baseline_gate,
    )
    if decision.promote:
        registry.promote(outcome.version)
    elif decision.baseline_gate and decision.unbeaten:
        log.warning(
            "retrain: %s is not promoted: it does not beat the baseline(s) %s",
            outcome.version,
            ", ".join(decision.unbeaten),
        )
    return decision


def run_every(
    interval_s: float,
    run_once: Callable[[], object],
    sleep: Callable[[float], None] = time.sleep,
) -> NoReturn:
    """Run, then sleep until ``interval_s`` after that run started; forever. A failed run is
    logged and the next one tried: Kafka down for a minute must not end a scheduled retrainer."""
    runs = 0
    while True:
        started = time.monotonic()
        runs += 1
        try:
            run_once()
        except Exception:
            log.exception("retrain run %d failed", runs)
        wait = max(0.0, interval_s - (time.monotonic() - started))
        log.info("retrain run %d done; next in %.0f s", runs, wait)
        sleep(wait)
