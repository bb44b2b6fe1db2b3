"""The method's formulas, each against numbers written out by hand (docs/method.md: the normalised sum,
stage 1's loss at scale 100, the Combiner).

Every other test reaches these formulas through rankings, training or the demo, where a
missing normalisation or a wrong scale can hide; these fail on the formula alone.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from clip_cir.models.combiner import element_wise_sum
from clip_cir.training.losses import METHOD_LOGIT_SCALE, batch_contrastive_loss
from clip_cir.training.stage1 import query_and_target

IMAGE = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
TEXT = torch.tensor([[1.0, 3.0], [2.0, -1.0], [0.0, 1.0]])


def test_element_wise_sum_is_the_normalised_sum():
    # (3,0)+(1,3) = (4,3) -> (0.8, 0.6); (1,1)+(2,-1) = (3,0) -> (1, 0); (0,2)+(0,1) = (0,3) -> (0, 1)
    expected = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    out = element_wise_sum(IMAGE, TEXT)
    assert torch.allclose(out, expected, atol=1e-7)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3))


def test_loss_is_cross_entropy_at_scale_100_query_to_target():
    queries = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    targets = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # logits = 100 * q @ t.T = [[60, 0], [100, 80]]; labels (0, 1)
    row0 = -60 + math.log(math.exp(60) + math.exp(0))
    row1 = -80 + math.log(math.exp(100) + math.exp(80))
    expected = (row0 + row1) / 2
    assert METHOD_LOGIT_SCALE == 100.0
    loss = batch_contrastive_loss(queries, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(loss, F.cross_entropy(100 * queries @ targets.T, torch.arange(2)))
    # One direction only: target -> query would give 20 here, not 10.
    assert F.cross_entropy(100 * targets @ queries.T, torch.arange(2)).item() == pytest.approx(20, rel=1e-6)
    # The scale matters: at scale 1 the same inputs give a different loss.
    at_one = (-0.6 + math.log(math.exp(0.6) + 1) - 0.8 + math.log(math.exp(1.0) + math.exp(0.8))) / 2
    assert batch_contrastive_loss(queries, targets, scale=1.0).item() == pytest.approx(at_one, rel=1e-6)
    assert abs(at_one - expected) > 0.1


def test_stage1_query_and_target_are_unit_rows():
    target = torch.tensor([[3.0, 4.0], [0.0, 2.0], [5.0, 0.0]])
    query, key = query_and_target(IMAGE, TEXT, target)
    assert torch.allclose(query, torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]]), atol=1e-7)
    # Each target row normalised on its own (not over the batch dimension).
    assert torch.allclose(key, torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]), atol=1e-7)
    assert torch.allclose(query.norm(dim=-1), torch.ones(3)) and torch.allclose(key.norm(dim=-1), torch.ones(3))


def test_loss_on_rank_1_of_2_labels_its_queries_by_their_place_among_all_targets(monkeypatch):
    """Under DDP the targets of every rank are gathered in rank order, so rank 1's query i is
    positive with row B + i, not row i. Rank 0's targets here are rank 1's in the other order:
    q0 = (1, 0) scores [0, 100 | 100, 0] with label 2 -> log 2; q1 likewise; labels 0, 1 would
    pick a zero logit and give 100 + log 2."""
    from clip_cir.training import losses

    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rank0_targets = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    monkeypatch.setattr(losses, "_distributed", lambda: True)
    monkeypatch.setattr(losses, "gather_with_grad", lambda targets: torch.cat([rank0_targets, targets]))
    monkeypatch.setattr(losses.dist, "get_rank", lambda: 1)
    loss = batch_contrastive_loss(queries, queries.clone())
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
