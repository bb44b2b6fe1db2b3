"""MIT-States as TIRG reads and scores it (google/tirg datasets.py `MITStates`, test_retrieval.py): the
split by test nouns, one query per image and other adjective, label hits with the source masked
and the adjective-only and noun-only diagnostics, the static training pairs, bad input, unreadable
images and the shapes-world stand-in, each against values worked out by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import stage1_options, stage2_options
from PIL import Image

import clip_cir
from clip_cir.data import DATASETS, dataset_splits, load_splits
from clip_cir.data.images import ImageCheck
from clip_cir.data.mitstates import TEST_NOUNS
from clip_cir.data.registry import validation_split
from clip_cir.data.synthetic.mitstates import write_mitstates
from clip_cir.encoding.ranking import rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

# Folder -> files. castle and sand are TIRG test nouns, apple and bike are not; "adj" folders
# (MIT-States' stateless images) and names without a space are skipped.
FOLDERS = {
    "ancient castle": ["a.jpg", "b.jpg"],
    "wet sand": ["f.jpg", "e.jpg"],
    "huge castle": ["d.jpg"],
    "dry sand": ["c.jpg"],
    "mossy castle": ["g.jpg"],
    "adj castle": ["z.jpg"],
    "ripe apple": ["1.jpg", "2.jpg"],
    "rotten apple": ["3.jpg"],
    "old bike": ["4.jpg"],
    "new bike": ["5.jpg"],
    "adj apple": ["y.jpg"],
}
# The test gallery: folders sorted by name, files sorted within each.
GALLERY = ["ancient castle/a.jpg", "ancient castle/b.jpg", "dry sand/c.jpg", "huge castle/d.jpg",
           "mossy castle/g.jpg", "wet sand/e.jpg", "wet sand/f.jpg"]


@pytest.fixture
def states(tmp_path) -> Path:
    """A data root holding mitstates/images/ with FOLDERS written out (8-px JPEGs) and a stray file."""
    images = tmp_path / "mitstates" / "images"
    for i, (folder, files) in enumerate(FOLDERS.items()):
        (images / folder).mkdir(parents=True)
        for file in files:
            Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(images / folder / file, "JPEG")
    (images / "README.txt").write_text("no space in the name: skipped")
    return tmp_path


def test_registered_with_train_and_test_validating_on_test():
    assert "mitstates" in DATASETS and dataset_splits("mitstates") == ("train", "test")
    assert validation_split("mitstates") == "test"


def test_test_nouns_are_tirgs_49():
    assert len(TEST_NOUNS) == len(set(TEST_NOUNS)) == 49
    assert {"castle", "sand", "tomato", "wool"} <= set(TEST_NOUNS) and "apple" not in TEST_NOUNS


def test_one_query_per_image_and_other_adjective(states):
    (split,) = load_splits("mitstates", states, "test")
    assert list(split.gallery) == GALLERY
    assert split.gallery_labels == {n: n.split("/")[0] for n in GALLERY}
    assert split.exclude_reference and split.recall_ks == (1, 5, 10, 50, 100)
    assert split.label_views == (("adjective", 0), ("noun", 1))
    # castle's adjectives in first-seen order: ancient, huge, mossy; sand's: dry, wet.
    assert [(q.reference, q.eval_caption, q.target_label) for q in split.queries] == [
        ("ancient castle/a.jpg", "huge", "huge castle"), ("ancient castle/a.jpg", "mossy", "mossy castle"),
        ("ancient castle/b.jpg", "huge", "huge castle"), ("ancient castle/b.jpg", "mossy", "mossy castle"),
        ("dry sand/c.jpg", "wet", "wet sand"),
        ("huge castle/d.jpg", "ancient", "ancient castle"), ("huge castle/d.jpg", "mossy", "mossy castle"),
        ("mossy castle/g.jpg", "ancient", "ancient castle"), ("mossy castle/g.jpg", "huge", "huge castle"),
        ("wet sand/e.jpg", "dry", "dry sand"), ("wet sand/f.jpg", "dry", "dry sand"),
    ]
    assert all(q.target is None and q.train_captions == (q.eval_caption,) for q in split.queries)
    assert split.has_targets


def _tirg_recalls(sims: np.ndarray, sources: list[int], captions: list[str], targets: list[str],
                  ks: tuple[int, ...]) -> dict[str, float]:
    """test_retrieval.py step by step: the source's similarity set to -10e10, the gallery sorted,
    then whole captions, first words and second words of the top k compared with the target's."""
    out = {}
    orders = []
    for row, source in zip(sims.copy(), sources):
        row[source] = -10e10
        orders.append(np.argsort(-row, kind="stable"))
    for k in ks:
        top = [[captions[j] for j in order[:k]] for order in orders]
        out[f"recall_at{k}"] = 100.0 * sum(t in row for t, row in zip(targets, top)) / len(targets)
        for view, w in (("adjective", 0), ("noun", 1)):
            hits = sum(t.split()[w] in [c.split()[w] for c in row] for t, row in zip(targets, top))
            out[f"{view}_recall_at{k}"] = 100.0 * hits / len(targets)
    return out


