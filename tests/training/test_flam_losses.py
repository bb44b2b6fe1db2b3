"""FLAM's losses (1)-(5) and online sampling on fixed inputs, each worked out by hand."""

import math

import pytest
import torch

from clip_cir.training.flam_losses import (
    FLAM_MARGIN,
    FLAMLossWeights,
    cosine_distance,
    cycle_loss,
    discriminator_adversarial_loss,
    embedding_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    matching_target,
    online_negatives,
    random_negatives,
    triplet_loss,
)

SQRT_HALF = 1 / math.sqrt(2)


def test_cosine_distance_is_one_minus_cosine_whatever_the_norms():
    a = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    b = torch.tensor([[5.0, 5.0], [0.0, -1.0]])
    assert cosine_distance(a, b).tolist() == pytest.approx([1 - SQRT_HALF, 2.0])


def test_triplet_loss_with_cosine_distance_and_margin():
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positive = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    negative = torch.tensor([[0.0, 4.0], [3.0, 0.0]])
    # Row 0: dist(a, p) = 1 - 1/sqrt(2) = 0.2929, dist(a, n) = 1: max(0, 0.2929 - 1 + 0.8) = 0.0929.
    # Row 1: dist(a, p) = 1, dist(a, n) = 0: max(0, 1 - 0 + 0.8) = 1.8.
    expected = ((1 - SQRT_HALF) - 1 + 0.8 + (1 - 0 + 0.8)) / 2
    assert float(triplet_loss(anchor, positive, negative, margin=0.8)) == pytest.approx(expected)
    # With the default margin row 0 is satisfied: max(0, 0.2929 - 1 + 0.2) = 0.
    assert FLAM_MARGIN == 0.2
    assert float(triplet_loss(anchor[:1], positive[:1], negative[:1])) == 0.0


def test_embedding_loss_uses_dictionary_and_embeddings_as_anchors_and_ignores_missing_labels():
    dictionary = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # d0, d1
    # e0 = (0.6, 0.8) of class 0, e1 = (0, 1) of class 1, e2 unlabelled (would change every term).
    embeddings = torch.tensor([[3.0, 4.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, -1])
    margin = 0.3
    # cos(d0, e0) = 0.6, cos(d1, e0) = 0.8, cos(d0, e1) = 0, cos(d1, e1) = 1.
    # l(d_a, e+, e-): anchor d0 with e0 against e1: max(0, (1 - 0.6) - (1 - 0) + 0.3) = 0;
    #                 anchor d1 with e1 against e0: max(0, (1 - 1) - (1 - 0.8) + 0.3) = 0.1.
    first = (0.0 + 0.1) / 2
    # l(e_a, d+, d-): anchor e0 with d0 against d1: max(0, (1 - 0.6) - (1 - 0.8) + 0.3) = 0.5;
    #                 anchor e1 with d1 against d0: max(0, (1 - 1) - (1 - 0) + 0.3) = 0.
    second = (0.5 + 0.0) / 2
    assert float(embedding_loss(embeddings, labels, dictionary, margin)) == pytest.approx(first + second)


def test_embedding_loss_averages_over_every_valid_triplet():
    dictionary = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # d0, d1, d2
    embeddings = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # e0 of class 0 (far from d0), e1 of class 1
    labels = torch.tensor([0, 1])
    # First term, anchor d_{y_i}: (d0, e0, e1): (1 - 0) - (1 - 1) + 0.2 = 1.2;
    #                             (d1, e1, e0): (1 - 0) - (1 - 1) + 0.2 = 1.2.
    # Second term, anchor e_i: (e0, d0, d1): 1 - 0 + 0.2 = 1.2; (e0, d0, d2): (1 - 0) - (1 - 0) + 0.2 = 0.2;
    #                          (e1, d1, d0): 1 - 0 + 0.2 = 1.2; (e1, d1, d2): (1 - 0) - (1 - (-1)) + 0.2 = 0 (clamped).
    expected = (1.2 + 1.2) / 2 + (1.2 + 0.2 + 1.2 + 0.0) / 4
    assert float(embedding_loss(embeddings, labels, dictionary, 0.2)) == pytest.approx(expected)


def test_embedding_loss_without_labels_is_zero_and_differentiable():
    embeddings = torch.randn(3, 4, requires_grad=True)
    loss = embedding_loss(embeddings, torch.tensor([-1, -1, -1]), torch.randn(2, 4))
    loss.backward()
    assert loss.item() == 0.0 and embeddings.grad is not None


def test_adversarial_losses_are_the_gan_objective_on_logits():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([-1.0])

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    # D: -(mean log D(x) + mean log(1 - D(x~))).
    expected_d = -(math.log(sigmoid(0.0)) + math.log(sigmoid(2.0))) / 2 - math.log(1 - sigmoid(-1.0))
    assert float(discriminator_adversarial_loss(real, fake)) == pytest.approx(expected_d)
    # G, non-saturating: -log D(x~).
    assert float(generator_adversarial_loss(fake)) == pytest.approx(-math.log(sigmoid(-1.0)))


def test_feature_matching_target_puts_the_manipulated_attribute_first_then_the_others_in_order():
    e = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[5.0, 6.0]])]  # φ_0(x), φ_1(x), φ_2(x)
    wanted = torch.tensor([[7.0, 8.0]])  # φ_1(x-)
    # Manipulating attribute 1: [φ_1(x-), φ_0(x), φ_2(x)] (fake); [φ_1(x), φ_0(x), φ_2(x)] (real).
    assert matching_target(e, 1, wanted).tolist() == [[7.0, 8.0, 1.0, 2.0, 5.0, 6.0]]
    assert matching_target(e, 1).tolist() == [[3.0, 4.0, 1.0, 2.0, 5.0, 6.0]]
    assert matching_target(e, 0, wanted).tolist() == [[7.0, 8.0, 3.0, 4.0, 5.0, 6.0]]
    # Without the remaining attributes (the paper's "S"): the manipulated one alone.
    assert matching_target(e, 1, wanted, include_remaining=False).tolist() == [[7.0, 8.0]]


