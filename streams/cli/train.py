"""`sagestream train`, `eval` and `models list|show|promote|rollback`: the glue between the
event log on disk, the state rules and the encoders package.

Training and serving agree because neighbour lists come from ``state.coengagement`` (the same
rules the stream's Lua script runs), fed with the training events in time order.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from encoders.data import (
    TrainingData,
)
from encoders.exceptions import ModelRejected, RegistryError
from encoders.features import FeaturizerConfig
from encoders.model import ModelConfig
from encoders.registry import ModelRegistry
from encoders.train import TrainConfig
from encoders.workflow import evaluate_version, train_and_export
from streams.cli.common import say, settings_of
from streams.training.data import (
    BASELINE_NEIGHBOURS,
    build_training_data,
    featurizer_for,
)
from streams.training.datasets import load_dataset
from streams.training.store_eval import evaluate_store, relative_gap
from streams.vectors.store import vector_store
from streams.wire.events import CatalogItem

log = logging.getLogger(__name__)

FORMATS = ["movielens", "movielens-csv", "pairs", "jsonl"]
DEFAULT_EPOCHS = 40  # an upper bound: training stops on validation (patience) before it


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="train, evaluate and publish a model version")
    _data_args(train)
    train.add_argument("--out", type=Path, required=True, help="model registry root")
    model_args(train)
    train.add_argument("--promote", action="store_true", help="promote the new version")
    train.set_defaults(func=run_train)

    ev = sub.add_parser("eval", help="re-evaluate a saved model version through onnxruntime")
    _data_args(ev)
    ev.add_argument("--model", type=Path, required=True, help="a version directory")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--store",
        action="store_true",
        help="also score the vectors readers get from Qdrant (streams/training/store_eval.py), "
        "on the same cases; the stream must have been fed each user's events up to the test target",
    )
    ev.set_defaults(func=run_eval)

    models = sub.add_parser("models", help="list, show, promote or roll back model versions")
    models.add_argument("--root", type=Path, required=True, help="model registry root")
    actions = models.add_subparsers(dest="models_command", required=True)
    actions.add_parser("list").set_defaults(func=run_models_list)
    for name, func in (("show", run_models_show), ("promote", run_models_promote)):
        action = actions.add_parser(name)
        action.add_argument("version")
        action.set_defaults(func=func)
    actions.add_parser("rollback").set_defaults(func=run_models_rollback)


def model_args(parser: argparse.ArgumentParser) -> None:
    """Model size, optimisation and ablation flags; `retrain` shares them, defaults included."""
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--dim", type=int, default=64, help="output embedding size D")
    parser.add_argument("--seq-len", type=int, default=50, help="actions per user sequence M")
    parser.add_argument("--neighbours", type=int, default=10, help="neighbour tokens per item K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-minutes", type=float, help="stop training after this long")
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=TrainConfig().ema_decay,
        help="validate and serve a moving average of the weights (default %(default)s; 0: off)",
    )
    for flag in ("neighbours", "content", "ids", "logq", "random-negatives"):
        parser.add_argument(f"--no-{flag}", action="store_true", help=f"ablation: no {flag}")


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--items", type=Path, help="catalog JSONL (for --format jsonl)")


# -- data ------------------------------------------------------------------------------------


def load_training_data(
    args: argparse.Namespace, featurizer_cfg: FeaturizerConfig | None = None
) -> tuple[TrainingData, FeaturizerConfig]:
    """Load ``--data`` and build arrays; the featuriser settings come from the data unless given."""
    dataset = load_dataset(args.data, args.format, args.items)
    events = list(dataset.events)
    if featurizer_cfg is None:
        featurizer_cfg = featurizer_for(
            dataset.items, getattr(args, "no_content", False), getattr(args, "no_ids", False)
        )
    k = max(BASELINE_NEIGHBOURS, getattr(args, "neighbours", 0))
    data = build_training_data(events, dataset.items, featurizer_cfg, k)
    log.info(
        "data: %d users, %d items, %d events", len(data.sequences), len(data.item_ids), len(events)
    )
    return data, featurizer_cfg


# -- commands --------------------------------------------------------------------------------


class _ProgressLine:
    """A single rewritten progress line on stderr (the product goes to stdout)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, epoch: int, step: int, steps: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last < 1.0 and step < steps:
            return
        self.last = now
        shown = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
        sys.stderr.write(f"\repoch {epoch} step {step}/{steps} {shown}   ")
        if step >= steps:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _configs(args: argparse.Namespace, feat: FeaturizerConfig) -> tuple[ModelConfig, TrainConfig]:
    model_cfg = ModelConfig(
        buckets_per_kind=feat.buckets_per_kind,
        dense_width=feat.dense_width,
        id_buckets=feat.id_buckets,
        out_dim=args.dim,
        neighbours=args.neighbours,
        seq_len=args.seq_len,
        use_neighbours=not args.no_neighbours,
    )
    train_cfg = TrainConfig(
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        use_logq=not args.no_logq,
        use_random_negatives=not args.no_random_negatives,
        use_feature_task=not args.no_content,
        use_neighbours=not args.no_neighbours,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60.0,
        ema_decay=args.ema_decay,
    )
    return model_cfg, train_cfg


