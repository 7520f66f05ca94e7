"""onnxruntime sessions: the API the streaming re-encoder calls (no torch needed).

Encoding an item needs its own content and its neighbours' content, never their item vectors, so
items can be re-encoded in any order and a neighbour change re-runs only the item graph:

    model = ModelRegistry(root).load(version)            # an EncoderBundle, validated
    content = model.content_vectors(items)                # [N, d]  items: CatalogItem-like
    vectors = model.item_vectors(content_rows, neighbour_content, neighbour_weights, degrees)
        # content_rows [B, d]; neighbour_content[i] [k_i, d] for the item's top neighbours in
        # descending weight order (k_i may be 0: cold start), neighbour_weights[i] [k_i]
        # (co-engagement weights as the state reads them; only ratios within a list matter);
        # degrees [B]: each item's engagement count (the state's item degree); -> [B, D]
    users = model.user_vectors(histories)                 # [B, D]
        # histories[i] = (item vectors [L, D], action codes [L], epoch seconds [L]), oldest
        # first; action codes from encoders.data.ACTION_CODES; only the last M are used

All outputs are L2-normalised float32. Inputs beyond the model's K neighbours are cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from encoders import contract as c
from encoders.data import FloatArray, IntArray, TimeArray, pack_user_histories
from encoders.features import ContentFeaturizer, ContentLike, FeaturizerConfig


class _Session:
    """One ONNX graph on the CPU provider with fixed input names."""

    def __init__(self, path: Path, names: tuple[str, ...], threads: int) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        got = tuple(i.name for i in self.session.get_inputs())
        if got != names:
            raise ValueError(f"{path.name}: inputs {got} != contract {names}")
        self.names = names

    def run(self, *arrays: np.ndarray) -> FloatArray:
        out = self.session.run(None, dict(zip(self.names, arrays, strict=True)))[0]
        return np.asarray(out, dtype=np.float32)

    def input_shape(self, name: str) -> list[int | str]:
        return next(list(i.shape) for i in self.session.get_inputs() if i.name == name)

    def output_dim(self) -> int | str:
        dims: list[int | str] = self.session.get_outputs()[0].shape
        return dims[-1]


class ContentEncoderSession(_Session):
    def __init__(self, path: Path, threads: int = 1) -> None:
        super().__init__(path, c.CONTENT_INPUTS, threads)

    def encode(self, token_ids: IntArray, dense: FloatArray) -> FloatArray:
        """``token_ids [B, T]`` int64, ``dense [B, F]`` float32 -> content ``[B, d]``."""
        return self.run(token_ids.astype(np.int64), dense.astype(np.float32))


class ItemEncoderSession(_Session):
    def __init__(self, path: Path, threads: int = 1) -> None:
        super().__init__(path, c.ITEM_INPUTS, threads)

    def encode(
        self,
        content: FloatArray,
        neighbour_content: FloatArray,
        weights: FloatArray,
        degree: FloatArray,
    ) -> FloatArray:
        """``content [B, d]``, ``neighbour_content [B, K, d]``, ``weights [B, K]``, ``degree [B]``
        -> ``[B, D]``."""
        return self.run(
            content, neighbour_content, weights.astype(np.float32), degree.astype(np.float32)
        )


class UserEncoderSession(_Session):
    def __init__(self, path: Path, threads: int = 1) -> None:
        super().__init__(path, c.USER_INPUTS, threads)

    def encode(
        self, vectors: FloatArray, actions: IntArray, times: FloatArray, lengths: IntArray
    ) -> FloatArray:
        """``[B, M, D]``, ``[B, M]``, ``[B, M, 5]``, ``[B]`` (left-aligned) -> ``[B, D]``."""
        return self.run(vectors, actions.astype(np.int64), times, lengths.astype(np.int64))


class EncoderBundle:
    """One model version's three sessions plus its featuriser; see the module docstring."""

    def __init__(
        self, version: str, directory: Path, featurizer: FeaturizerConfig, threads: int = 1
    ) -> None:
        self.version, self.directory = version, directory
        self.featurizer = ContentFeaturizer(featurizer)
        self.content = ContentEncoderSession(directory / c.CONTENT_FILE, threads)
        self.item = ItemEncoderSession(directory / c.ITEM_FILE, threads)
        self.user = UserEncoderSession(directory / c.USER_FILE, threads)
        self.neighbours = int(self.item.input_shape("neighbour_weights")[1])
        self.seq_len = int(self.user.input_shape("actions")[1])
        self.content_dim = int(self.item.input_shape("content")[1])
        self.dim = int(self.item.output_dim())

    def content_vectors(self, items: Sequence[ContentLike]) -> FloatArray:
        """Content vectors ``[N, d]`` of catalog items (featurised here, outside the graph)."""
        token_ids, dense = self.featurizer.featurise_many(items)
        return self.content.encode(token_ids, dense)

    def item_vectors(
        self,
        content: FloatArray,
        neighbour_content: Sequence[FloatArray],
        neighbour_weights: Sequence[FloatArray],
        degrees: FloatArray,
    ) -> FloatArray:
        """Item vectors ``[B, D]`` from own content ``[B, d]``, ragged neighbour lists and
        engagement counts ``[B]``."""
        b, k = len(content), self.neighbours
        nbr = np.zeros((b, k, self.content_dim), dtype=np.float32)
        weights = np.zeros((b, k), dtype=np.float32)
        for row, (vecs, w) in enumerate(zip(neighbour_content, neighbour_weights, strict=True)):
            n = min(len(w), k)
            nbr[row, :n], weights[row, :n] = vecs[:n], w[:n]
        return self.item.encode(np.asarray(content, dtype=np.float32), nbr, weights, degrees)

    def user_vectors(
        self, histories: Sequence[tuple[FloatArray, IntArray, TimeArray]]
    ) -> FloatArray:
        """User vectors ``[B, D]`` from (item vectors, action codes, timestamps) histories."""
        arrays = pack_user_histories(histories, self.seq_len, self.dim)
        return self.user.encode(*arrays)
