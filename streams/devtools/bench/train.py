"""Training cost against catalogue size: one generated stream, two catalogues, same events.

A step should cost what its events cost, so an epoch on a 20k-item catalogue should take about
what it takes on a 2k-item twin with the same users and events. Each size gets its data built
once, then ``repeats`` epochs timed (steps and validation apart); medians are quoted.
Needs the trainer extra (torch).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from encoders.model import ModelConfig
from encoders.train import TrainConfig, Trainer
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.training.data import build_training_data, featurizer_for

log = logging.getLogger(__name__)

EPOCH_GOAL_S = 60.0
GROWTH_GOAL = 1.5


@dataclass(frozen=True, slots=True)
class TrainBenchConfig:
    items: int = 20_000
    twin_items: int = 2_000
    events: int = 300_000
    users: int = 20_000
    repeats: int = 2
    threads: int = 2
    seed: int = 7


def _time_size(cfg: TrainBenchConfig, items: int) -> dict[str, Any]:
    stream = GeneratorConfig(
        users=cfg.users, items=items, communities=16, events=cfg.events, seed=cfg.seed
    )
    started = time.monotonic()
    catalog = {item.item_id: item for item in generate_catalog(stream)}
    feat = featurizer_for(catalog, no_content=False)
    data = build_training_data(list(generate_events(stream)), catalog, feat, k=10)
    build_s = time.monotonic() - started
    model_cfg = ModelConfig(
        buckets_per_kind=feat.buckets_per_kind,
        dense_width=feat.dense_width,
        id_buckets=feat.id_buckets,
    )
    trainer = Trainer(data, model_cfg, TrainConfig(threads=cfg.threads, seed=cfg.seed))
    steps_s, validation_s = [], []
    for repeat in range(cfg.repeats):
        started = time.monotonic()
        trainer.refresh_content_cache()
        steps = 0
        for batch in trainer.batches.epoch(trainer.cfg.batch_size):
            trainer.step(batch)
            steps += 1
        steps_s.append(time.monotonic() - started)
        started = time.monotonic()
        ndcg = trainer.validate()
        validation_s.append(time.monotonic() - started)
        log.info(
            "%d items, epoch %d/%d: %d steps %.1f s, validation %.1f s (NDCG@10 %.4f)",
            items,
            repeat + 1,
            cfg.repeats,
            steps,
            steps_s[-1],
            validation_s[-1],
            ndcg,
        )
    steps_med, val_med = statistics.median(steps_s), statistics.median(validation_s)
    return {
        "items": items,
        "users": len(data.sequences),
        "events": sum(len(s.items) for s in data.sequences),
        "steps": steps,
        "exact_softmax": trainer.full_softmax,
        "build_s": round(build_s, 1),
        "steps_s": [round(s, 1) for s in steps_s],
        "validation_s": [round(s, 1) for s in validation_s],
        "epoch_s": round(steps_med + val_med, 1),
        "val_ndcg@10": round(ndcg, 4),
    }


def run_train_bench(cfg: TrainBenchConfig) -> dict[str, Any]:
    """Both sizes, then the goals: an epoch at the big size, and its growth over the twin."""
    big, twin = _time_size(cfg, cfg.items), _time_size(cfg, cfg.twin_items)
    growth = big["epoch_s"] / max(twin["epoch_s"], 1e-9)
    return {
        "threads": cfg.threads,
        "cpus": os.cpu_count(),
        "repeats": cfg.repeats,
        "sizes": [big, twin],
        "growth": round(growth, 2),
        "goals": {
            "epoch_s": {"goal_max": EPOCH_GOAL_S, "met": big["epoch_s"] <= EPOCH_GOAL_S},
            "growth": {"goal_max": GROWTH_GOAL, "met": growth <= GROWTH_GOAL},
        },
    }
