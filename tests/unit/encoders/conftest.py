"""Small planted data and one briefly trained model, shared by the encoder tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from encoders.data import TrainingData
from encoders.features import FeaturizerConfig
from encoders.model import ModelConfig
from encoders.registry import ModelRegistry
from encoders.train import TrainConfig, Trainer, TrainResult
from encoders.workflow import TrainOutcome, train_and_export
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.training.data import build_training_data

FEATURIZER = FeaturizerConfig(buckets_per_kind=512, max_tokens=32, id_buckets=1024)


def model_config(**overrides: int) -> ModelConfig:
    base = {"d_model": 32, "out_dim": 16, "neighbours": 5, "seq_len": 12}
    base.update(overrides)
    return ModelConfig(
        buckets_per_kind=FEATURIZER.buckets_per_kind,
        dense_width=FEATURIZER.dense_width,
        id_buckets=FEATURIZER.id_buckets,
        dropout=0.0,
        **base,
    )


def train_config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "epochs": 8,
        "batch_size": 64,
        "random_negatives": 64,
        "in_batch_negatives": 64,
        "pair_batch": 128,
        "feature_batch": 64,
        "threads": 1,
        "seed": 3,
        "patience": 100,
        # the default average spans ~200 steps; these runs take 16: a span of 5 fits them
        "ema_decay": 0.8,
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def planted() -> TrainingData:
    """Users favour one of four communities; items' text names their community's theme."""
    cfg = GeneratorConfig(users=120, items=160, communities=4, events=5000, seed=11)
    catalog = {item.item_id: item for item in generate_catalog(cfg)}
    return build_training_data(list(generate_events(cfg)), catalog, FEATURIZER, k=10)


@pytest.fixture(scope="session")
def trained(planted: TrainingData) -> TrainResult:
    return Trainer(planted, model_config(), train_config()).fit()


@pytest.fixture(scope="session")
def published(planted: TrainingData, tmp_path_factory: pytest.TempPathFactory) -> TrainOutcome:
    root: Path = tmp_path_factory.mktemp("registry")
    cfg = train_config(epochs=2)
    return train_and_export(planted, FEATURIZER, model_config(), cfg, ModelRegistry(root))
