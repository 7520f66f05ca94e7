"""A tiny model trained briefly on a generated stream and published: for tests that encode and
for the end-to-end bench when it is given no model. Needs the trainer extra (torch)."""

from __future__ import annotations

from pathlib import Path

from encoders.data import TrainingData
from encoders.features import FeaturizerConfig
from encoders.model import ModelConfig
from encoders.registry import ModelRegistry
from encoders.train import TrainConfig
from encoders.workflow import train_and_export
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.training.data import build_training_data

FEATURIZER = FeaturizerConfig(buckets_per_kind=256, max_tokens=24)


def publish_tiny_model(
    root: Path, stream: GeneratorConfig, seed: int = 3
) -> tuple[ModelRegistry, str]:
    """One epoch on `stream`, published into a registry at `root`; returns it and the version."""
    catalog = {item.item_id: item for item in generate_catalog(stream)}
    data = build_training_data(list(generate_events(stream)), catalog, FEATURIZER, k=5)
    return publish_tiny_model_on(root, data, seed=seed)


def publish_tiny_model_on(
    root: Path, data: TrainingData, seed: int = 3, epochs: int = 1, width: int = 8
) -> tuple[ModelRegistry, str]:
    """The tiny model trained on `data` (built with `FEATURIZER`), published at `root`; `width`
    is its output size (the Qdrant bench asks for a production-sized 64)."""
    model = ModelConfig(
        buckets_per_kind=FEATURIZER.buckets_per_kind,
        dense_width=FEATURIZER.dense_width,
        dropout=0.0,
        d_model=max(16, width),
        out_dim=width,
        neighbours=4,
        seq_len=6,
    )
    train = TrainConfig(
        epochs=epochs,
        batch_size=64,
        random_negatives=32,
        in_batch_negatives=32,
        pair_batch=64,
        feature_batch=32,
        threads=1,
        seed=seed,
    )
    registry = ModelRegistry(root)
    outcome = train_and_export(data, FEATURIZER, model, train, registry)
    return registry, outcome.version
