"""`clip-cir train-attributes` (FLAM on frozen CLIP features through the shared loop), evaluation of
an attribute catalogue from the command line and the Python API's `manipulate`: the program learns
on the synthetic catalogue (beats the reference image alone), eval's numbers are the metrics of the
API's vectors and the run's own validation, a resumed run ends with the uninterrupted run's
weights, and bad input is one line. FLAM's formulas are tested by hand in tests/training/test_flam*.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, command_line, ddp_launcher, read_weights

import clip_cir
from clip_cir.data.attribute_splits import read_attribute_splits
from clip_cir.data.synthetic.attributes import write_attribute_catalogue
from clip_cir.errors import CIRError
from clip_cir.evaluation.attribute_metrics import attribute_manipulation_metrics

K = 5
LEARNING = dict(epochs=100, embedding_epochs=50, embedder_hidden=128, manipulator_hidden=128,
                discriminator_hidden=128, gan_lr=1e-3, top_k=K, validation_frequency=25)
"""The FLAM unit test's settings (tests/training/test_flam_training.py), as a program's options."""
SMALL = dict(embedder_hidden=16, manipulator_hidden=16, discriminator_hidden=16, embedding_dim=8, batch_size=32,
             top_k=K, validation_frequency=1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """FLAM's networks are small: one thread is several times faster on 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_attribute_catalogue(tmp_path_factory.mktemp("attributes"), seed=0, size=32, n=256, n_test=64)


def _options(files, clip: Path, runs: Path, name: str, **extra) -> dict:
    return {"catalogue": files.image_root, "pretrained": clip, "output_dir": runs, "experiment_name": name,
            "num_workers": 0, "no_progress": True, "cache_dir": runs / "cache", "seed": 0, **extra}


@pytest.fixture(scope="module")
def flam_run(catalogue, tiny_checkpoint, tmp_path_factory) -> clip_cir.TrainedRun:
    runs = tmp_path_factory.mktemp("flam-runs")
    return clip_cir.train_attributes(**_options(catalogue, tiny_checkpoint, runs, "flam", **LEARNING))


def test_the_program_trains_flam_that_beats_the_reference_image_alone(flam_run, catalogue, tiny_checkpoint):
    meta = json.loads((flam_run.path / "best" / "flam.json").read_text())
    assert meta["attributes"] == ["colour", "shape", "size", "position"]
    assert meta["values"][0] == ["blue", "green", "red", "yellow"] and meta["clip_model_name"] == "openai-inferred"
    with open(flam_run.path / "validation_metrics.csv") as f:
        validation = list(csv.DictReader(f))
    # After epochs 25, 50, 75, 100; no selection score in the embedding epochs (NaN, written empty).
    assert [(row["epoch"], row["score"] == "") for row in validation] == [
        ("25", True), ("50", True), ("75", False), ("100", False)]
    model = clip_cir.load(tiny_checkpoint, combining="image", device="cpu", cache=False, progress=False)
    data = read_attribute_splits(catalogue.image_root)
    gallery = model.image_features(list(data.gallery.paths))
    alone = attribute_manipulation_metrics(gallery[[q.reference for q in data.queries]], gallery, data.gallery,
                                           data.queries, K)
    # The measured margin is in docs/attribute-manipulation.md (benchmarks/attributes.py).
    assert flam_run.best["score"] >= alone[f"top{K}_accuracy"] + 0.15, (flam_run.best, alone)
    assert meta["metrics"]["score"] == round(flam_run.best["score"], 6)


def _assert_dictionary_is_the_centroids(run: Path, catalogue) -> None:
    """Each dictionary vector of the saved FLAM is the normalised mean of its saved embedder's
    embeddings of the training images labelled with that value (the embedders held still after
    the centroids were made)."""
    model = clip_cir.load(attributes=run, device="cpu", cache=False, progress=False)
    flam = model.attributes.flam
    data = read_attribute_splits(catalogue.image_root)
    working = (F.normalize(model.image_features(list(data.train.paths)), dim=-1) - flam.center) / flam.scale
    labels = torch.from_numpy(data.train.labels.copy())
    with torch.no_grad():
        for a, embedder in enumerate(flam.embedders):
            embeddings = F.normalize(embedder.net(working), dim=-1)
            for value in range(len(data.train.values[a])):
                centroid = F.normalize(embeddings[labels[:, a] == value].sum(dim=0), dim=0)  # missing labels left out
                assert torch.allclose(F.normalize(embedder.dictionary[value], dim=0), centroid, atol=1e-4), (a, value)


