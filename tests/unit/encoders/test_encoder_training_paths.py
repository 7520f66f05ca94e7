"""The trainer's fast paths compute what the exported (padded, full-length) graphs compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.batches import BatchMaker
from encoders.contract import NUM_TOKEN_KINDS
from encoders.data import TrainingData
from encoders.evaluate import leave_one_out
from encoders.features import ContentFeaturizer
from encoders.model import SageModel
from encoders.train import Trainer, model_test_metrics, token_bags
from encoders.workflow import evaluate_vectors
from streams.wire.events import CatalogItem
from tests.unit.encoders.conftest import FEATURIZER, model_config, train_config


def _eval_model() -> SageModel:
    torch.manual_seed(0)
    return SageModel(model_config()).eval()


def test_featuriser_puts_a_stable_id_token_first_in_its_own_range() -> None:
    featurizer = ContentFeaturizer(FEATURIZER)
    a = featurizer.featurise(CatalogItem("i1", "Toy Story", categories=("animation",)))[0]
    again = featurizer.featurise(CatalogItem("i1", "Other title"))[0]
    other = featurizer.featurise(CatalogItem("i2", "Toy Story", categories=("animation",)))[0]
    id_range = 1 + NUM_TOKEN_KINDS * FEATURIZER.buckets_per_kind
    assert id_range <= a[0] < FEATURIZER.table_size == model_config().table_size
    assert a[0] == again[0] and (a[1:] == other[1:]).all()
    assert (a[1:][a[1:] > 0] < id_range).all()


def test_bag_path_equals_the_padded_path(planted: TrainingData) -> None:
    model = _eval_model()
    ids = torch.as_tensor(planted.token_ids[:40])
    dense = torch.as_tensor(planted.dense[:40])
    tokens, sizes = token_bags(model, planted.token_ids[:40])
    assert sizes.shape == (40, model.config.token_kinds)
    assert (sizes.sum(1) == (ids > 0).sum(1)).all()
    bags = model.content.from_bags(tokens[tokens > 0], sizes, dense)
    torch.testing.assert_close(bags, model.content(ids, dense), rtol=1e-5, atol=1e-5)


def test_content_without_ids_is_what_a_new_item_encodes(planted: TrainingData) -> None:
    trainer = Trainer(planted, model_config(), train_config())
    trainer.model.eval()
    rows = torch.arange(12)
    ids = torch.as_tensor(planted.token_ids[:12])
    id_range = 1 + NUM_TOKEN_KINDS * FEATURIZER.buckets_per_kind
    expected = trainer.model.content(torch.where(ids >= id_range, 0, ids), trainer.dense[rows])
    got = trainer._content(rows, new_from=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trainer._content(rows), got)  # the id does matter
    both = trainer._content(torch.cat([rows, rows]), new_from=len(rows))
    torch.testing.assert_close(both[len(rows) :], got, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[: len(rows)], trainer._content(rows), rtol=1e-5, atol=1e-5)


def test_a_short_batch_encodes_as_its_full_length_padding_would() -> None:
    model, cfg = _eval_model(), model_config()
    b, m = 4, 5
    vecs = torch.randn(b, cfg.seq_len, cfg.out_dim)
    actions = torch.randint(1, 4, (b, cfg.seq_len))
    times = torch.randn(b, cfg.seq_len, 5)
    vecs[:, m:], actions[:, m:], times[:, m:] = 0.0, 0, 0.0
    full = model.user.hidden(vecs, actions, times)[:, :m]
    short = model.user.hidden(vecs[:, :m], actions[:, :m], times[:, :m])
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)


def test_batches_are_as_wide_as_their_longest_window(planted: TrainingData) -> None:
    maker = BatchMaker(planted, model_config(), 4, 86400.0, seed=0)
    widths, windows = [], 0
    for batch in maker.epoch(16):
        valid = batch.inputs >= 0
        assert valid[:, -1].any() and (valid[:, :-1] >= valid[:, 1:]).all()  # left-aligned
        widths.append(batch.inputs.shape[1])
        windows += len(batch.inputs)
    assert windows == len(maker.windows)
    assert max(widths) <= model_config().seq_len and min(widths) < max(widths)


def test_shifted_windows_keep_the_latest_and_cut_the_rest_anew(planted: TrainingData) -> None:
    maker = BatchMaker(planted, model_config(), 4, 86400.0, seed=0, shifted_windows=True)
    m = model_config().seq_len
    first, second = maker.epoch_windows(), maker.epoch_windows()
    assert first != second  # a new cut every epoch
    for windows in (first, second):
        ends: dict[int, list[int]] = {}
        starts: dict[int, list[int]] = {}
        for u, start, end in windows:
            assert 0 <= start < end - 1 and end - start <= m + 1
            ends.setdefault(u, []).append(end)
            starts.setdefault(u, []).append(start)
        # every prefix keeps its most recent window, and its windows reach back to its start
        assert {u: max(e) for u, e in ends.items()} == dict(enumerate(maker.lengths))
        assert all(min(s) == 0 for s in starts.values())
    assert sum(len(b.inputs) for b in maker.epoch(16, windows=first)) == len(first)


def test_fit_serves_the_best_epoch_and_stops_on_patience(
    planted: TrainingData, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.5])
    seen: list[dict[str, torch.Tensor]] = []
    trainer = Trainer(planted, model_config(), train_config(epochs=6, patience=3))

    def scripted() -> float:
        seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(trainer, "validate", scripted)
    result = trainer.fit()
    assert [row["epoch"] for row in result.history] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert result.best_epoch == 2
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(value, seen[1][key], rtol=0, atol=0)


def test_the_moving_average_is_of_the_steps_taken_not_the_initial_weights(
    planted: TrainingData,
) -> None:
    """Debiased: after one step the average is that step's weights, whatever the decay, so a
    short run serves a trained model rather than one stuck near its initialisation."""
    trainer = Trainer(planted, model_config(), train_config(ema_decay=0.999))
    initial = [p.detach().clone() for p in trainer.params]
    trainer.step(next(trainer.batches.epoch(trainer.cfg.batch_size)))
    stepped = [p.detach().clone() for p in trainer.params]
    raw = trainer._swap_in_average()
    assert raw is not None
    for param, after in zip(trainer.params, stepped, strict=True):
        torch.testing.assert_close(param.detach(), after)
    assert any(not torch.equal(a, b) for a, b in zip(stepped, initial, strict=True))


def test_sampled_softmax_path_learns_too(planted: TrainingData) -> None:
    """Catalogues above ``full_softmax_items`` train on sampled negatives; it must still learn."""
    cfg = train_config(full_softmax_items=0)
    trainer = Trainer(planted, model_config(), cfg)
    assert not trainer.full_softmax
    result = trainer.fit()
    metrics = model_test_metrics(result.model, planted, True, seed=0)
    cases = len(leave_one_out(planted.sequences, "test"))
    dummy = np.ones((1, 1), np.float32)
    base = evaluate_vectors(
        planted, dummy.repeat(len(planted.item_ids), 0), dummy.repeat(cases, 0), 0
    )
    popularity = base["baselines"]["popularity"]["full"]["ndcg@10"]
    assert metrics["full"]["ndcg@10"] > popularity
