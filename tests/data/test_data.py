"""CIRR and FashionIQ readers on the synthetic data: counts, field mapping, caption forms.

Expectations are read straight from the JSON files the readers parse, and the FashionIQ caption
forms are rebuilt here from docs/method.md#fashioniq-captions, independently of clip_cir.data.fashioniq.
"""

import json
import re
from pathlib import Path

import pytest

from clip_cir.data import DATASETS, load_splits
from clip_cir.data.fashioniq import evaluation_caption, training_captions
from clip_cir.errors import CIRError

CATEGORIES = ("dress", "shirt", "toptee")


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _cirr_files(root: Path, split: str):
    base = root / "cirr_dataset" / "cirr"
    return (_read(base / "captions" / f"cap.rc2.{split}.json"),
            _read(base / "image_splits" / f"split.rc2.{split}.json"))


def _fiq_files(root: Path, category: str, split: str):
    base = root / "fashionIQ_dataset"
    return (_read(base / "captions" / f"cap.{category}.{split}.json"),
            _read(base / "image_splits" / f"split.{category}.{split}.json"))


def _clean(c: str) -> str:
    return c.strip(".?, ")


# ------------------------------------------------------------------------------------ CIRR


@pytest.mark.parametrize("split", ["train", "val", "test1"])
def test_cirr_counts_gallery_and_fields(synth_root, split):
    captions, image_split = _cirr_files(synth_root, split)
    splits = load_splits("cirr", synth_root, split)
    assert len(splits) == 1
    s = splits[0]
    assert (s.dataset, s.name, s.split) == ("cirr", "cirr", split)
    assert s.exclude_reference is True
    assert s.recall_ks == (1, 5, 10, 50) and s.subset_ks == (1, 2, 3)
    # Gallery: every image of the split file, in its order, resolved under cirr_dataset/.
    assert list(s.gallery) == list(image_split)
    base = synth_root / "cirr_dataset"
    for name, rel in image_split.items():
        assert s.gallery[name] == base / rel
        assert s.gallery[name].is_file()
    assert len(s.queries) == len(captions)
    for query, entry in zip(s.queries, captions):
        assert query.qid == str(entry["pairid"])
        assert query.reference == entry["reference"]
        assert query.captions == (entry["caption"],)
        assert query.eval_caption == entry["caption"]
        assert query.train_captions == (entry["caption"],)
        assert query.members == tuple(entry["img_set"]["members"])
        assert query.reference in query.members and len(query.members) == 6
        if split == "test1":
            assert query.target is None and query.target_soft is None
        else:
            assert query.target == entry["target_hard"]
            assert dict(query.target_soft) == {k: float(v) for k, v in entry["target_soft"].items()}
    assert s.has_targets == (split != "test1")


def test_cirr_train_images_in_numbered_subfolders_are_found(synth_root):
    s = load_splits("cirr", synth_root, "train")[0]
    folders = {p.parent.name for p in s.gallery.values()}
    assert folders and all(f.isdigit() for f in folders)
    assert all(p.parent.parent.name == "train" for p in s.gallery.values())


def test_cirr_val_soft_labels_include_negative(synth_root):
    # The synthetic val split exercises CIRR's -1.0 soft labels (used by the soft-recall tests).
    s = load_splits("cirr", synth_root, "val")[0]
    values = {v for q in s.queries for v in q.target_soft.values()}
    assert 1.0 in values and -1.0 in values


# ------------------------------------------------------------------------------- FashionIQ


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_fashioniq_per_category_splits(synth_root, split):
    splits = load_splits("fashioniq", synth_root, split)
    assert [s.name for s in splits] == list(CATEGORIES)
    for s in splits:
        captions, names = _fiq_files(synth_root, s.name, split)
        assert (s.dataset, s.split) == ("fashioniq", split)
        assert s.exclude_reference is False and s.recall_ks == (10, 50) and s.subset_ks == ()
        assert list(s.gallery) == names  # the whole category split, in file order
        assert len(s.queries) == len(captions)
        for i, (query, entry) in enumerate(zip(s.queries, captions)):
            assert query.qid == f"{s.name}/{i}"
            assert query.reference == entry["candidate"]
            assert query.captions == tuple(entry["captions"])
            assert query.members is None and query.target_soft is None
            assert query.target == (None if split == "test" else entry["target"])
            c0, c1 = (_clean(c) for c in entry["captions"])
            assert query.eval_caption == f"{c0.capitalize()} and {c1}"
            assert query.train_captions == (f"{c0.capitalize()} and {c1}", f"{c1.capitalize()} and {c0}",
                                            c0.capitalize(), c1.capitalize())
        assert s.has_targets == (split != "test")


def test_fashioniq_category_subset(synth_root):
    splits = load_splits("fashioniq", synth_root, "val", ["toptee", "dress"])
    assert [s.name for s in splits] == ["toptee", "dress"]


def test_fashioniq_jpg_and_png_images_both_found(synth_root):
    suffixes = set()
    images = synth_root / "fashionIQ_dataset" / "images"
    for split in ("train", "val", "test"):
        for s in load_splits("fashioniq", synth_root, split):
            for name, path in s.gallery.items():
                assert path.parent == images and path.stem == name and path.is_file()
                suffixes.add(path.suffix)
    assert suffixes == {".jpg", ".png"}


def test_fashioniq_png_only_image_is_found(data_copy):
    root = data_copy("fashioniq")
    images = root / "fashionIQ_dataset" / "images"
    name = _fiq_files(root, "dress", "val")[1][0]
    jpg = images / f"{name}.jpg"
    if jpg.exists():  # turn this .jpg into a .png, as some FashionIQ copies have
        from PIL import Image
        with Image.open(jpg) as im:
            im.save(images / f"{name}.png")
        jpg.unlink()
    s = load_splits("fashioniq", root, "val", ["dress"])[0]
    assert s.gallery[name] == images / f"{name}.png"


@pytest.mark.parametrize("c0, c1, train, evaluation", [
    ("  is Red, ", "has long sleeves?.",
     ("Is red and has long sleeves", "Has long sleeves and is Red", "Is red", "Has long sleeves"),
     "Is red and has long sleeves"),
    ("...Is SHINY.", ", and Darker?",
     ("Is shiny and and Darker", "And darker and Is SHINY", "Is shiny", "And darker"),
     "Is shiny and and Darker"),
    ("", "x", (" and x", "X and ", "", "X"), " and x"),
])
def test_fashioniq_caption_forms(c0, c1, train, evaluation):
    assert training_captions(c0, c1) == train
    assert evaluation_caption(c0, c1) == evaluation


# ------------------------------------------------------------------------------- misc


def test_unknown_dataset_and_split_in_api(synth_root):
    with pytest.raises(CIRError, match=re.escape(f"unknown dataset 'coco' (choose from {', '.join(DATASETS)})")):
        load_splits("coco", synth_root, "val")
    with pytest.raises(CIRError, match="unknown CIRCO split 'train' \\(choose from val, test\\)"):
        load_splits("circo", synth_root, "train")
    with pytest.raises(CIRError, match="unknown CIRR split 'test'"):
        load_splits("cirr", synth_root, "test")
    with pytest.raises(CIRError, match="unknown FashionIQ split 'test1'"):
        load_splits("fashioniq", synth_root, "test1")
    with pytest.raises(CIRError, match="unknown FashionIQ category 'skirt'"):
        load_splits("fashioniq", synth_root, "val", ["dress", "skirt"])
