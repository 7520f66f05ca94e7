"""ONNX export: parity with torch on golden inputs, enforced on every export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders import contract
from encoders.exceptions import ParityError
from encoders.export import check_parity, export_model, golden_inputs
from encoders.train import TrainResult
from encoders.workflow import TrainOutcome, evaluate_version
from tests.unit.encoders.conftest import FEATURIZER


def test_export_parity_and_golden_edge_cases(trained: TrainResult, tmp_path: Path) -> None:
    diffs = export_model(trained.model, FEATURIZER, tmp_path)
    assert set(diffs) == {contract.CONTENT_FILE, contract.ITEM_FILE, contract.USER_FILE}
    assert max(diffs.values()) <= 1e-5
    golden = golden_inputs(trained.model.config, FEATURIZER.max_tokens)
    assert (golden[contract.ITEM_FILE]["neighbour_weights"][0] == 0).all()  # no neighbours
    assert golden[contract.USER_FILE]["lengths"][0] == 1  # one action


def test_parity_violation_fails_the_export(trained: TrainResult, tmp_path: Path) -> None:
    export_model(trained.model, FEATURIZER, tmp_path)
    model = type(trained.model)(trained.model.config)  # different weights, same shapes
    model.load_state_dict(trained.model.state_dict())
    with torch.no_grad():
        model.user.head[2].bias.add_(0.5)
    with pytest.raises(ParityError):
        check_parity(model, tmp_path, golden_inputs(model.config, FEATURIZER.max_tokens))


def test_onnx_evaluation_matches_torch_metrics(published: TrainOutcome, planted: object) -> None:
    again = evaluate_version(published.directory, planted, seed=3)  # type: ignore[arg-type]
    for section in ("full", "sampled100"):
        for key, value in published.metrics[section].items():
            assert again[section][key] == pytest.approx(value, abs=1e-3)
    assert np.isfinite(again["baselines"]["popularity"]["full"]["ndcg@10"])
