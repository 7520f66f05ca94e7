"""Shapes, masking and determinism of the torch models and the trainer."""

from __future__ import annotations

import numpy as np
import torch

from encoders.data import TrainingData, pack_user_histories
from encoders.evaluate import leave_one_out
from encoders.model import SageModel
from encoders.train import Trainer, TrainResult, model_test_metrics
from encoders.workflow import evaluate_vectors
from tests.unit.encoders.conftest import model_config, train_config


def _model() -> SageModel:
    torch.manual_seed(0)
    return SageModel(model_config()).eval()


def test_item_encoder_shapes_and_cold_start() -> None:
    model, cfg = _model(), model_config()
    content = model.content(torch.randint(1, cfg.table_size, (3, 8)), torch.zeros(3, 1))
    assert content.shape == (3, cfg.d_model)
    nbrs = torch.randn(3, cfg.neighbours, cfg.d_model)
    weights = torch.rand(3, cfg.neighbours) + 0.1
    weights[0] = 0.0  # a new item: no neighbours at all
    out = model.item(content, nbrs, weights, torch.tensor([0.0, 1.0, 9.0]))
    assert out.shape == (3, cfg.out_dim)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    # an absent neighbour's content must not matter
    nbrs2 = nbrs.clone()
    nbrs2[0] = 123.0
    again = model.item(content, nbrs2, weights, torch.tensor([0.0, 1.0, 9.0]))
    torch.testing.assert_close(again[0], out[0])


def test_user_encoder_reads_last_real_position_only() -> None:
    model, cfg = _model(), model_config()
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5, cfg.out_dim)).astype(np.float32)
    hist = [
        (vecs[:1], np.array([1]), np.array([100.0])),
        (vecs, np.ones(5, np.int64), np.arange(5.0)),
    ]
    arrays = [torch.as_tensor(a) for a in pack_user_histories(hist, cfg.seq_len, cfg.out_dim)]
    assert arrays[0].shape == (2, cfg.seq_len, cfg.out_dim)
    assert arrays[3].tolist() == [1, 5]
    out = model.user(*arrays)
    assert out.shape == (2, cfg.out_dim) and torch.isfinite(out).all()
    arrays[0][:, 5:] = 7.0  # garbage in the padding: causal mask + gather ignore it
    torch.testing.assert_close(model.user(*arrays), out)


def test_same_seed_gives_same_weights(planted: TrainingData) -> None:
    cfg = train_config(epochs=1)
    a = Trainer(planted, model_config(), cfg).fit().model.state_dict()
    b = Trainer(planted, model_config(), cfg).fit().model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_training_beats_popularity(planted: TrainingData, trained: TrainResult) -> None:
    model_metrics = model_test_metrics(trained.model, planted, True, seed=0)
    cases = leave_one_out(planted.sequences, "test")
    dummy = np.ones((1, 1), np.float32)
    base = evaluate_vectors(
        planted, dummy.repeat(len(planted.item_ids), 0), dummy.repeat(len(cases), 0), 0
    )
    pop = base["baselines"]["popularity"]
    assert model_metrics["full"]["ndcg@10"] > pop["full"]["ndcg@10"]
    assert model_metrics["sampled100"]["hr@10"] > pop["sampled100"]["hr@10"]
    assert len(trained.history) == 8 and trained.history[-1]["user"] < trained.history[0]["user"]
