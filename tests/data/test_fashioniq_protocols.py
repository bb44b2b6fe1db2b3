"""FashionIQ under VAL's and CoSMo's protocols (clip_cir/data/fashioniq_protocols.py cites the
defining files), on a small FashionIQ layout written by hand, scored step by step.

The rules, from the defining code:
- VAL (yanbeic/VAL generate_caption_pairs.py, datasets/fashion_iq.py, test_val.py): one query per
  caption, stripped, empty ones left out; the gallery is the sorted set of the triplets' candidates
  and targets; the reference is removed from its own ranking; R@1/10/50.
- CoSMo (postBG/CosMo.pytorch data/fashionIQ.py, evaluators/metric_calculators.py): queries 2i and
  2i+1 are "c0 and c1" and "c1 and c0" as written; the gallery is the split file; the reference is
  removed; R@1/5/10/50 (the config's topk). `cosmo-val`: those queries over VAL's gallery.
- CLIP4Cir (the default): one query per triplet, the split file's gallery, nothing removed, R@10/50.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_cir.data import load_splits
from clip_cir.data.images import ImageCheck
from clip_cir.data.synthetic import edit_kinds, generate
from clip_cir.data.types import ReaderOptions
from clip_cir.encoding.ranking import rank_split
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics

P, Q, R, S, U = "B00Z", "B00Q", "B00R", "B00S", "B00U"  # P sorts last
SPLIT_FILE = [U, S, R, Q, P]  # U is in no triplet
TRIPLETS = [  # (candidate, target, captions)
    (P, Q, ["is red", " has a longer skirt "]),
    (R, P, ["is blue", ""]),
    (S, R, ["is shorter", "has no sleeves"]),
]


def _write_layout(root: Path) -> Path:
    base = root / "fashionIQ_dataset"
    for folder in ("captions", "image_splits", "images"):
        (base / folder).mkdir(parents=True)
    for name in SPLIT_FILE + ["B00T"]:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(base / "images" / f"{name}.jpg")
    entries = [{"candidate": c, "target": t, "captions": caps} for c, t, caps in TRIPLETS]
    (base / "captions" / "cap.dress.val.json").write_text(json.dumps(entries))
    (base / "image_splits" / "split.dress.val.json").write_text(json.dumps(SPLIT_FILE))
    # Train: one triplet with an image (B00T) the train split file does not list.
    (base / "captions" / "cap.dress.train.json").write_text(json.dumps(
        [{"candidate": P, "target": "B00T", "captions": ["is long", "is longer"]}]))
    (base / "image_splits" / "split.dress.train.json").write_text(json.dumps([P]))
    (base / "captions" / "cap.dress.test.json").write_text(json.dumps([{"candidate": P, "captions": ["a", "b"]}]))
    (base / "image_splits" / "split.dress.test.json").write_text(json.dumps([P, Q]))
    return base


def _read(root: Path, protocol: str, split: str = "val", images: ImageCheck | None = None):
    splits = load_splits("fashioniq", root, split, categories=["dress"], images=images,
                         options=ReaderOptions(fashioniq_protocol=protocol))
    assert [s.name for s in splits] == ["dress"]
    return splits[0]


def _rank(split, rows: list[dict[str, float]]):
    """Gallery features one-hot, so each query's scores are its row (unnamed images score 0)."""
    names = list(split.gallery)
    queries = torch.tensor([[row.get(n, 0.0) for n in names] for row in rows])
    return rank_split(split, queries, torch.eye(len(names)), k=50)


def test_val_protocol_by_hand(tmp_path):
    _write_layout(tmp_path)
    split = _read(tmp_path, "val")
    # One query per non-empty caption, stripped: entry 1's empty second caption makes none.
    assert [(q.qid, q.reference, q.target, q.eval_caption) for q in split.queries] == [
        ("dress/0/0", P, Q, "is red"), ("dress/0/1", P, Q, "has a longer skirt"), ("dress/1/0", R, P, "is blue"),
        ("dress/2/0", S, R, "is shorter"), ("dress/2/1", S, R, "has no sleeves")]
    assert all(q.train_captions == (q.eval_caption,) for q in split.queries)
    assert list(split.gallery) == [Q, R, S, P]  # the triplets' images, sorted; not U, not the file's order
    assert split.exclude_reference is True and split.recall_ks == (1, 10, 50)
    rows = [{P: 1.0, Q: 0.9},                  # hit@1 once its reference P is removed
            {P: 1.0, R: 0.9, Q: 0.8},          # Q second
            {R: 1.0, P: 0.9},                  # hit@1
            {S: 1.0, P: 0.9, Q: 0.8, R: 0.7},  # R third
            {S: 1.0, R: 0.9}]                  # hit@1
    assert split_metrics(split, _rank(split, rows)) == pytest.approx(
        {"recall_at1": 100 * 3 / 5, "recall_at10": 100.0, "recall_at50": 100.0})