def test_feature_matching_loss_is_the_mean_euclidean_distance():
    predicted = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert float(feature_matching_loss(predicted, target)) == pytest.approx((5.0 + 1.0) / 2)


def test_cycle_loss_goes_to_the_wanted_value_and_back_to_the_own_one():
    def manipulator(x, e):  # a stand-in G that adds the embedding
        return x + e

    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    wanted = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    own = torch.tensor([[1.0, 1.0], [-1.0, 2.0]])
    # G(G(x, e-), e) = x + e- + e: row 0 (2, 2), distance to x ||(-1, -2)|| = sqrt(5);
    # row 1 (0, 3), distance ||(0, -3)|| = 3.
    assert float(cycle_loss(manipulator, x, wanted, own)) == pytest.approx((math.sqrt(5) + 3) / 2)


def test_loss_weights_default_to_one():
    assert FLAMLossWeights() == FLAMLossWeights(adversarial=1.0, matching=1.0, cycle=1.0)


def test_online_sampling_picks_the_closest_image_of_another_class_in_the_remaining_attributes():
    classes = torch.tensor([0, 0, 1, 1, -1])
    # One remaining attribute's embeddings, at 0, 90, 80, 10 and 0 degrees.
    remaining = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.17, 0.98], [0.98, 0.17], [1.0, 0.0]])]
    # Row 0 (class 0): rows 2 (80 deg) and 3 (10 deg) are of class 1 -> 3. Row 1 (90 deg) -> 2.
    # Row 2 (class 1): rows 0 (80 deg away) and 1 (10 deg) -> 1. Row 3 -> 0. Row 4 has no class -> -1.
    assert online_negatives(remaining, classes).tolist() == [3, 2, 1, 0, -1]
    # Two remaining attributes: the distances add up. The second one pulls row 0 towards row 2.
    second = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    assert online_negatives(remaining + [second], classes).tolist()[0] == 2
    # A batch of one class has no pairs.
    assert online_negatives(remaining, torch.tensor([1, 1, 1, 1, 1])).tolist() == [-1] * 5


def test_random_negatives_are_of_another_known_class():
    classes = torch.tensor([0, 1, 1, 2, -1, 0])
    for seed in range(5):
        picked = random_negatives(classes, torch.Generator().manual_seed(seed))
        assert picked[4] == -1
        for row in (0, 1, 2, 3, 5):
            assert classes[picked[row]] >= 0 and classes[picked[row]] != classes[row]
