"""Training FLAM on frozen features: fixed-seed determinism, bad input, and that it learns: on the
synthetic attribute catalogue with a random-init tiny CLIP's features, manipulated queries find
their targets more often than the reference image alone does."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clip_cir.data.attributes import read_csv_catalogue, read_csv_queries
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.errors import CIRError
from clip_cir.evaluation.attribute_metrics import attribute_manipulation_metrics
from clip_cir.training.flam import flam_query_features, train_flam

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
    # Measured: 0.57 against 0.32 for the reference alone (262 queries, 64 gallery images).
    assert flam["top5_accuracy"] >= reference["top5_accuracy"] + 0.1, (flam, reference)
    assert flam["ndcg_target_at5"] > reference["ndcg_target_at5"]
    assert np.isfinite(list(flam.values())).all()