@pytest.mark.parametrize("protocol, gallery", [("cosmo", SPLIT_FILE), ("cosmo-val", [Q, R, S, P])])
def test_cosmo_protocols_by_hand(tmp_path, protocol, gallery):
    _write_layout(tmp_path)
    split = _read(tmp_path, protocol)
    # Queries 2i and 2i+1: "c0 and c1", "c1 and c0", the captions exactly as written.
    assert [(q.qid, q.reference, q.target, q.eval_caption) for q in split.queries] == [
        ("dress/0/0", P, Q, "is red and  has a longer skirt "), ("dress/0/1", P, Q, " has a longer skirt  and is red"),
        ("dress/1/0", R, P, "is blue and "), ("dress/1/1", R, P, " and is blue"),
        ("dress/2/0", S, R, "is shorter and has no sleeves"), ("dress/2/1", S, R, "has no sleeves and is shorter")]
    assert [q.train_captions for q in split.queries[:2]] == [("is red and  has a longer skirt ",),
                                                           (" has a longer skirt  and is red",)]
    assert list(split.gallery) == gallery
    assert split.exclude_reference is True and split.recall_ks == (1, 5, 10, 50)
    rows = [{P: 1.0, Q: 0.9},                          # hit@1
            {P: 1.0, U: 0.95, Q: 0.9},                 # Q second (U is not in cosmo-val's gallery: first there)
            {R: 1.0, P: 0.9},                          # hit@1
            {R: 1.0, S: 0.9, Q: 0.8, U: 0.7, P: 0.6},  # P fourth (third without U)
            {S: 1.0, R: 0.9},                          # hit@1
            {S: 1.0, R: 0.9}]                          # hit@1
    at1 = 5 if protocol == "cosmo-val" else 4
    assert split_metrics(split, _rank(split, rows)) == pytest.approx(
        {"recall_at1": 100 * at1 / 6, "recall_at5": 100.0, "recall_at10": 100.0, "recall_at50": 100.0})


def test_clip4cir_stays_the_default(tmp_path):
    _write_layout(tmp_path)
    split = load_splits("fashioniq", tmp_path, "val", categories=["dress"])[0]
    assert [(q.qid, q.eval_caption) for q in split.queries] == [
        ("dress/0", "Is red and has a longer skirt"), ("dress/1", "Is blue and "),
        ("dress/2", "Is shorter and has no sleeves")]
    assert list(split.gallery) == SPLIT_FILE and split.exclude_reference is False and split.recall_ks == (10, 50)
    assert _read(tmp_path, "clip4cir").queries == split.queries


def test_train_and_test_splits(tmp_path):
    _write_layout(tmp_path)
    val = _read(tmp_path, "val", "train")  # training loads B00T by name, though the split file lacks it
    assert [(q.qid, q.target, q.train_captions) for q in val.queries] == [
        ("dress/0/0", "B00T", ("is long",)), ("dress/0/1", "B00T", ("is longer",))]
    assert set(val.gallery) == {P, "B00T"}
    cosmo = _read(tmp_path, "cosmo", "train")
    assert [q.train_captions for q in cosmo.queries] == [("is long and is longer",), ("is longer and is long",)]
    test = _read(tmp_path, "cosmo", "test")
    assert [(q.qid, q.target, q.eval_caption) for q in test.queries] == [("dress/0/0", None, "a and b"),
                                                                         ("dress/0/1", None, "b and a")]
    for protocol in ("val", "cosmo-val"):
        with pytest.raises(CIRError, match=f"FashionIQ protocol '{protocol}' has no test split"):
            _read(tmp_path, protocol, "test")
    with pytest.raises(CIRError, match=r"unknown FashionIQ protocol 'tirg' \(choose from clip4cir, val, cosmo, "
                                       r"cosmo-val\)"):
        _read(tmp_path, "tirg")


def test_missing_images_under_the_val_gallery(tmp_path):
    base = _write_layout(tmp_path)
    (base / "images" / f"{Q}.jpg").unlink()
    with pytest.raises(CIRError, match=f"image '{Q}' listed in cap.dress.val.json is missing on disk "
                                       rf"\(also looked for .*{Q}.png\); pass --skip-missing-images"):
        _read(tmp_path, "val")
    images = ImageCheck(skip=True)
    split = _read(tmp_path, "val", images=images)
    # Entry 0 (P -> Q) made two queries: both go; Q leaves the gallery.
    assert [q.qid for q in split.queries] == ["dress/1/0", "dress/2/0", "dress/2/1"]
    assert list(split.gallery) == [R, S, P]
    assert images.dropped_queries == {"fashioniq/dress/val": 2}
    # U is in the split file but in no triplet: VAL's gallery never looks for it, the split file's does.
    Image.new("RGB", (8, 8)).save(base / "images" / f"{Q}.jpg")
    (base / "images" / f"{U}.jpg").unlink()
    assert len(_read(tmp_path, "val").queries) == 5
    with pytest.raises(CIRError, match=f"image '{U}' listed in split.dress.val.json is missing on disk"):
        _read(tmp_path, "cosmo")


def test_a_triplet_naming_an_image_outside_the_split_file(tmp_path):
    base = _write_layout(tmp_path)
    entries = json.loads((base / "captions" / "cap.dress.val.json").read_text())
    entries.append({"candidate": "B00T", "target": P, "captions": ["x", "y"]})
    (base / "captions" / "cap.dress.val.json").write_text(json.dumps(entries))
    for protocol in ("val", "cosmo"):
        with pytest.raises(CIRError, match="cap.dress.val.json: entry 3 names image 'B00T' \\(candidate\\), "
                                           "which is not in split.dress.val.json"):
            _read(tmp_path, protocol)


def test_synthetic_edit_kinds_follow_queries_of_every_protocol(tmp_path):
    generate(tmp_path, n_train=3, n_val=6, n_test=3, size=16, progress=False)
    default = load_splits("fashioniq", tmp_path, "val", categories=["shirt"])[0]
    kinds = edit_kinds(tmp_path, default)  # one per entry
    for protocol in ("val", "cosmo"):
        split = _read_category(tmp_path, protocol)
        entry = [int(q.qid.split("/")[1]) for q in split.queries]
        assert edit_kinds(tmp_path, split) == [kinds[i] for i in entry]


def _read_category(root: Path, protocol: str):
    return load_splits("fashioniq", root, "val", categories=["shirt"],
                       options=ReaderOptions(fashioniq_protocol=protocol))[0]
