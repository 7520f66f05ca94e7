"""The throughput benchmark and the CLI wiring of the training commands."""

from __future__ import annotations

import argparse

from encoders.bench import BATCHES, run_encoder_bench
from encoders.features import FeaturizerConfig
from encoders.workflow import TrainOutcome
from streams.cli import train as train_command


def test_bench_reports_both_runtimes_per_batch(published: TrainOutcome) -> None:
    result = run_encoder_bench(published.directory, repeats=1)
    rows = result["rows_per_s"]
    assert set(rows) == {f"{g}@{b}" for g in ("content", "item", "user") for b in BATCHES}
    assert all(r["onnxruntime"] > 0 and r["torch"] > 0 for r in rows.values())


def test_register_adds_train_eval_and_models() -> None:
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["train", "--data", "d", "--format", "pairs", "--out", "o", "--no-logq", "--epochs", "2"]
    )
    assert args.func is train_command.run_train and args.no_logq and args.epochs == 2
    model_cfg, train_cfg = train_command._configs(args, FeaturizerConfig())
    assert not train_cfg.use_logq and train_cfg.use_random_negatives and model_cfg.seq_len == 50
    args = parser.parse_args(["models", "--root", "r", "promote", "v0001"])
    assert args.func is train_command.run_models_promote and args.version == "v0001"
