"""Batched no-grad inference with the torch model (training-side twin of encoders.runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from encoders.data import FloatArray, IntArray, TimeArray, TrainingData, pack_user_inputs
from encoders.model import SageModel


@torch.no_grad()
def encode_items(
    model: SageModel, data: TrainingData, use_neighbours: bool = True, batch: int = 2048
) -> FloatArray:
    """Every item's vector ``[N, D]``: all items' content, then the item encoder."""
    k = model.config.neighbours
    content = torch.cat(
        [
            model.content(
                torch.as_tensor(data.token_ids[i : i + batch]),
                torch.as_tensor(data.dense[i : i + batch]),
            )
            for i in range(0, len(data.item_ids), batch)
        ]
    )  # [N, d]
    nbrs = torch.as_tensor(np.clip(data.neighbours[:, :k], 0, None))
    weights = torch.as_tensor(data.neighbour_weights[:, :k] * float(use_neighbours))
    degrees = torch.as_tensor(data.degrees, dtype=torch.float32)
    out = [
        model.item(
            content[i : i + batch],
            content[nbrs[i : i + batch]],
            weights[i : i + batch],
            degrees[i : i + batch],
        )
        for i in range(0, len(data.item_ids), batch)
    ]
    return torch.cat(out).numpy()


@torch.no_grad()
def encode_users(
    model: SageModel,
    item_vectors: FloatArray,
    histories: Sequence[tuple[IntArray, IntArray, TimeArray]],
    batch: int = 1024,
) -> FloatArray:
    """User vectors ``[U, D]`` from histories (item indices, actions, timestamps)."""
    out = []
    for i in range(0, len(histories), batch):
        arrays = pack_user_inputs(item_vectors, histories[i : i + batch], model.config.seq_len)
        out.append(model.user(*(torch.as_tensor(a) for a in arrays)))
    if not out:
        return np.zeros((0, model.config.out_dim), dtype=np.float32)
    return torch.cat(out).numpy()
