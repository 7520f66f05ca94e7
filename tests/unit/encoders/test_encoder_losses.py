"""Sampled softmax on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from encoders.losses import log_q_from_counts, sampled_softmax_loss
from encoders.model import SageModel
from tests.unit.encoders.conftest import model_config


def _loss(log_q=None, neg_ids=(7,), tau=1.0):  # type: ignore[no-untyped-def]
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0]] * len(neg_ids))
    return float(
        sampled_softmax_loss(
            q, pos, torch.tensor([3]), neg, torch.tensor(neg_ids), torch.tensor(tau), log_q
        )
    )


def test_plain_softmax() -> None:
    # logits: positive 1, negative 0
    assert _loss() == pytest.approx(-math.log(math.e / (math.e + 1)))


def test_temperature_scales_logits() -> None:
    assert _loss(tau=0.5) == pytest.approx(-math.log(math.e**2 / (math.e**2 + 1)))


def test_logq_correction_subtracts_log_sampling_probability() -> None:
    log_q = (torch.tensor([math.log(2.0)]), torch.tensor([math.log(0.5)]))
    # positive: 1 - log 2, negative: 0 - log 0.5 = log 2
    expected = -math.log((math.e / 2) / (math.e / 2 + 2))
    assert _loss(log_q=log_q) == pytest.approx(expected)


def test_negative_equal_to_the_positive_is_masked() -> None:
    assert _loss(neg_ids=(3,)) == pytest.approx(0.0, abs=1e-7)
    # one real negative left beside a masked duplicate: same as the plain case
    assert _loss(neg_ids=(3, 7)) == pytest.approx(_loss())


def test_log_q_from_counts() -> None:
    got = log_q_from_counts(torch.tensor([1.0, 3.0, 0.0]), draws=8)
    assert got[0].item() == pytest.approx(math.log(2.0))
    assert got[1].item() == pytest.approx(math.log(6.0))
    assert math.isfinite(got[2].item())


def test_temperature_floor() -> None:
    model = SageModel(model_config())
    with torch.no_grad():
        model.log_tau.fill_(math.log(1e-4))
    assert model.temperature(0).item() == pytest.approx(0.01)
