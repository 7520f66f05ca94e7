"""The model registry: a version is a directory; publishing is atomic; loading validates.

    root/
      versions/v0001/   content.onnx item.onnx user.onnx model_config.json featurizer.json
                        metrics.json curves.png manifest.json
      promoted.json     {"history": ["v0001", "v0003"]}   (last = serving; rollback pops)

``publish`` takes a staging directory (made by :meth:`ModelRegistry.staging`, inside the root so
the final rename stays on one filesystem), checksums its files, writes the manifest, fsyncs and
renames it into ``versions/``. ``load`` verifies checksums, dims and a smoke inference with finite,
unit-norm outputs, raising :class:`ModelRejected` so the caller keeps serving the old model.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from encoders import contract as c
from encoders.exceptions import ModelRejected, RegistryError
from encoders.features import FeaturizerConfig
from encoders.runtime import EncoderBundle

_VERSIONS = "versions"
_PROMOTED = "promoted.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


class ModelRegistry:
    """Versions under ``root/versions``; the promoted history in ``root/promoted.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / _VERSIONS

    def staging(self) -> Path:
        """A fresh private directory on the registry's filesystem to build a version in."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        staging.chmod(0o755)  # mkdtemp makes it private; serving workers must read it
        return staging

    def publish(self, staging: Path, info: Mapping[str, Any]) -> str:
        """Checksum, manifest, fsync and rename ``staging`` into the next free version name."""
        files = sorted(p for p in staging.iterdir() if p.is_file() and p.name != c.MANIFEST_FILE)
        for path in files:
            _fsync(path)
        manifest = dict(info)
        manifest["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        manifest["files"] = {p.name: sha256_file(p) for p in files}
        for _ in range(1000):
            version = self._next_version()
            manifest["version"] = version
            _write_json_atomic(staging / c.MANIFEST_FILE, manifest)
            _fsync(staging)
            try:
                os.rename(staging, self.versions_dir / version)
            except OSError:
                continue  # another publisher took this name; take the next one
            _fsync(self.versions_dir)
            return version
        raise RegistryError("could not find a free version name")

    def _next_version(self) -> str:
        numbers = [int(v[1:]) for v in self.list() if v[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1:04d}"

    def list(self) -> builtins.list[str]:
        """Published versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        names = (p.name for p in self.versions_dir.iterdir() if p.is_dir())
        return sorted(names, key=lambda v: (len(v), v))

    def path(self, version: str) -> Path:
        path = self.versions_dir / version
        if not path.is_dir():
            raise RegistryError(f"no model version {version!r} under {self.root}")
        return path

    def show(self, version: str) -> dict[str, Any]:
        """The version's manifest."""
        try:
            manifest: dict[str, Any] = json.loads(
                (self.path(version) / c.MANIFEST_FILE).read_text()
            )
        except (OSError, ValueError) as err:
            raise RegistryError(f"{version}: unreadable manifest: {err}") from err
        return manifest

    def _history(self) -> builtins.list[str]:
        path = self.root / _PROMOTED
        if not path.exists():
            return []
        return [str(v) for v in json.loads(path.read_text())["history"]]

    def promoted(self) -> str | None:
        """The serving version, or None if nothing was promoted."""
        history = self._history()
        return history[-1] if history else None

    def promote(self, version: str) -> None:
        """Make ``version`` the serving one, after it passes :meth:`load`'s checks."""
        self.load(version)
        history = [v for v in self._history() if v != version] + [version]
        _write_json_atomic(self.root / _PROMOTED, {"history": history})

    def rollback(self) -> str:
        """Go back to the previously promoted version; returns it."""
        history = self._history()
        if len(history) < 2:
            raise RegistryError("nothing to roll back to")
        _write_json_atomic(self.root / _PROMOTED, {"history": history[:-1]})
        return history[-2]

    def load(self, version: str, threads: int = 1) -> EncoderBundle:
        """Validated sessions of ``version``; raises ModelRejected on any problem."""
        directory = self.versions_dir / version
        return load_version_dir(directory, threads)


def load_version_dir(directory: Path, threads: int = 1) -> EncoderBundle:
    """Validate a version directory (checksums, dims, smoke inference) and open its sessions."""
    version = directory.name
    try:
        manifest = json.loads((directory / c.MANIFEST_FILE).read_text())
        featurizer = FeaturizerConfig.from_dict(
            json.loads((directory / c.FEATURIZER_FILE).read_text())
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelRejected(version, f"unreadable manifest or settings: {err}") from err
    _verify_checksums(version, directory, manifest)
    try:
        bundle = EncoderBundle(version, directory, featurizer, threads)
    except Exception as err:  # onnxruntime raises its own types for corrupt graphs
        raise ModelRejected(version, f"cannot open ONNX graphs: {err}") from err
    _verify_dims(version, bundle, manifest.get("dims", {}))
    _smoke(version, bundle)
    return bundle


def _verify_checksums(version: str, directory: Path, manifest: Mapping[str, Any]) -> None:
    files: Mapping[str, str] = manifest.get("files", {})
    for name in (c.CONTENT_FILE, c.ITEM_FILE, c.USER_FILE, c.FEATURIZER_FILE):
        if name not in files:
            raise ModelRejected(version, f"manifest lists no checksum for {name}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise ModelRejected(version, f"{name} is missing")
        if sha256_file(path) != expected:
            raise ModelRejected(version, f"{name} checksum mismatch (truncated or altered)")


def _verify_dims(version: str, bundle: EncoderBundle, dims: Mapping[str, Any]) -> None:
    actual = {
        "dim": bundle.dim,
        "content_dim": bundle.content_dim,
        "neighbours": bundle.neighbours,
        "seq_len": bundle.seq_len,
        "user_dim": bundle.user.output_dim(),
        "max_tokens": bundle.content.input_shape("token_ids")[1],
    }
    for key, value in actual.items():
        if key not in dims or dims[key] != value:
            raise ModelRejected(version, f"dims: {key} is {value}, manifest says {dims.get(key)}")


def _smoke(version: str, bundle: EncoderBundle) -> None:
    """Encode one cold item, one item with neighbours and a one-action user; all finite."""
    try:
        content = bundle.content.encode(
            np.arange(1, bundle.featurizer.config.max_tokens + 1, dtype=np.int64)[None, :] % 7 + 1,
            np.zeros((1, bundle.featurizer.config.dense_width), dtype=np.float32),
        )
        items = bundle.item_vectors(
            np.repeat(content, 2, axis=0),
            [content[:0], content],
            [np.zeros(0, np.float32), np.ones(1, np.float32)],
            np.array([0.0, 5.0], np.float32),
        )
        users = bundle.user_vectors([(items[:1], np.array([1]), np.array([0.0]))])
    except Exception as err:
        raise ModelRejected(version, f"smoke inference failed: {err}") from err
    for name, out in (("content", content), ("item", items), ("user", users)):
        if not np.isfinite(out).all():
            raise ModelRejected(version, f"smoke inference: non-finite {name} output")
    norms = np.linalg.norm(np.concatenate([items, users]), axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ModelRejected(version, f"smoke inference: vectors not unit norm ({norms})")


def remove_staging(staging: Path) -> None:
    """Drop an unpublished staging directory."""
    shutil.rmtree(staging, ignore_errors=True)
