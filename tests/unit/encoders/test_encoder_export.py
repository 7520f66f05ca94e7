"""ONNX export: parity with torch on golden inputs, enforced on every export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
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


def test_a_model_trained_without_neighbours_is_served_without_them(
    trained: TrainResult, tmp_path: Path
) -> None:
    """The ablation switch is part of the network: the exported item graph ignores neighbour
    inputs just as training did, so the served vectors are the evaluated ones."""
    cfg = replace(trained.model.config, use_neighbours=False)
    model = type(trained.model)(cfg)
    model.load_state_dict(trained.model.state_dict())
    model.eval()
    export_model(model, FEATURIZER, tmp_path)
    inputs = golden_inputs(cfg, FEATURIZER.max_tokens)[contract.ITEM_FILE]
    session = ort.InferenceSession(str(tmp_path / contract.ITEM_FILE))
    names = [i.name for i in session.get_inputs()]
    with_weights = {n: inputs[n] for n in names}
    without = dict(with_weights, neighbour_weights=np.zeros_like(inputs["neighbour_weights"]))
    assert (inputs["neighbour_weights"] > 0).any()
    (a,) = session.run(None, with_weights)
    (b,) = session.run(None, without)
    np.testing.assert_array_equal(a, b)
