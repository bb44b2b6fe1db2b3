"""Tests for the synthetic shapes world: files are read back in the real CIRR/FashionIQ/CIRCO layouts."""

import csv
import hashlib
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from clip_cir.data.synthetic import generate
from clip_cir.data.synthetic.captions import _referent
from clip_cir.data.synthetic.world import Edit, Obj

SIZE = 48
N = dict(n_train=60, n_val=30, n_test=30, n_circo=12, circo_distractors=30)
CIRR_SPLITS = ("train", "val", "test1")
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
FIQ_SPLITS = ("train", "val", "test")
SOFT_VALUES = {1.0, 0.5, 0.2, -1.0}
ASIN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(root, size=SIZE, seed=0, progress=False, **N)
    return root


def _cirr(world: Path, split: str):
    base = world / "cirr_dataset" / "cirr"
    return (_load(base / "captions" / f"cap.rc2.{split}.json"),
            _load(base / "image_splits" / f"split.rc2.{split}.json"))


@pytest.mark.parametrize("split", CIRR_SPLITS)
def test_cirr_entries_have_exact_keys(world, split):
    captions, _ = _cirr(world, split)
    assert len(captions) == {"train": 60, "val": 30, "test1": 30}[split]
    test = split == "test1"
    targets = set() if test else {"target_hard", "target_soft"}
    top = {"pairid", "reference", "caption", "img_set"} | targets
    img_set = {"id", "members", "reference_rank"} | (set() if test else {"target_rank"})
    for entry in captions:
        assert set(entry) == top
        assert set(entry["img_set"]) == img_set
        assert isinstance(entry["pairid"], int) and isinstance(entry["caption"], str)
    assert len({e["pairid"] for e in captions}) == len(captions)


@pytest.mark.parametrize("split", CIRR_SPLITS)
def test_cirr_names_resolve_to_images(world, split):
    captions, image_split = _cirr(world, split)
    folder = {"train": "train", "val": "dev", "test1": "test1"}[split]
    for name, rel in image_split.items():
        assert rel.startswith(f"./{folder}/") and Path(rel).stem == name
    for entry in captions:
        names = [entry["reference"], *entry["img_set"]["members"], *entry.get("target_soft", {})]
        names += [entry["target_hard"]] if "target_hard" in entry else []
        for name in names:
            assert name in image_split
    for rel in image_split.values():
        with Image.open(world / "cirr_dataset" / rel) as image:
            assert min(image.size) == SIZE and max(image.size) <= 1.5 * SIZE


def test_cirr_train_images_in_numbered_subfolders(world):
    _, image_split = _cirr(world, "train")
    for rel in image_split.values():
        parts = rel.split("/")
        assert parts[:2] == [".", "train"] and parts[2].isdigit() and len(parts) == 4


@pytest.mark.parametrize("split", CIRR_SPLITS)
def test_cirr_members_and_ranks(world, split):
    captions, _ = _cirr(world, split)
    for entry in captions:
        img_set = entry["img_set"]
        members = img_set["members"]
        assert len(members) == 6 and len(set(members)) == 6
        assert members[img_set["reference_rank"]] == entry["reference"]
        if split != "test1":
            assert members[img_set["target_rank"]] == entry["target_hard"]
            assert entry["target_hard"] != entry["reference"]
            assert entry["target_soft"][entry["target_hard"]] == 1.0
            assert set(entry["target_soft"].values()) <= SOFT_VALUES


def test_cirr_splits_share_no_image(world):
    splits = [set(_cirr(world, split)[1]) for split in CIRR_SPLITS]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_cirr_target_differs_from_reference(world):
    captions, image_split = _cirr(world, "val")
    base = world / "cirr_dataset"
    for entry in captions[:20]:
        reference = (base / image_split[entry["reference"]]).read_bytes()
        target = (base / image_split[entry["target_hard"]]).read_bytes()
        assert reference != target


def test_some_images_are_not_square(world):
    _, image_split = _cirr(world, "train")
    shapes = set()
    for rel in image_split.values():
        with Image.open(world / "cirr_dataset" / rel) as image:
            shapes.add((image.width > image.height) - (image.width < image.height))
    assert shapes == {-1, 0, 1}  # portrait, square and landscape all occur


@pytest.mark.parametrize("category", FIQ_CATEGORIES)
@pytest.mark.parametrize("split", FIQ_SPLITS)
def test_fashioniq_files(world, category, split):
    base = world / "fashionIQ_dataset"
    captions = _load(base / "captions" / f"cap.{category}.{split}.json")
    names = _load(base / "image_splits" / f"split.{category}.{split}.json")
    assert captions and len(set(names)) == len(names)
    keys = {"candidate", "captions"} | (set() if split == "test" else {"target"})
    for entry in captions:
        assert set(entry) == keys
        c0, c1 = entry["captions"]
        assert isinstance(c0, str) and c0 != c1
        for name in (entry["candidate"], entry.get("target", entry["candidate"])):
            assert name in names
    for name in names:
        assert name[0] == "B" and len(name) == 10 and set(name) <= ASIN_CHARS
        found = [p for p in (base / "images" / f"{name}{ext}" for ext in (".jpg", ".png"))
                 if p.exists()]
        assert len(found) == 1


def test_fashioniq_mixes_jpg_and_png(world):
    suffixes = [p.suffix for p in (world / "fashionIQ_dataset" / "images").iterdir()]
    assert set(suffixes) == {".jpg", ".png"}
    assert suffixes.count(".png") < suffixes.count(".jpg")
    with Image.open(next((world / "fashionIQ_dataset" / "images").glob("*.jpg"))) as image:
        assert image.format == "JPEG"


