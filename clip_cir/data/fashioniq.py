"""FashionIQ in its published layout (`<root>/fashionIQ_dataset/{captions,image_splits,images}`).

The default protocol is CLIP4Cir's (one query per triplet, "C0 and c1"; the split file's gallery,
reference kept); VAL's and CoSMo's are in `clip_cir.data.fashioniq_protocols`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from clip_cir.data.fashioniq_protocols import OTHER_PROTOCOLS, FashionIQProtocol
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


def caption_orders(query: Query) -> tuple[str, str] | None:
    """("C0 and c1", "C1 and c0") for a query in the method's form (two captions, evaluated as the
    first joined to the second), else None: what a zero-shot method composes both ways."""
    if len(query.captions) != 2 or query.eval_caption != evaluation_caption(*query.captions):
        return None
    first, second = query.captions
    return evaluation_caption(first, second), evaluation_caption(second, first)


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


def clip4cir_queries(category: str, index: int, captions: Sequence[str], candidate: str,
                     target: str | None) -> list[Query]:
    """CLIP4Cir's one query per triplet: four caption forms to train on, "C0 and c1" to evaluate."""
    return [Query(qid=f"{category}/{index}", reference=candidate, captions=tuple(captions),
                  train_captions=training_captions(*captions), eval_caption=evaluation_caption(*captions),
                  target=target)]


PROTOCOLS: dict[str, FashionIQProtocol] = {
    "clip4cir": FashionIQProtocol("clip4cir", gallery_from_triplets=False, exclude_reference=False,
                                  recall_ks=RECALL_KS, make_queries=clip4cir_queries),
    **OTHER_PROTOCOLS,
}
"""`--fashioniq-protocol`: CLIP4Cir's (the default), VAL's, CoSMo's code's, CoSMo's paper's."""
DEFAULT_PROTOCOL = "clip4cir"


def _load_category(base: Path, category: str, split: str, index: dict[str, Path], images: ImageCheck,
                   protocol: FashionIQProtocol) -> CIRSplit:
    split_path = base / "image_splits" / f"split.{category}.{split}.json"
    names = require_type(split_path, read_json(split_path, "FashionIQ image split file"), list, "the top level")
    for name in names:
        if not isinstance(name, str):
            raise CIRError(f"{split_path}: image names should be strings, got {name!r}")
    cap_path = base / "captions" / f"cap.{category}.{split}.json"
    entries = require_type(cap_path, read_json(cap_path, "FashionIQ caption file"), list, "the top level")
    has_targets = split != "test"
    keys = ("candidate", "target") if has_targets else ("candidate",)
    listed = set(names)
    for i, entry in enumerate(entries):
        require_fields(cap_path, entry, i, ["candidate", "captions", *keys[1:]])
        for key in keys:
            name = entry[key]
            if not isinstance(name, str):
                raise CIRError(f"{cap_path}: entry {i} field '{key}' should be an image name (a string)")
            # Training loads images by name, as the published code does: a triplet may use an image
            # the split file does not list. Evaluation galleries are exactly the split file (or, for
            # protocols whose gallery is the triplets' images, drawn from it).
            if name not in listed and split != "train":
                raise CIRError(f"{cap_path}: entry {i} names image '{name}' ({key}), "
                               f"which is not in {split_path.name}")
    if protocol.gallery_from_triplets:
        names = sorted({entry[key] for entry in entries for key in keys})
    by_name = {name: _candidates(base / "images", name, index) for name in names}
    by_caption: dict[str, list[Path]] = {}  # training images the gallery does not hold
    for entry in entries:
        for key in keys:
            if entry[key] not in by_name:
                by_caption.setdefault(entry[key], _candidates(base / "images", entry[key], index))
    used = {entry[key] for entry in entries for key in keys}
    by_name = images.gallery_candidates(split, by_name, used)
    gallery_file = cap_path if protocol.gallery_from_triplets else split_path
    gallery = {**images.locate(by_name, gallery_file), **images.locate(by_caption, cap_path)}
    looked_for = len(by_name) + len(by_caption)
    queries = []
    for i, entry in enumerate(entries):
        captions = entry["captions"]
        if not (isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)):
            raise CIRError(f"{cap_path}: entry {i} field 'captions' should be a list of two strings")
        queries += protocol.make_queries(category, i, captions, entry["candidate"], entry.get("target"))
    return images.drop_queries(CIRSplit(dataset="fashioniq", name=category, split=split, queries=queries,
                                        gallery=gallery, exclude_reference=protocol.exclude_reference,
                                        recall_ks=protocol.recall_ks),
                               looked_for)


def load_fashioniq(data_root: Path, split: str, categories: Sequence[str] | None = None,
                   images: ImageCheck | None = None, protocol: str = DEFAULT_PROTOCOL) -> list[CIRSplit]:
    """One CIRSplit per category: CLIP4Cir's protocol (the default) ranks each category's queries
    against that category's whole split gallery, reference included; `protocol` picks another
    (`PROTOCOLS`, see `clip_cir.data.fashioniq_protocols`)."""
    if split not in SPLITS:
        raise CIRError(f"unknown FashionIQ split '{split}' (choose from {', '.join(SPLITS)})")
    if protocol not in PROTOCOLS:
        raise CIRError(f"unknown FashionIQ protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    if split == "test" and PROTOCOLS[protocol].gallery_from_triplets:
        raise CIRError(f"FashionIQ protocol '{protocol}' has no test split: its gallery is the images of the "
                       f"split's triplets, targets included, and test triplets have no targets")
    categories = list(categories or CATEGORIES)
    for category in categories:
        if category not in CATEGORIES:
            raise CIRError(f"unknown FashionIQ category '{category}' (choose from {', '.join(CATEGORIES)})")
    base = fashioniq_dir(data_root)
    index = index_images(base / "images")
    images = images or ImageCheck()
    return [_load_category(base, category, split, index, images, PROTOCOLS[protocol]) for category in categories]