def test_label_hits_word_views_and_the_masked_source(states):
    (split,) = load_splits("mitstates", states, "test")
    # Gallery: 0 A ancient castle, 1 B ancient castle, 2 C dry sand, 3 D huge castle, 4 G mossy castle,
    # 5 E wet sand, 6 F wet sand. Each query's ranking after its source (which scores highest, so
    # only the mask keeps it out), as (source, order):
    orders = [
        (0, [2, 5, 1, 4, 6, 3]),  # A -> huge castle: castle (B) at 3, D at 6
        (0, [4, 2, 5, 1, 6, 3]),  # A -> mossy castle: G at 1
        (1, [6, 0, 3, 2, 5, 4]),  # B -> huge castle: castle (A) at 2, D at 3
        (1, [5, 2, 6, 3, 0, 4]),  # B -> mossy castle: castle (D) at 4, G at 6
        (2, [6, 0, 1, 3, 4, 5]),  # C -> wet sand: F at 1
        (3, [5, 2, 0, 1, 4, 6]),  # D -> ancient castle: A at 3
        (3, [1, 4, 0, 2, 5, 6]),  # D -> mossy castle: castle (B) at 1, G at 2
        (4, [0, 1, 2, 3, 5, 6]),  # G -> ancient castle: A at 1
        (4, [5, 3, 0, 1, 2, 6]),  # G -> huge castle: D at 2
        (5, [6, 0, 2, 1, 3, 4]),  # E -> dry sand: sand (F) at 1, C at 3
        (6, [2, 0, 1, 3, 4, 5]),  # F -> dry sand: C at 1
    ]
    sims = np.zeros((11, 7), dtype=np.float32)
    for q, (source, order) in enumerate(orders):
        sims[q, source] = 1.0
        sims[q, order] = [0.9 - 0.1 * r for r in range(6)]
    assert [GALLERY.index(q.reference) for q in split.queries] == [source for source, _ in orders]
    ranking = rank_split(split, torch.from_numpy(sims), torch.eye(7), split.rank_depth)
    metrics = split_metrics(split, ranking)
    expected = _tirg_recalls(sims, [source for source, _ in orders], list(split.gallery_labels.values()),
                             [q.target_label for q in split.queries], split.recall_ks)
    assert metrics.keys() >= expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    # By hand: K=1 hits for queries 1, 4, 7, 10; the noun alone also for 6 (B) and 9 (F), and would
    # be every query's if the source were not masked; K=5 misses only queries 0 and 3.
    assert metrics["recall_at1"] == pytest.approx(400 / 11)
    assert metrics["noun_recall_at1"] == pytest.approx(600 / 11)
    assert metrics["adjective_recall_at1"] == pytest.approx(400 / 11)
    assert metrics["recall_at5"] == pytest.approx(900 / 11)
    assert metrics["recall_at10"] == metrics["noun_recall_at5"] == 100.0


def test_training_queries_are_static_pairs_with_different_adjectives(states):
    (split,) = load_splits("mitstates", states, "train")
    names = ["new bike/5.jpg", "old bike/4.jpg", "ripe apple/1.jpg", "ripe apple/2.jpg", "rotten apple/3.jpg"]
    assert list(split.gallery) == names and split.gallery_labels["old bike/4.jpg"] == "old bike"
    assert [q.qid for q in split.queries] == [f"{i}/{k}" for i in range(5) for k in (0, 1)]
    for i, name in enumerate(names):
        first, second = split.queries[2 * i], split.queries[2 * i + 1]
        assert first.reference == second.reference == name
        # Two nouns of two adjectives each: the pair's adjectives are the noun's two, in either order.
        noun = name.split("/")[0].split()[1]
        assert {first.eval_caption, second.eval_caption} == ({"old", "new"} if noun == "bike" else {"ripe", "rotten"})
        for q in (first, second):
            assert q.target_label == f"{q.eval_caption} {noun}" == split.gallery_labels[q.target]
    # Image 2 ("ripe apple/1.jpg") drawn by TIRG's rule from Random("mitstates:2"): an adjective of
    # apple (ripe, rotten in first-seen order), then an image of that caption; twice, again until
    # the two adjectives differ.
    rng = random.Random("mitstates:2")
    images = {"ripe": ["ripe apple/1.jpg", "ripe apple/2.jpg"], "rotten": ["rotten apple/3.jpg"]}

    def draw() -> str:
        adjective = rng.choice(["ripe", "rotten"])
        return rng.choice(images[adjective])

    while True:
        pair = draw(), draw()
        if pair[0].split()[0] != pair[1].split()[0]:
            break
    assert (split.queries[4].target, split.queries[5].target) == pair
    (again,) = load_splits("mitstates", states, "train")
    assert again.queries == split.queries


