"""ONNX export of the three serving graphs, with a parity check on every export.

Fixed input/output names (encoders.contract), fixed T, K, M, a dynamic batch dimension. After
writing, onnxruntime runs golden inputs (including an item with no neighbours and a user with one
action) and must match torch within ``PARITY_ATOL``; otherwise :class:`ParityError` is raised and
the files are deleted.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from encoders import contract as c
from encoders.contract import NUM_ACTIONS, NUM_TIME_FEATURES
from encoders.exceptions import ParityError
from encoders.features import FeaturizerConfig
from encoders.model import ModelConfig, SageModel

log = logging.getLogger(__name__)

PARITY_ATOL = 1e-5
OPSET = 17
GoldenInputs = dict[str, dict[str, np.ndarray]]


def golden_inputs(cfg: ModelConfig, max_tokens: int, seed: int = 0) -> GoldenInputs:
    """Deterministic inputs for each graph (batch 3). Row 0 of the item inputs has no neighbours;
    row 0 of the user inputs has one action."""
    rng = np.random.default_rng(seed)
    b, d, k, m = 3, cfg.d_model, cfg.neighbours, cfg.seq_len
    tokens = rng.integers(1, cfg.table_size, size=(b, max_tokens)).astype(np.int64)
    tokens[0, 5:] = 0
    weights = rng.uniform(0.1, 3.0, size=(b, k)).astype(np.float32)
    weights[0] = 0.0
    weights[1, k // 2 :] = 0.0
    lengths = np.array([1, min(3, m), m], dtype=np.int64)
    actions = rng.integers(1, NUM_ACTIONS, size=(b, m)).astype(np.int64)
    vectors = rng.normal(size=(b, m, cfg.out_dim)).astype(np.float32)
    times = rng.normal(size=(b, m, NUM_TIME_FEATURES)).astype(np.float32)
    for row, n in enumerate(lengths):
        actions[row, n:], vectors[row, n:], times[row, n:] = 0, 0.0, 0.0
    return {
        c.CONTENT_FILE: {
            "token_ids": tokens,
            "dense": rng.normal(size=(b, cfg.dense_width)).astype(np.float32),
        },
        c.ITEM_FILE: {
            "content": rng.normal(size=(b, d)).astype(np.float32),
            "neighbour_content": rng.normal(size=(b, k, d)).astype(np.float32),
            "neighbour_weights": weights,
            "degree": np.array([0.0, 3.0, 250.0], dtype=np.float32),
        },
        c.USER_FILE: {
            "item_vectors": vectors,
            "actions": actions,
            "time_features": times,
            "lengths": lengths,
        },
    }


def _graphs(model: SageModel) -> dict[str, tuple[nn.Module, tuple[str, ...], str]]:
    return {
        c.CONTENT_FILE: (model.content, c.CONTENT_INPUTS, c.CONTENT_OUTPUT),
        c.ITEM_FILE: (model.item, c.ITEM_INPUTS, c.ITEM_OUTPUT),
        c.USER_FILE: (model.user, c.USER_INPUTS, c.USER_OUTPUT),
    }


def _export_one(
    module: nn.Module,
    inputs: dict[str, np.ndarray],
    names: tuple[str, ...],
    output: str,
    path: Path,
) -> None:
    args = tuple(torch.as_tensor(inputs[n]) for n in names)
    axes = {n: {0: "batch"} for n in (*names, output)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(names),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _add_metadata(path: Path, model_cfg: ModelConfig, feat_cfg: FeaturizerConfig) -> None:
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(
        proto,
        {
            c.METADATA_MODEL_CONFIG: json.dumps(model_cfg.to_dict(), sort_keys=True),
            c.METADATA_FEATURIZER: json.dumps(feat_cfg.to_dict(), sort_keys=True),
        },
    )
    onnx.save(proto, str(path))


def check_parity(model: SageModel, out_dir: Path, golden: GoldenInputs) -> dict[str, float]:
    """Max |onnxruntime - torch| per graph on the golden inputs; raises ParityError over 1e-5."""
    diffs: dict[str, float] = {}
    model.eval()
    for name, (module, names, _) in _graphs(model).items():
        session = ort.InferenceSession(str(out_dir / name), providers=["CPUExecutionProvider"])
        got = session.run(None, golden[name])[0]
        with torch.no_grad():
            want: Tensor = module(*(torch.as_tensor(golden[name][n]) for n in names))
        diff = float(np.max(np.abs(got - want.numpy())))
        if not np.isfinite(got).all() or not diff <= PARITY_ATOL:
            raise ParityError(f"{name}: onnxruntime differs from torch by {diff:g} > {PARITY_ATOL}")
        diffs[name] = diff
    return diffs


def export_model(model: SageModel, feat_cfg: FeaturizerConfig, out_dir: Path) -> dict[str, float]:
    """Write content/item/user ONNX files into ``out_dir``, check parity, return the max diffs."""
    model.eval()
    cfg = model.config
    golden = golden_inputs(cfg, feat_cfg.max_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (module, names, output) in _graphs(model).items():
        _export_one(module, golden[name], names, output, out_dir / name)
        _add_metadata(out_dir / name, cfg, feat_cfg)
    try:
        diffs = check_parity(model, out_dir, golden)
    except ParityError:
        for name in _graphs(model):
            (out_dir / name).unlink(missing_ok=True)
        raise
    log.info("exported ONNX, parity max diffs %s", diffs)
    return diffs
