"""onnxruntime against torch eager throughput for the exported graphs, at batch 1, 64 and 512.

    python -m encoders.bench MODEL_VERSION_DIR [--repeats N] [--threads T]

Each figure is rows per second from the median of ``repeats`` timed calls (after one warm-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders import contract as c
from encoders.export import golden_inputs
from encoders.features import FeaturizerConfig
from encoders.model import ModelConfig, SageModel
from encoders.registry import load_version_dir

BATCHES = (1, 64, 512)
log = logging.getLogger(__name__)


def load_torch_model(directory: Path) -> SageModel:
    """The torch twin of a version, from its model config and ``weights.npz``."""
    cfg = ModelConfig.from_dict(json.loads((directory / c.MODEL_CONFIG_FILE).read_text()))
    model = SageModel(cfg)
    with np.load(directory / c.WEIGHTS_FILE, allow_pickle=False) as arrays:
        model.load_state_dict({k: torch.as_tensor(arrays[k]) for k in arrays.files})
    return model.eval()


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch_of(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Golden rows tiled to ``size`` rows."""
    return {k: np.ascontiguousarray(np.resize(v, (size, *v.shape[1:]))) for k, v in inputs.items()}


def run_encoder_bench(model_dir: Path, repeats: int = 20, threads: int = 1) -> dict[str, Any]:
    """Rows/s of each graph under onnxruntime and torch eager, per batch size."""
    torch.set_num_threads(threads)
    bundle = load_version_dir(Path(model_dir), threads)
    model = load_torch_model(Path(model_dir))
    feat = FeaturizerConfig.from_dict(json.loads((Path(model_dir) / c.FEATURIZER_FILE).read_text()))
    golden = golden_inputs(model.config, feat.max_tokens)
    graphs = {
        "content": (c.CONTENT_FILE, bundle.content, model.content, c.CONTENT_INPUTS),
        "item": (c.ITEM_FILE, bundle.item, model.item, c.ITEM_INPUTS),
        "user": (c.USER_FILE, bundle.user, model.user, c.USER_INPUTS),
    }
    results: dict[str, Any] = {"threads": threads, "repeats": repeats, "rows_per_s": {}}
    for name, (file, session, module, names) in graphs.items():
        for size in BATCHES:
            batch = _batch_of(golden[file], size)
            tensors = [torch.as_tensor(batch[n]) for n in names]
            ort_s = _median_seconds(partial(session.session.run, None, batch), repeats)
            with torch.no_grad():
                torch_s = _median_seconds(partial(module, *tensors), repeats)
            results["rows_per_s"][f"{name}@{size}"] = {
                "onnxruntime": round(size / ort_s, 1),
                "torch": round(size / torch_s, 1),
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m encoders.bench", description=__doc__)
    parser.add_argument("model_dir", type=Path, help="a model version directory")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    results = run_encoder_bench(args.model_dir, args.repeats, args.threads)
    sys.stdout.write(format_table(results))
    return 0


def format_table(results: dict[str, Any]) -> str:
    """One line per graph and batch size: both runtimes and their ratio."""
    lines = [f"{'graph@batch':<14}{'onnxruntime rows/s':>20}{'torch rows/s':>16}{'ratio':>8}"]
    for key, row in results["rows_per_s"].items():
        ratio = row["onnxruntime"] / row["torch"]
        lines.append(f"{key:<14}{row['onnxruntime']:>20.1f}{row['torch']:>16.1f}{ratio:>8.2f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