def test_the_run_queries_with_class_centroids_and_trains_g_and_d_at_their_own_rate(flam_run, catalogue):
    _assert_dictionary_is_the_centroids(flam_run.path, catalogue)
    state = torch.load(flam_run.path / "last" / "training_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [(g["lr"], tuple(g["betas"])) for g in groups] == [(1e-3, (0.9, 0.999)), (1e-3, (0.5, 0.999))]
    assert state["epoch"] == 100


def test_eval_of_the_run_equals_the_metrics_of_the_apis_manipulate_vectors(flam_run, catalogue, cli, tmp_path):
    out = tmp_path / "eval.json"
    result = cli("eval", "--catalogue", catalogue.image_root, "--attributes", flam_run.path, "--top-k", K,
                 "--num-workers", 0, "--output", out, "--no-cache")
    assert result.code == 0, result.err
    printed = json.loads(out.read_text())

    model = clip_cir.load(attributes=flam_run.path, device="cpu", cache=False, progress=False)  # the run's CLIP
    data = read_attribute_splits(catalogue.image_root)
    gallery = model.image_features(list(data.gallery.paths))
    queries = torch.stack([model.manipulate(data.gallery.paths[q.reference], data.gallery.attributes[q.attribute],
                                            data.gallery.values[q.attribute][q.value]) for q in data.queries])
    expected = attribute_manipulation_metrics(queries, gallery, data.gallery, data.queries, K)
    assert printed == {key: round(value, 4) for key, value in expected.items()}
    assert expected[f"top{K}_accuracy"] == pytest.approx(flam_run.best["score"], abs=1e-9)  # the run's validation

    # rank: each query's top 3 by cosine similarity to the gallery, with the scores.
    out = tmp_path / "rank.json"
    result = cli("rank", "--catalogue", catalogue.image_root, "--attributes", flam_run.path, "--top-k", 3,
                 "--num-workers", 0, "--output", out, "--no-cache")
    assert result.code == 0, result.err
    ranked = json.loads(out.read_text())["queries"]
    similarity = queries @ F.normalize(gallery, dim=-1).T
    for row, q, scores in zip(ranked, data.queries, similarity):
        assert (row["reference"], row["attribute"]) == (data.gallery.images[q.reference],
                                                        data.gallery.attributes[q.attribute])
        assert [r["name"] for r in row["ranking"]] == [data.gallery.images[i] for i in scores.topk(3).indices]
        assert [r["score"] for r in row["ranking"]] == pytest.approx(scores.topk(3).values.tolist(), abs=1e-5)

    # One query by hand: G_a(working(x), d_{a,v}) moved back to CLIP's space and normalised.
    flam, q = model.attributes.flam, data.queries[0]
    x = gallery[q.reference:q.reference + 1]
    working = (F.normalize(x, dim=-1) - flam.center) / flam.scale
    d = F.normalize(flam.embedders[q.attribute].dictionary, dim=-1)[q.value:q.value + 1]
    with torch.no_grad():
        by_hand = F.normalize(flam.manipulators[q.attribute].net(torch.cat((working, d), dim=1)) * flam.scale
                              + flam.center, dim=-1)[0]
    assert torch.allclose(queries[0], by_hand, atol=1e-5) and queries[0].norm().item() == pytest.approx(1, abs=1e-5)


def test_without_flam_manipulate_composes_the_template_caption(tiny_checkpoint, catalogue, cli, tmp_path):
    model = clip_cir.load(tiny_checkpoint, device="cpu", cache=False, progress=False,
                          attribute_template="make the {attribute} {value}")
    image = catalogue.image_root / "images" / "test_0000.png"
    query = model.manipulate(image, "colour", "red")
    image_feature, text_feature = model.image_features(image)[0], model.text_features("make the colour red")[0]
    assert torch.allclose(query, F.normalize(image_feature + text_feature, dim=0), atol=1e-6)  # the sum, by hand

    out = tmp_path / "sum.json"
    result = cli("eval", "--catalogue", catalogue.image_root, "--pretrained", tiny_checkpoint, "--top-k", K,
                 "--num-workers", 0, "--output", out, "--no-cache", "--attribute-template",
                 "make the {attribute} {value}")
    assert result.code == 0, result.err
    data = read_attribute_splits(catalogue.image_root)
    gallery = model.image_features(list(data.gallery.paths))
    captions = [f"make the {data.gallery.attributes[q.attribute]} {data.gallery.values[q.attribute][q.value]}"
                for q in data.queries]
    queries = F.normalize(gallery[[q.reference for q in data.queries]] + model.text_features(captions), dim=-1)
    expected = attribute_manipulation_metrics(queries, gallery, data.gallery, data.queries, K)
    assert json.loads(out.read_text()) == {key: round(value, 4) for key, value in expected.items()}


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(catalogue, tiny_checkpoint, tmp_path):
    whole = clip_cir.train_attributes(**_options(catalogue, tiny_checkpoint, tmp_path, "whole", epochs=5,
                                                 embedding_epochs=2, **SMALL))
    # Stopped after epoch 3 (in the manipulation phase), then resumed to 5: the resumed process makes
    # the centroids and pseudo-labels again from the saved embedders.
    clip_cir.train_attributes(**_options(catalogue, tiny_checkpoint, tmp_path, "cut", epochs=3, embedding_epochs=2,
                                         **SMALL))
    resumed = clip_cir.train_attributes(resume=tmp_path / "cut", epochs=5)
    expected = read_weights(whole.path / "last" / "flam.safetensors")
    weights = read_weights(resumed.path / "last" / "flam.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name
    assert resumed.metrics == whole.metrics
    with open(whole.path / "validation_metrics.csv") as f:  # a selection score from epoch E + 1 = 3 on
        assert [row["score"] == "" for row in csv.DictReader(f)] == [True, True, False, False, False]
    groups = torch.load(resumed.path / "last" / "training_state.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 2e-4]  # --lr for the embedders, --gan-lr (default) for G and D
    rows = (tmp_path / "cut" / "train_metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]


def test_bad_input_is_one_line(flam_run, catalogue, tiny_checkpoint, cli, tmp_path):
    model = clip_cir.load(attributes=flam_run.path, device="cpu", cache=False, progress=False)
    image = catalogue.image_root / "images" / "test_0000.png"
    with pytest.raises(CIRError, match=r"^unknown attribute 'hue' \(known: colour, shape, size, position\)$"):
        model.manipulate(image, "hue", "red")
    with pytest.raises(CIRError, match=r"^unknown value 'pink' of attribute 'colour' \(known: blue, green, red, "
                                       r"yellow\)$"):
        model.manipulate(image, "colour", "pink")
    with pytest.raises(CIRError, match=r"^attributes gives FLAM's manipulation; it does not go with combiner, "):
        clip_cir.load(attributes=flam_run.path, combining="sum", device="cpu", cache=False, progress=False)
    with pytest.raises(CIRError, match=r"^attribute template 'make it \{hue\}' must hold only the fields "):
        clip_cir.load(tiny_checkpoint, attribute_template="make it {hue}", device="cpu", cache=False, progress=False)
    with pytest.raises(CIRError, match=r"^attribute template 'make it \{value\}' must hold \{attribute\} and "):
        clip_cir.load(tiny_checkpoint, attribute_template="make it {value}", device="cpu", cache=False, progress=False)
    # A FLAM on a catalogue with other names (the ADDE copy of the same images: positional names).
    result = cli("eval", "--catalogue", catalogue.adde, "--image-root", catalogue.image_root, "--attributes",
                 flam_run.path, "--no-cache", "--num-workers", 0)
    assert result.code == 2 and len(result.error_lines) == 1
    assert "manipulates attributes ['colour', 'shape', 'size', 'position'] with values [['blue'" in result.err
    assert "labels_test.txt has ['attribute_0', 'attribute_1', 'attribute_2', 'attribute_3']" in result.err
    # A FLAM trained on another CLIP's image features.
    with pytest.raises(CIRError, match=r"flam.safetensors: this FLAM was trained on the image features of "
                                       r"openai-inferred \(.*tiny_clip.pt\), not on those of cir-tiny-vit"):
        clip_cir.load(model="cir-tiny-vit", attributes=flam_run.path, device="cpu", cache=False, progress=False)

    # An ADDE label row with one number too few, through the program.
    copy = tmp_path / "adde"
    shutil.copytree(catalogue.adde, copy)
    labels = (copy / "labels_train.txt").read_text().splitlines()
    labels[2] = labels[2].rsplit(" ", 1)[0]
    (copy / "labels_train.txt").write_text("\n".join(labels) + "\n")
    argv = command_line(_options(catalogue, tiny_checkpoint, tmp_path, "bad", catalogue=copy,
                                 image_root=catalogue.image_root, epochs=2, embedding_epochs=1))
    result = cli("train-attributes", *argv)
    assert result.code == 2, result.err
    errors = [line for line in result.err.splitlines() if "error" in line]
    assert errors == [f"clip-cir train-attributes: error: {copy / 'labels_train.txt'}:3: 13 numbers, "
                      f"but {copy / 'attr_num.txt'} gives 4 attributes with 14 values in all"]
    assert not (tmp_path / "bad").exists()  # refused before the run directory was made

    result = cli("eval", "--dataset", "cirr", "--data-root", tmp_path, "--top-k", "5")
    assert result.code == 2 and result.error_lines == ["clip-cir: error: --top-k goes with --catalogue DIR (an "
                                                       "attribute catalogue)"]


def test_two_processes_train_with_the_embedders_held_still_in_the_manipulation_phase(catalogue, tiny_checkpoint,
                                                                                     tmp_path):
    """DDP over gloo: each phase leaves some networks without gradient; under DDP they must stay
    without one (not zero: Adam's momentum would move them), so the final embedders still give
    the centroids made at the phase boundary."""
    options = _options(catalogue, tiny_checkpoint, tmp_path, "ddp", epochs=4, embedding_epochs=2, cpu=True, **SMALL)
    cmd = [sys.executable, *ddp_launcher(2), str(REPO / "attributes" / "train_flam.py"), *command_line(options)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2 |" in result.stderr
    _assert_dictionary_is_the_centroids(tmp_path / "ddp", catalogue)
