"""End-to-end steps the CLI runs: train -> evaluate -> export -> publish, and re-evaluate."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoders import contract as c
from encoders.baselines import cooccurrence_scorer, popularity_scorer, training_counts
from encoders.data import FloatArray, TrainingData, pack_user_inputs
from encoders.evaluate import Metrics, leave_one_out, rank_metrics, sample_negatives, vector_scorer
from encoders.export import export_model
from encoders.features import FeaturizerConfig
from encoders.inference import encode_items, encode_users
from encoders.model import ModelConfig, SageModel
from encoders.registry import ModelRegistry, load_version_dir, remove_staging
from encoders.train import Progress, TrainConfig, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    version: str
    directory: Path
    metrics: dict[str, Any]


def data_summary(data: TrainingData) -> dict[str, int]:
    events = sum(len(s.items) for s in data.sequences)
    return {"users": len(data.sequences), "items": len(data.item_ids), "events": events}


def evaluate_vectors(
    data: TrainingData, item_vectors: FloatArray, user_vectors: FloatArray, seed: int
) -> dict[str, Any]:
    """Test metrics of the model's vectors and of both baselines (``encoders.baselines``:
    popularity and the standard item co-occurrence recommender, both fitted on the cases'
    histories), on the same cases and sampled negatives."""
    n_items = len(data.item_ids)
    cases = leave_one_out(data.sequences, "test")
    negatives = sample_negatives(cases, n_items, seed)
    model: Metrics = rank_metrics(vector_scorer(user_vectors, item_vectors), cases, negatives)
    baselines = {
        "popularity": rank_metrics(
            popularity_scorer(training_counts(cases, n_items)), cases, negatives
        ),
        "cooccurrence": rank_metrics(cooccurrence_scorer(cases, n_items), cases, negatives),
    }
    return {**model, "baselines": baselines, "data": data_summary(data)}


def save_curves(history: list[dict[str, float]], path: Path) -> None:
    """Per-epoch task losses and validation NDCG@10 as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for key in ("user", "item", "feature"):
        if history and key in history[0]:
            left.plot(epochs, [row[key] for row in history], label=f"{key} loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [row["val_ndcg@10"] for row in history], marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel("validation NDCG@10 (full ranking)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_weights(model: SageModel, path: Path) -> None:
    """The state dict as a plain ``.npz`` (loadable with ``allow_pickle=False``)."""
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def _dims(model_cfg: ModelConfig, feat_cfg: FeaturizerConfig) -> dict[str, int]:
    return {
        "dim": model_cfg.out_dim,
        "user_dim": model_cfg.out_dim,
        "content_dim": model_cfg.d_model,
        "neighbours": model_cfg.neighbours,
        "seq_len": model_cfg.seq_len,
        "max_tokens": feat_cfg.max_tokens,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def train_and_export(
    data: TrainingData,
    feat_cfg: FeaturizerConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    registry: ModelRegistry,
    progress: Progress | None = None,
) -> TrainOutcome:
    """Train, evaluate on the test split, export with parity, publish atomically."""
    result = Trainer(data, model_cfg, train_cfg).fit(progress)
    items = encode_items(result.model, data, train_cfg.use_neighbours)
    cases = leave_one_out(data.sequences, "test")
    users = encode_users(result.model, items, cases.histories)
    metrics = evaluate_vectors(data, items, users, train_cfg.seed)
    metrics["train_seconds"] = round(result.seconds, 1)
    staging = registry.staging()
    try:
        parity = export_model(result.model, feat_cfg, staging)
        _write_json(staging / c.MODEL_CONFIG_FILE, model_cfg.to_dict())
        save_weights(result.model, staging / c.WEIGHTS_FILE)
        _write_json(staging / c.FEATURIZER_FILE, feat_cfg.to_dict())
        _write_json(staging / c.METRICS_FILE, metrics)
        save_curves(result.history, staging / c.CURVES_FILE)
        info = {
            "data": metrics["data"],
            "metrics": {k: metrics[k] for k in ("full", "sampled100", "baselines")},
            "dims": _dims(model_cfg, feat_cfg),
            "train": {"best_epoch": result.best_epoch, "history": result.history},
            "train_config": {k: getattr(train_cfg, k) for k in train_cfg.__dataclass_fields__},
            "parity_max_abs_diff": parity,
        }
        version = registry.publish(staging, info)
    except BaseException:
        remove_staging(staging)
        raise
    registry.load(version)  # the published version must pass the serving checks
    return TrainOutcome(version, registry.path(version), metrics)


def evaluate_version(
    directory: Path, data: TrainingData, seed: int, threads: int = 1, batch: int = 4096
) -> dict[str, Any]:
    """Re-evaluate a saved version through onnxruntime (``data`` featurised with its settings)."""
    bundle = load_version_dir(directory, threads)
    k = bundle.neighbours
    n = len(data.item_ids)
    content = np.concatenate(
        [
            bundle.content.encode(data.token_ids[i : i + batch], data.dense[i : i + batch])
            for i in range(0, n, batch)
        ]
    )
    nbrs, weights = np.clip(data.neighbours[:, :k], 0, None), data.neighbour_weights[:, :k]
    items = np.concatenate(
        [
            bundle.item.encode(
                content[i : i + batch],
                content[nbrs[i : i + batch]],
                weights[i : i + batch],
                data.degrees[i : i + batch],
            )
            for i in range(0, n, batch)
        ]
    )
    cases = leave_one_out(data.sequences, "test")
    users = [
        bundle.user.encode(*pack_user_inputs(items, cases.histories[i : i + batch], bundle.seq_len))
        for i in range(0, len(cases), batch)
    ]
    user_vectors = np.concatenate(users) if users else np.zeros((0, bundle.dim), np.float32)
    return evaluate_vectors(data, items, user_vectors, seed)