def test_training_draw_is_seeded_by_the_image_index(tmp_path):
    # Eight images each of "ripe pear" and "soft pear": image 0's pair is one of 128 the draw may
    # give, the one Random("mitstates:0") gives by TIRG's rule.
    for adjective in ("ripe", "soft"):
        (tmp_path / "images" / f"{adjective} pear").mkdir(parents=True)
        for k in range(8):
            Image.new("RGB", (4, 4)).save(tmp_path / "images" / f"{adjective} pear" / f"{k}.jpg", "JPEG")
    (split,) = load_splits("mitstates", tmp_path, "train")
    rng = random.Random("mitstates:0")

    def draw() -> str:
        adjective = rng.choice(["ripe", "soft"])
        return f"{adjective} pear/{rng.choice(range(8))}.jpg"

    while True:
        pair = draw(), draw()
        if pair[0][:4] != pair[1][:4]:
            break
    assert (split.queries[0].target, split.queries[1].target) == pair


# ----------------------------------------------------------------------------- bad input, unreadable images


def test_bad_layouts_are_one_line_errors(states):
    images = states / "mitstates" / "images"
    with pytest.raises(CIRError, match="unknown MIT-States split 'val'"):
        load_splits("mitstates", states, "val")
    (images / "mossy castle" / "notes.txt").write_text("x")
    with pytest.raises(CIRError, match=r"mossy castle/notes\.txt: MIT-States caption folders hold only \.jpg"):
        load_splits("mitstates", states, "test")
    (images / "mossy castle" / "notes.txt").unlink()
    (images / "very old castle").mkdir()
    with pytest.raises(CIRError, match=r"very old castle: a MIT-States folder name should be '<adjective> <noun>', "
                                       r"got 3 words"):
        load_splits("mitstates", states, "test")
    (images / "very old castle").rmdir()
    for file in FOLDERS["old bike"]:
        (images / "old bike" / file).unlink()
    with pytest.raises(CIRError, match=r"new bike: noun 'bike' has images under one adjective only"):
        load_splits("mitstates", states, "train")
    with pytest.raises(CIRError, match=r"MIT-States image folder not found"):
        load_splits("mitstates", states / "mitstates" / "images", "test")


def test_unreadable_images_stop_or_are_skipped_with_their_queries(states):
    (states / "mitstates" / "images" / "huge castle" / "d.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CIRError, match=r"image 'huge castle/d\.jpg' listed in images is unreadable.*"
                                       r"--skip-missing-images"):
        load_splits("mitstates", states, "test", images=ImageCheck(readable=True))
    check = ImageCheck.for_purpose("evaluation", skip=True)
    (split,) = load_splits("mitstates", states, "test", images=check)
    assert "huge castle/d.jpg" not in split.gallery and len(split.gallery) == 6
    # Its two queries are dropped; queries whose target label it carried stay ("huge castle" has
    # no image left, so they cannot hit).
    assert len(split.queries) == 9 and all(q.reference != "huge castle/d.jpg" for q in split.queries)
    assert check.dropped_queries == {"mitstates/mitstates/test": 2}


# ----------------------------------------------------------------------------- the shapes-world stand-in


def test_synthetic_stand_in_reads_back(tmp_path):
    summary = write_mitstates(tmp_path / "a", seed=1, size=32)
    # 3 train shapes and 2 test ones (plate, window), 3 colours each, 2 images per colour.
    assert summary == {"train": {"images": 18, "nouns": 3}, "test": {"images": 12, "nouns": 2}}
    (test,) = load_splits("mitstates", tmp_path / "a", "test", images=ImageCheck(readable=True))
    (train,) = load_splits("mitstates", tmp_path / "a", "train", images=ImageCheck(readable=True))
    assert len(test.gallery) == 12 and len(test.queries) == 12 * 2  # two other colours per image
    assert {label.split()[1] for label in test.gallery_labels.values()} == {"plate", "window"}
    assert len(train.gallery) == 18 and len(train.queries) == 36
    assert not any(name.startswith("adj ") for name in [*test.gallery, *train.gallery])
    write_mitstates(tmp_path / "b", seed=1, size=32)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.jpg"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_stand_in_trains_both_stages_and_evaluates(tmp_path, cli):
    """Stage 1 trains on the static training queries and validates on test; stage 2 trains on its
    CLIP's features; `clip-cir eval` (test by default) gives stage 2's last validation numbers."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    write_mitstates(data, size=32)
    stage1 = clip_cir.finetune(**stage1_options(data, runs, "s1", dataset="mitstates", batch_size=8, epochs=1,
                                                encoder="text"))
    stage2 = clip_cir.train_combiner(**stage2_options(data, runs, "s2", dataset="mitstates", batch_size=8,
                                                      epochs=1, pretrained=runs / "s1"))
    keys = [f"recall_at{k}" for k in (1, 5, 10, 50, 100)]
    views = [f"{view}_recall_at{k}" for view in ("adjective", "noun") for k in (1, 5, 10, 50, 100)]
    assert all(key in stage1.metrics and key in stage2.metrics for key in keys + views)
    out = tmp_path / "test.json"
    result = cli("eval", "--dataset", "mitstates", "--data-root", data, "--num-workers", "0", "--model",
                 "cir-tiny-vit", "--pretrained", runs / "s1", "--combiner", runs / "s2", "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    assert [metrics[key] for key in keys + views] == pytest.approx([stage2.metrics[key] for key in keys + views],
                                                                   abs=1e-3)