def training_configs(
    args: argparse.Namespace, catalog: Mapping[str, CatalogItem]
) -> tuple[FeaturizerConfig, ModelConfig, TrainConfig]:
    """Everything :func:`model_args` flags say, once the catalog fixes the featuriser layout."""
    feat = featurizer_for(catalog, args.no_content, args.no_ids)
    return (feat, *_configs(args, feat))


def run_train(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data, feat = load_training_data(args)
    model_cfg, train_cfg = _configs(args, feat)
    progress = _ProgressLine()
    registry = ModelRegistry(args.out)
    outcome = train_and_export(data, feat, model_cfg, train_cfg, registry, progress)
    if args.promote:
        registry.promote(outcome.version)
    log.info("train + eval + export took %.0f s", time.monotonic() - started)
    say(f"version {outcome.version} at {outcome.directory}")
    say(json.dumps(outcome.metrics, indent=2, sort_keys=True))
    return 0


def _version_dir(path: Path) -> Path:
    """A version directory, or a registry root (its promoted, else newest, version)."""
    if (path / "manifest.json").exists():
        return path
    registry = ModelRegistry(path)
    versions = registry.list()
    version = registry.promoted() or (versions[-1] if versions else None)
    if version is None:
        raise SystemExit(f"{path}: neither a model version nor a registry with versions")
    return registry.path(version)


def run_eval(args: argparse.Namespace) -> int:
    directory = _version_dir(args.model)
    feat = FeaturizerConfig.from_dict(json.loads((directory / "featurizer.json").read_text()))
    data, _ = load_training_data(args, feat)
    metrics = evaluate_version(directory, data, args.seed, args.threads)
    if args.store:
        with vector_store(settings_of(args)) as store:
            stored = evaluate_store(store, data, args.seed)
        gap = relative_gap(stored, metrics)
        metrics = {"offline": metrics, "store": stored, "store_vs_offline": gap}
    say(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


def run_models_list(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.root)
    promoted = registry.promoted()
    for version in registry.list():
        full = registry.show(version).get("metrics", {}).get("full", {})
        mark = "*" if version == promoted else " "
        say(f"{mark} {version}  ndcg@10={full.get('ndcg@10', float('nan')):.4f}")
    return 0


def run_models_show(args: argparse.Namespace) -> int:
    say(json.dumps(ModelRegistry(args.root).show(args.version), indent=2, sort_keys=True))
    return 0


def run_models_promote(args: argparse.Namespace) -> int:
    try:
        ModelRegistry(args.root).promote(args.version)
    except (ModelRejected, RegistryError) as err:
        log.error("%s", err)
        return 1
    say(f"promoted {args.version}")
    return 0


def run_models_rollback(args: argparse.Namespace) -> int:
    try:
        version = ModelRegistry(args.root).rollback()
    except RegistryError as err:
        log.error("%s", err)
        return 1
    say(f"serving {version}")
    return 0