def test_fashioniq_categories_do_not_share_images(world):
    base = world / "fashionIQ_dataset" / "image_splits"
    per_category = [
        {n for split in FIQ_SPLITS for n in _load(base / f"split.{cat}.{split}.json")}
        for cat in FIQ_CATEGORIES
    ]
    assert sum(map(len, per_category)) == len(set().union(*per_category))


def test_pretrain_csv_lists_train_images(world):
    with open(world / "pretrain_captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["filepath", "title"]
    paths = [r[0] for r in rows[1:]]
    assert all(len(r) == 2 and r[1] for r in rows[1:])
    assert all((world / p).is_file() for p in paths)
    _, cirr_train = _cirr(world, "train")
    splits = world / "fashionIQ_dataset" / "image_splits"
    fiq_train = {n for cat in FIQ_CATEGORIES for n in _load(splits / f"split.{cat}.train.json")}
    assert len(paths) == len(set(paths)) == len(cirr_train) + len(fiq_train)
    assert not any("/dev/" in p or "/test1/" in p for p in paths)


CIRCO_VAL_KEYS = ["reference_img_id", "target_img_id", "relative_caption", "shared_concept", "gt_img_ids", "id",
                  "semantic_aspects"]
CIRCO_TEST_KEYS = ["reference_img_id", "relative_caption", "shared_concept", "id"]


def test_circo_layout(world):
    base = world / "CIRCO"
    info = _load(base / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json")
    images = info["images"]
    ids = [image["id"] for image in images]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and 0 < i < 581_930 for i in ids)
    folder = base / "COCO2017_unlabeled" / "unlabeled2017"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i:012d}.jpg" for i in ids)
    for image in images[:5]:
        assert image["file_name"] == f"{image['id']:012d}.jpg"
        with Image.open(folder / image["file_name"]) as im:
            assert (im.width, im.height) == (image["width"], image["height"]) and im.format == "JPEG"
    val, test = _load(base / "annotations" / "val.json"), _load(base / "annotations" / "test.json")
    assert [list(e) for e in val] == [CIRCO_VAL_KEYS] * 12 and [list(e) for e in test] == [CIRCO_TEST_KEYS] * 12
    assert [e["id"] for e in val] == [e["id"] for e in test] == list(range(12))
    known = set(ids)
    used = set()
    for entry in val:
        gts = entry["gt_img_ids"]
        assert entry["target_img_id"] == gts[0] and len(set(gts)) == len(gts) and set(gts) <= known
        assert entry["reference_img_id"] in known and entry["reference_img_id"] not in gts
        assert entry["semantic_aspects"] and entry["relative_caption"] and entry["shared_concept"]
        used |= {entry["reference_img_id"], *gts}
    n_gts = [len(e["gt_img_ids"]) for e in val]
    assert max(n_gts) > 1 and sum(n_gts) / len(n_gts) > 2  # several ground truths per query
    # Distractors: far more gallery images than val references and ground truths.
    assert len(ids) >= len(used) + 30 + 12 * 4
    # Ground truths of one query are renders of one scene: the same drawing, other placements.
    assert len({(folder / f"{g:012d}.jpg").read_bytes() for g in val[0]["gt_img_ids"]}) == len(val[0]["gt_img_ids"])


def test_circo_is_optional(tmp_path):
    summary = generate(tmp_path, n_train=2, n_val=2, n_test=2, size=SIZE, progress=False)
    assert "circo" not in summary and not (tmp_path / "CIRCO").exists()


def test_synth_info(world):
    info = _load(world / "synth_info.json")
    assert info["args"] == {**N, "size": SIZE, "seed": 0}
    assert info["cirr"]["val"]["queries"] == 30
    assert info["circo"]["val"]["queries"] == info["circo"]["test"]["queries"] == 12


def test_same_seed_same_bytes_and_other_seed_differs(world, tmp_path):
    generate(tmp_path / "same", size=SIZE, seed=0, progress=False, **N)
    generate(tmp_path / "other", size=SIZE, seed=1, progress=False, **N)
    assert _tree_hash(tmp_path / "same") == _tree_hash(world)
    assert _tree_hash(tmp_path / "other") != _tree_hash(world)
    name = "cirr_dataset/cirr/captions/cap.rc2.val.json"
    assert (tmp_path / "other" / name).read_bytes() != (world / name).read_bytes()


def test_refuses_to_overwrite_unless_asked(tmp_path):
    small = dict(n_train=4, n_val=2, n_test=2, size=SIZE, progress=False)
    generate(tmp_path, seed=0, **small)
    with pytest.raises(ValueError, match="overwrite=True"):
        generate(tmp_path, seed=0, **small)
    stale = tmp_path / "fashionIQ_dataset" / "stale.txt"
    stale.write_text("old")
    summary = generate(tmp_path, seed=1, overwrite=True, **small)
    assert not stale.exists()
    assert summary["cirr"]["train"]["queries"] == 4


def test_referent_disambiguates_same_shape():
    red = Obj("circle", "red", "small", 0)
    blue = Obj("circle", "blue", "small", 4)
    scene = (red, blue)
    rng = random.Random(0)
    for _ in range(50):
        text = _referent(rng, scene, red)
        assert "red" in text or "top left" in text
        assert text != "the circle" and text != "the small circle"


def test_edit_inverse_restores_scene():
    scene = (Obj("circle", "red", "small", 0), Obj("star", "blue", "large", 4))
    for edit in (Edit(scene[0], scene[0]._replace(cell=8)), Edit(scene[1], None),
                 Edit(None, Obj("square", "pink", "large", 2))):
        assert edit.inverse().apply(edit.apply(scene)) == scene
