"""Training FLAM on frozen features: fixed-seed determinism, bad input, and that it learns: on the
synthetic attribute catalogue with a random-init tiny CLIP's features, manipulated queries find
their targets more often than the reference image alone does."""

import math

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clip_cir.data.attributes import read_csv_catalogue, read_csv_queries
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.errors import CIRError
from clip_cir.evaluation.attribute_metrics import attribute_manipulation_metrics
from clip_cir.models.flam import FLAM, class_centroids
from clip_cir.training.flam import (
    discriminator_loss,
    flam_query_features,
    generator_losses,
    manipulation_classes,
    pair_negatives,
    train_flam,
)
from clip_cir.training.flam_losses import FLAMLossWeights

SMALL = dict(embedding_epochs=2, manipulation_epochs=2, batch_size=8, embedder_hidden=8, manipulator_hidden=8,
             discriminator_hidden=8, embedding_dim=4)


def _toy(n=24, dim=6):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(n, dim, generator=generator)
    labels = torch.stack([torch.arange(n) % 3, (torch.arange(n) // 3) % 2], dim=1)
    labels[::5, 1] = -1
    return features, labels


def test_the_same_seed_gives_the_same_weights_and_the_callers_rng_is_untouched():
    features, labels = _toy()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_flam(features, labels, (3, 2), seed=4, **SMALL)
    assert torch.equal(torch.rand(1), before)
    second = train_flam(features, labels.numpy(), (3, 2), seed=4, **SMALL)
    other = train_flam(features, labels, (3, 2), seed=5, **SMALL)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), name
    assert any(not torch.equal(w, other.state_dict()[n]) for n, w in first.state_dict().items())
    assert not first.training


def test_dictionary_vectors_end_as_the_trained_embedders_class_centroids():
    features, labels = _toy()
    model = train_flam(features, labels, (3, 2), **SMALL)
    with torch.no_grad():
        embeddings = model.embed(model.to_working_space(features))
        for a, count in enumerate((3, 2)):
            centroids, present = class_centroids(embeddings[a], labels[:, a], count)
            assert present.all()
            assert torch.allclose(model.embedders[a].dictionary_vectors(), centroids, atol=1e-6)


class _AddEmbedding(torch.nn.Module):
    """A stand-in G: x + e."""

    def forward(self, features, embedding):
        return features + embedding


class _ReadFeatures(torch.nn.Module):
    """A stand-in D: the first coordinate as the logit, the features themselves as f(x)."""

    def forward(self, features):
        return features[:, 0], features


def test_generator_and_discriminator_terms_by_hand():
    # Two attributes with k = 1, features of dimension 2 = A * k; manipulating attribute 0.
    x = torch.tensor([[1.0, 2.0]])
    embeddings = [torch.tensor([[0.5]]), torch.tensor([[3.0]])]  # φ_0(x), φ_1(x)
    wanted = torch.tensor([[-1.0]])  # φ_0(x-)
    G, D = _AddEmbedding(), _ReadFeatures()
    fake = G(x, wanted)  # (0, 1)
    terms = generator_losses(G, D, x, fake, wanted, embeddings, 0, match_remaining=True)
    assert float(terms["adversarial"]) == pytest.approx(math.log(2))  # -log sigmoid(0)
    # f(x~) = (0, 1) against [φ_0(x-), φ_1(x)] = (-1, 3): ||(1, -2)|| = sqrt(5).
    assert float(terms["matching"]) == pytest.approx(math.sqrt(5))
    # Back with φ_0(x): x + e- + e = (0.5, 1.5); ||x - (0.5, 1.5)|| = ||(0.5, 0.5)||.
    assert float(terms["cycle"]) == pytest.approx(math.sqrt(0.5))
    # D: -log sigmoid(1) on the real logit, -log(1 - sigmoid(0)) on the fake one, and the real
    # matching term: f(x) = (1, 2) against [φ_0(x), φ_1(x)] = (0.5, 3): ||(0.5, -1)|| = sqrt(1.25),
    # weighted by 2.
    loss = discriminator_loss(D, x, fake, embeddings, 0, FLAMLossWeights(matching=2.0), match_remaining=True)
    expected = math.log(1 + math.exp(-1)) + math.log(2) + 2 * math.sqrt(1.25)
    assert float(loss) == pytest.approx(expected)


def test_pairs_are_sampled_in_the_other_attributes_embeddings():
    # Manipulating attribute 0: row 0 (class 0) may pair with rows 1 and 2 (class 1).
    attribute_0 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    attribute_1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    classes = torch.tensor([0, 1, 1])
    # In attribute 1's space row 2 is the closest (attribute 0's own embedding does not count).
    negatives = pair_negatives([attribute_0, attribute_1], classes, 0, True, torch.Generator())
    assert negatives.tolist()[0] == 2
    picked = pair_negatives([attribute_0, attribute_1], classes, 0, False, torch.Generator().manual_seed(0))
    assert picked.tolist()[0] in (1, 2) and picked.tolist()[1:] == [0, 0]


def test_an_unlabelled_image_takes_the_class_of_the_nearest_dictionary_vector():
    model = FLAM(2, [2], embedding_dim=2, embedder_hidden=0, manipulator_hidden=4, discriminator_hidden=4)
    with torch.no_grad():
        model.embedders[0].net[0].weight.copy_(torch.eye(2))
        model.embedders[0].net[0].bias.zero_()
        model.embedders[0].dictionary.copy_(torch.eye(2))
    features = torch.tensor([[1.0, 0.1], [0.1, 1.0], [0.9, 0.2]])
    labels = torch.tensor([[1], [-1], [-1]])
    # Row 0 keeps its label (although nearer d_0); rows 1 and 2 are nearest d_1 and d_0.
    assert manipulation_classes(model, model.embed(features), labels, 0).tolist() == [1, 1, 0]


def test_bad_labels_are_one_line_errors():
    features, labels = _toy()
    with pytest.raises(CIRError, match=r"labels \[N, 3\], got \[24, 6\] and \[24, 2\]"):
        train_flam(features, labels, (3, 2, 2), **SMALL)
    with pytest.raises(CIRError, match=r"a label is out of range for the value counts \[2, 2\]"):
        train_flam(features, labels, (2, 2), **SMALL)


def test_query_features_are_the_references_manipulated_by_their_own_attribute_and_value():
    from clip_cir.data.attributes import AttributeQuery

    features, labels = _toy()
    model = train_flam(features, labels, (3, 2), **SMALL)
    queries = [AttributeQuery(4, 0, 2, (2, 1)), AttributeQuery(7, 1, 0, (1, 0))]
    out = flam_query_features(model, features, queries)
    working = model.to_working_space(features)
    with torch.no_grad():
        assert torch.allclose(out[0], model.from_working_space(model.manipulate(working[[4]], 0, 2))[0], atol=1e-6)
        assert torch.allclose(out[1], model.from_working_space(model.manipulate(working[[7]], 1, 0))[0], atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))


def test_flam_beats_the_reference_image_alone_on_the_synthetic_catalogue(tmp_path, make_tiny_clip):
    files = write_attribute_catalogue(tmp_path, seed=0, size=32, n=256, n_test=64)
    train = read_csv_catalogue(files.train_csv)
    test = read_csv_catalogue(files.test_csv, values_of=train)
    queries = read_csv_queries(files.queries_csv, test)
    clip = make_tiny_clip("cir-tiny-vit", 0)
    preprocess = open_clip.image_transform(clip.visual.image_size, is_train=False)

    def encode(catalogue):
        with torch.no_grad():
            return clip.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in catalogue.paths]))

    train_features, test_features = encode(train), encode(test)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the networks are small: one thread is several times faster on 2 cores
    try:
        model = train_flam(train_features, train.labels, train.value_counts, seed=0, embedding_epochs=50,
                           manipulation_epochs=50, embedder_hidden=128, manipulator_hidden=128,
                           discriminator_hidden=128, gan_learning_rate=1e-3)
    finally:
        torch.set_num_threads(threads)
    k = 5
    reference = attribute_manipulation_metrics(test_features[[q.reference for q in queries]], test_features, test,
                                               queries, k)
    flam = attribute_manipulation_metrics(flam_query_features(model, test_features, queries), test_features, test,
                                          queries, k)
    assert flam["top5_accuracy"] >= reference["top5_accuracy"] + 0.1, (flam, reference)
    assert flam["ndcg_target_at5"] > reference["ndcg_target_at5"]
    assert np.isfinite(list(flam.values())).all()
