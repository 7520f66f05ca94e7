"""The model registry: atomic versions, promote/rollback, and refusal of bad models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from encoders import contract
from encoders.exceptions import ModelRejected, RegistryError
from encoders.registry import ModelRegistry, sha256_file
from encoders.workflow import TrainOutcome

METRIC_KEYS = {"full", "sampled100", "baselines", "data", "train_seconds"}


def _copy(published: TrainOutcome, tmp_path: Path) -> tuple[ModelRegistry, str]:
    root = tmp_path / "reg"
    shutil.copytree(published.directory.parent.parent, root, ignore=shutil.ignore_patterns(".*"))
    return ModelRegistry(root), published.version


def _rewrite_checksum(directory: Path, name: str) -> None:
    manifest = json.loads((directory / contract.MANIFEST_FILE).read_text())
    manifest["files"][name] = sha256_file(directory / name)
    (directory / contract.MANIFEST_FILE).write_text(json.dumps(manifest))


def test_published_version_layout(published: TrainOutcome) -> None:
    names = {p.name for p in published.directory.iterdir()}
    assert {contract.CONTENT_FILE, contract.ITEM_FILE, contract.USER_FILE} <= names
    assert {contract.MANIFEST_FILE, contract.METRICS_FILE, contract.CURVES_FILE} <= names
    metrics = json.loads((published.directory / contract.METRICS_FILE).read_text())
    assert set(metrics) == METRIC_KEYS
    assert set(metrics["full"]) == {"recall@10", "ndcg@10"}
    assert set(metrics["sampled100"]) == {"hr@10", "ndcg@10"}
    assert set(metrics["baselines"]) == {"popularity", "cooccurrence"}
    assert set(metrics["baselines"]["cooccurrence"]) == {"full", "sampled100"}
    assert set(metrics["data"]) == {"users", "items", "events"}
    manifest = json.loads((published.directory / contract.MANIFEST_FILE).read_text())
    assert manifest["version"] == published.version and manifest["dims"]["dim"] == 16
    assert not [p for p in published.directory.parent.parent.iterdir() if p.name.startswith(".")]


def test_promote_rollback_and_list(published: TrainOutcome, tmp_path: Path) -> None:
    registry, v1 = _copy(published, tmp_path)
    staging = registry.staging()
    for path in registry.path(v1).iterdir():
        if path.name != contract.MANIFEST_FILE:
            shutil.copy(path, staging / path.name)
    v2 = registry.publish(staging, registry.show(v1) | {"note": "copy"})
    assert registry.list() == [v1, v2] and v2 != v1
    assert registry.promoted() is None
    registry.promote(v1)
    registry.promote(v2)
    assert registry.promoted() == v2
    assert registry.rollback() == v1 and registry.promoted() == v1
    with pytest.raises(RegistryError):
        registry.rollback()
    bundle = registry.load(v2)
    cold = bundle.item_vectors(
        bundle.content_vectors([_Item()]),
        [np.zeros((0, bundle.content_dim), np.float32)],
        [np.zeros(0, np.float32)],
        np.zeros(1, np.float32),
    )
    assert cold.shape == (1, bundle.dim) and np.isfinite(cold).all()


class _Item:
    item_id, title, text, categories, features = "i-new", "a brand new item", "", ("new",), None


def test_truncated_file_is_rejected(published: TrainOutcome, tmp_path: Path) -> None:
    registry, version = _copy(published, tmp_path)
    path = registry.path(version) / contract.ITEM_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelRejected, match="checksum"):
        registry.load(version)
    _rewrite_checksum(registry.path(version), contract.ITEM_FILE)  # even with a matching sum
    with pytest.raises(ModelRejected, match="cannot open"):
        registry.load(version)
    with pytest.raises(ModelRejected):
        registry.promote(version)


def test_wrong_dims_are_rejected(published: TrainOutcome, tmp_path: Path) -> None:
    registry, version = _copy(published, tmp_path)
    manifest_path = registry.path(version) / contract.MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["dims"]["dim"] = 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelRejected, match="dims"):
        registry.load(version)


def test_nan_weights_are_rejected(published: TrainOutcome, tmp_path: Path) -> None:
    registry, version = _copy(published, tmp_path)
    path = registry.path(version) / contract.USER_FILE
    proto = onnx.load(str(path))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = onnx.numpy_helper.to_array(biggest).copy()
    array[...] = np.nan
    biggest.CopyFrom(onnx.numpy_helper.from_array(array, biggest.name))
    onnx.save(proto, str(path))
    _rewrite_checksum(registry.path(version), contract.USER_FILE)
    with pytest.raises(ModelRejected, match="non-finite"):
        registry.load(version)
