"""TIRG's losses (soft triplet, batch classification, the learned feature scale) and LBF's sum of
the two, against numbers written out by hand and against TIRG's triplet enumeration in plain Python."""

import math

import pytest
import torch

from clip_cir.errors import CIRError
from clip_cir.training import losses
from clip_cir.training.losses import (
    TIRG_INITIAL_SCALE,
    LearnedScale,
    batch_classification_loss,
    lbf_loss,
    soft_triplet_loss,
)


def squared_distance(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b))


def tirg_triplets_by_hand(queries, targets, anchor_rows=None):
    """TIRG's compute_soft_triplet_loss_ with every triplet instead of 3 drawn per anchor: members are
    the queries then the targets, labelled by pair; (i, j, k) with j != i of i's label and k of another;
    the mean of log(1 + exp(d_ij - d_ik)). `anchor_rows`: the pair indices whose members are anchors."""
    members = [list(map(float, row)) for row in queries] + [list(map(float, row)) for row in targets]
    labels = list(range(len(queries))) + list(range(len(targets)))
    total, count = 0.0, 0
    for i in range(len(members)):
        if anchor_rows is not None and labels[i] not in anchor_rows:
            continue
        for j in range(len(members)):
            if labels[j] != labels[i] or j == i:
                continue
            for k in range(len(members)):
                if labels[k] != labels[i]:
                    gap = squared_distance(members[i], members[j]) - squared_distance(members[i], members[k])
                    total += math.log(1 + math.exp(gap))
                    count += 1
    return total / count


def scaled_by_hand(rows, scale):
    return [[scale * x / math.sqrt(sum(v * v for v in row)) for x in row] for row in rows]


def classification_by_hand(queries, targets, offset=0):
    """Query i's positive is target offset + i."""
    total = 0.0
    for i, query in enumerate(queries):
        logits = [sum(a * b for a, b in zip(query, target)) for target in targets]
        total += -logits[offset + i] + math.log(sum(math.exp(z) for z in logits))
    return total / len(queries)


QUERIES = [[1.0, 0.5, -0.5], [0.2, 1.0, 0.0], [-1.0, 0.3, 0.8]]
TARGETS = [[0.9, 0.1, -0.2], [0.0, 1.2, 0.4], [-0.5, -0.5, 1.0]]


def test_soft_triplet_loss_on_orthogonal_pairs_written_out():
    # Each anchor sits on its partner (d = 0) and at d = 2 from both members of the other pair:
    # every (anchor, negative) costs log(1 + exp(0 - 2)).
    unit = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert soft_triplet_loss(unit, unit.clone()).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # At TIRG's scale 4 the distances are 16 times larger.
    scale = LearnedScale()
    assert soft_triplet_loss(scale(unit), scale(unit)).item() == pytest.approx(math.log(1 + math.exp(-32)), rel=1e-5)


def test_soft_triplet_loss_is_the_mean_over_all_of_tirgs_triplets():
    loss = soft_triplet_loss(torch.tensor(QUERIES), torch.tensor(TARGETS))
    assert loss.item() == pytest.approx(tirg_triplets_by_hand(QUERIES, TARGETS), rel=1e-5)
    # Asymmetric on purpose: swapping queries and targets changes nothing (both are anchors) ...
    assert soft_triplet_loss(torch.tensor(TARGETS), torch.tensor(QUERIES)).item() == pytest.approx(loss.item())
    # ... but pairing query i with another target does.
    shuffled = torch.tensor(TARGETS)[[1, 2, 0]]
    assert abs(soft_triplet_loss(torch.tensor(QUERIES), shuffled).item() - loss.item()) > 0.05


def test_soft_triplet_loss_needs_a_negative():
    with pytest.raises(CIRError, match="the soft triplet loss needs at least 2 query-target pairs in a batch"):
        soft_triplet_loss(torch.ones(1, 3), torch.ones(1, 3))


def test_learned_scale_starts_at_tirgs_4_and_scales_unit_features():
    scale = LearnedScale()
    assert TIRG_INITIAL_SCALE == 4.0 and scale.scale.item() == 4.0 and scale.scale.requires_grad
    out = scale(torch.tensor([[3.0, 4.0], [0.0, -2.0]]))
    assert torch.allclose(out, torch.tensor([[2.4, 3.2], [0.0, -4.0]]))
    assert torch.allclose(LearnedScale(0.5)(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.3, 0.4]]))


def test_batch_classification_loss_is_cross_entropy_over_scaled_cosines():
    scale = LearnedScale()
    queries, targets = torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.6, 0.8], [0.0, 2.0]])
    # Scaled by 4 both sides: logits = 16 * cosine = [[9.6, 0], [16, 12.8]]; labels (0, 1).
    row0 = -9.6 + math.log(math.exp(9.6) + 1)
    row1 = -12.8 + math.log(math.exp(16) + math.exp(12.8))
    loss = batch_classification_loss(scale(queries), scale(targets))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_lbf_loss_sums_both_losses_on_features_scaled_by_the_learned_scale():
    scale = LearnedScale(2.5)
    loss = lbf_loss(torch.tensor(QUERIES), torch.tensor(TARGETS), scale)
    queries, targets = scaled_by_hand(QUERIES, 2.5), scaled_by_hand(TARGETS, 2.5)
    expected = tirg_triplets_by_hand(queries, targets) + classification_by_hand(queries, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert scale.scale.grad is not None and scale.scale.grad.abs().item() > 1e-4


def test_soft_triplet_loss_on_rank_1_of_2_anchors_its_own_pairs_among_every_ranks(monkeypatch):
    """Under DDP all ranks' queries and targets are members (gathered in rank order) and the
    anchors are this rank's own: the mean over ranks is then the single-process loss."""
    def gather(tensor):  # rank 0's rows: this rank's, reversed and shifted
        return torch.cat((tensor.flip(0) + 0.5, tensor))

    monkeypatch.setattr(losses, "_distributed", lambda: True)
    monkeypatch.setattr(losses, "gather_with_grad", gather)
    monkeypatch.setattr(losses.dist, "get_rank", lambda: 1)
    queries, targets = torch.tensor(QUERIES), torch.tensor(TARGETS)
    all_queries, all_targets = gather(queries).tolist(), gather(targets).tolist()
    expected = tirg_triplets_by_hand(all_queries, all_targets, anchor_rows={3, 4, 5})
    assert soft_triplet_loss(queries, targets).item() == pytest.approx(expected, rel=1e-5)
    rank0 = tirg_triplets_by_hand(all_queries, all_targets, anchor_rows={0, 1, 2})
    assert (expected + rank0) / 2 == pytest.approx(tirg_triplets_by_hand(all_queries, all_targets), rel=1e-9)
    # The classification half labels rank 1's query i with target B + i.
    by_hand = classification_by_hand(QUERIES, all_targets, offset=3)
    assert batch_classification_loss(queries, targets).item() == pytest.approx(by_hand, rel=1e-6)
