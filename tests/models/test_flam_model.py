"""FLAM's networks: dictionary vectors as class centroids, queries built from them, the
discriminator's two branches, and the working space CLIP features are moved into and back."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.models.flam import FLAM, FLAM_EMBEDDING_DIM, ManipulationDiscriminator, class_centroids


def test_class_centroids_are_normalised_means_of_normalised_embeddings_and_skip_missing_labels():
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 5.0], [3.0, 4.0], [0.0, 2.0], [-9.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, -1])
    centroids, present = class_centroids(embeddings, labels, 3)
    # Class 0: (1, 0) + (0, 1) = (1, 1) -> (0.7071, 0.7071).
    # Class 1: (0.6, 0.8) + (0, 1) = (0.6, 1.8) -> (0.6, 1.8) / sqrt(3.6).
    # Class 2: nobody; the unlabelled (-9, 1) counts nowhere.
    assert centroids[0].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert centroids[1].tolist() == pytest.approx([0.6 / math.sqrt(3.6), 1.8 / math.sqrt(3.6)])
    assert centroids[2].tolist() == [0.0, 0.0]
    assert present.tolist() == [True, True, False]


def _identity_embedders(model: FLAM) -> None:
    """φ_a(x) = x for every attribute (feature and embedding dimensions equal)."""
    with torch.no_grad():
        for embedder in model.embedders:
            embedder.net[0].weight.copy_(torch.eye(2))
            embedder.net[0].bias.zero_()


def test_dictionary_vectors_become_class_centroids_and_a_value_without_images_keeps_its_vector():
    model = FLAM(2, [3, 2], embedding_dim=2, embedder_hidden=0, manipulator_hidden=4, discriminator_hidden=4)
    _identity_embedders(model)
    kept = model.embedders[0].dictionary[2].clone()
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    labels = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    model.set_dictionary_to_centroids(features, labels)
    vectors = model.embedders[0].dictionary_vectors()
    assert vectors[0].tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])  # rows 0 and 1
    assert vectors[1].tolist() == pytest.approx([0.6, 0.8])  # row 2
    assert torch.equal(model.embedders[0].dictionary[2], kept)  # no image of value 2
    # Attribute 1: value 0 from rows 2 and 3, value 1 from row 0 (row 1 is unlabelled).
    second = model.embedders[1].dictionary_vectors()
    assert second[0].tolist() == pytest.approx((F.normalize(torch.tensor([1.6, 0.8]), dim=0)).tolist())
    assert second[1].tolist() == pytest.approx([1.0, 0.0])


class _Recorder(nn.Module):
    def forward(self, features, embedding):
        self.seen = embedding.clone()
        return features


def test_a_query_is_manipulated_with_its_values_dictionary_vector():
    model = FLAM(2, [3, 2], embedding_dim=2, embedder_hidden=0, manipulator_hidden=4, discriminator_hidden=4)
    with torch.no_grad():
        model.embedders[0].dictionary.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))
    model.manipulators[0] = _Recorder()
    model.manipulate(torch.zeros(3, 2), 0, torch.tensor([1, 2, 0]))
    half = 1 / math.sqrt(2)
    assert torch.allclose(model.manipulators[0].seen, torch.tensor([[0.0, 1.0], [half, half], [1.0, 0.0]]))
    model.manipulate(torch.zeros(2, 2), 0, 1)
    assert torch.allclose(model.manipulators[0].seen, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_queries_of_different_attributes_go_through_their_own_manipulator():
    model = FLAM(2, [2, 2], embedding_dim=2, manipulator_hidden=4, discriminator_hidden=4)
    model.fit_feature_space(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    model.manipulators[0], model.manipulators[1] = _Recorder(), _Recorder()
    features = torch.tensor([[1.0, 0.2], [0.3, 1.0], [1.0, 1.0]])
    out = model.manipulate_queries(features, torch.tensor([1, 0, 1]), torch.tensor([0, 1, 1]))
    dictionary_1 = model.embedders[1].dictionary_vectors()
    assert torch.allclose(model.manipulators[1].seen, dictionary_1[[0, 1]])
    assert torch.allclose(model.manipulators[0].seen, model.embedders[0].dictionary_vectors()[[1]])
    # The stand-in leaves features unchanged: the way back gives the normalised input.
    assert torch.allclose(out, F.normalize(features, dim=-1), atol=1e-6)


def test_working_space_is_centred_and_scaled_and_maps_back_to_normalised_features():
    model = FLAM(2, [2], embedding_dim=2, manipulator_hidden=4, discriminator_hidden=4)
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: (1, 0), (0, 1)
    model.fit_feature_space(features)
    # Center (0.5, 0.5); the centred features (0.5, -0.5) and (-0.5, 0.5) have norm 0.7071.
    assert model.center.tolist() == [0.5, 0.5]
    assert float(model.scale) == pytest.approx(1 / math.sqrt(2))
    working = model.to_working_space(features)
    # Working space: centred, over the scale: (0.5, -0.5) / 0.7071 and (-0.5, 0.5) / 0.7071.
    half = 1 / math.sqrt(2)
    assert torch.allclose(working, torch.tensor([[half, -half], [-half, half]]))
    assert torch.allclose(model.from_working_space(working), F.normalize(features, dim=-1), atol=1e-6)


def test_the_discriminator_splits_into_a_logit_and_a_matching_branch_of_every_attributes_embedding():
    model = FLAM(16, [3, 2, 4])
    assert model.options["embedding_dim"] == FLAM_EMBEDDING_DIM == 32
    logits, matching = model.discriminators[1](torch.randn(5, 16))
    assert logits.shape == (5,) and matching.shape == (5, 3 * 32)
    single = FLAM(16, [3, 2, 4], match_remaining=False)
    assert single.discriminators[0](torch.randn(5, 16))[1].shape == (5, 32)
    # One trunk feeds both branches.
    discriminator = ManipulationDiscriminator(8, 6, hidden_dim=10)
    logits, _ = discriminator(torch.randn(4, 8))
    logits.sum().backward()
    assert discriminator.trunk[0][0].weight.grad is not None and discriminator.matching.weight.grad is None


def test_options_rebuild_the_network():
    model = FLAM(16, [3, 2], embedding_dim=8, manipulator_hidden=12, residual=True)
    rebuilt = FLAM(**model.options)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 16)
    assert torch.equal(rebuilt.manipulate(x, 1, 0), model.manipulate(x, 1, 0))
