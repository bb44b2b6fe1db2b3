"""FashionIQ in its published layout (`<root>/fashionIQ_dataset/{captions,image_splits,images}`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from clip_cir.data.images import ImageCheck
from clip_cir.data.io import read_json, require_fields, require_type
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

SPLITS = ("train", "val", "test")
CATEGORIES = ("dress", "shirt", "toptee")
RECALL_KS = (10, 50)
IMAGE_EXTENSIONS = (".jpg", ".png")


def _clean(caption: str) -> str:
    return caption.strip(".?, ")


def training_captions(c0: str, c1: str) -> tuple[str, ...]:
    """The four forms training draws from: "c0 and c1", "c1 and c0", "c0", "c1"."""
    a, b = _clean(c0), _clean(c1)
    return (f"{a.capitalize()} and {b}", f"{b.capitalize()} and {a}", a.capitalize(), b.capitalize())


def evaluation_caption(c0: str, c1: str) -> str:
    """The deterministic form evaluation uses: "C0 and c1"."""
    return f"{_clean(c0).capitalize()} and {_clean(c1)}"


def fashioniq_dir(data_root: Path) -> Path:
    base = Path(data_root) / "fashionIQ_dataset"
    if not base.is_dir():
        raise CIRError(f"{base}: FashionIQ folder not found (--data-root must contain fashionIQ_dataset/)")
    return base


def index_images(images_dir: Path) -> dict[str, Path]:
    """Map image names to files once (one directory listing instead of a stat per image)."""
    if not images_dir.is_dir():
        raise CIRError(f"{images_dir}: FashionIQ image folder not found")
    index: dict[str, Path] = {}
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            # Both extensions for one name: the official release's .jpg wins, whatever the listing order.
            if ext in IMAGE_EXTENSIONS and (stem not in index or ext == ".jpg"):
                index[stem] = Path(entry.path)
    return index


def _candidates(images_dir: Path, name: str, index: dict[str, Path]) -> list[Path]:
    return [index[name]] if name in index else [images_dir / f"{name}{ext}" for ext in IMAGE_EXTENSIONS]


def _load_category(base: Path, category: str, split: str, index: dict[str, Path], images: ImageCheck) -> CIRSplit:
    split_path = base / "image_splits" / f"split.{category}.{split}.json"
    names = require_type(split_path, read_json(split_path, "FashionIQ image split file"), list, "the top level")
    for name in names:
        if not isinstance(name, str):
            raise CIRError(f"{split_path}: image names should be strings, got {name!r}")
    cap_path = base / "captions" / f"cap.{category}.{split}.json"
    entries = require_type(cap_path, read_json(cap_path, "FashionIQ caption file"), list, "the top level")
    has_targets = split != "test"
    fields = ["candidate", "captions"] + (["target"] if has_targets else [])
    listed = set(names)
    by_name = {name: _candidates(base / "images", name, index) for name in names}
    by_caption: dict[str, list[Path]] = {}  # training images the split file does not list
    for i, entry in enumerate(entries):
        require_fields(cap_path, entry, i, fields)
        for key in ("candidate", "target") if has_targets else ("candidate",):
            name = entry[key]
            if not isinstance(name, str):
                raise CIRError(f"{cap_path}: entry {i} field '{key}' should be an image name (a string)")
            # Training loads images by name, as the published code does: a triplet may use an image
            # the split file does not list. Evaluation galleries are exactly the split file.
            if name not in listed and split != "train":
                raise CIRError(f"{cap_path}: entry {i} names image '{name}' ({key}), "
                               f"which is not in {split_path.name}")
            if name not in listed:
                by_caption.setdefault(name, _candidates(base / "images", name, index))
    used = {e[k] for e in entries for k in ("candidate", "target") if isinstance(e.get(k), str)}
    by_name = images.gallery_candidates(split, by_name, used)
    gallery = {**images.locate(by_name, split_path), **images.locate(by_caption, cap_path)}
    looked_for = len(by_name) + len(by_caption)
    queries = []
    for i, entry in enumerate(entries):
        captions = entry["captions"]
        if not (isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)):
            raise CIRError(f"{cap_path}: entry {i} field 'captions' should be a list of two strings")
        queries.append(Query(
            qid=f"{category}/{i}",
            reference=entry["candidate"],
            captions=tuple(captions),
            train_captions=training_captions(*captions),
            eval_caption=evaluation_caption(*captions),
            target=entry.get("target"),
        ))
    return images.drop_queries(CIRSplit(dataset="fashioniq", name=category, split=split, queries=queries,
                                        gallery=gallery, exclude_reference=False, recall_ks=RECALL_KS),
                               looked_for)


def load_fashioniq(data_root: Path, split: str, categories: Sequence[str] | None = None,
                   images: ImageCheck | None = None) -> list[CIRSplit]:
    """One CIRSplit per category: the method's protocol ranks each category's queries against
    that category's whole split gallery, reference included."""
    if split not in SPLITS:
        raise CIRError(f"unknown FashionIQ split '{split}' (choose from {', '.join(SPLITS)})")
    categories = list(categories or CATEGORIES)
    for category in categories:
        if category not in CATEGORIES:
            raise CIRError(f"unknown FashionIQ category '{category}' (choose from {', '.join(CATEGORIES)})")
    base = fashioniq_dir(data_root)
    index = index_images(base / "images")
    images = images or ImageCheck()
    return [_load_category(base, category, split, index, images) for category in categories]
