"""Shoes in its released layout, under either of its two published protocols.

Shoes (Guo et al., *Dialog-based Interactive Image Retrieval*, NeurIPS 2018) adds relative
captions to the shoe images of Berg et al.'s attribute-discovery data (ECCV 2010). Layout
(`<root>/shoes/`, as the download unpacks)::

    relative_captions_shoes.json   [{"ImageName": target, "ReferenceImageName": reference,
                                     "RelativeCaption": str}, ...]
    train_im_names.txt             one image file name a line (the train split's images)
    eval_im_names.txt              the same for the test split
    attributedata/womens_<kind>/<n>/img_womens_<kind>_<k>.jpg

Images are named by file name only: every `.jpg` under `attributedata/` (or, in copies that
unpacked the category folders directly into `shoes/`, under `shoes/`) is found once, by a
recursive search, and indexed by its file name; a name found twice is an error.

The captions file does not say which split a pair belongs to, and the two protocols in use derive
the splits differently (`PROTOCOLS`; both rank the gallery with the reference removed from its own
ranking, count a hit when the exact target image is in the top K, and report R@1/10/50):

- `val`, VAL's (Chen et al., CVPR 2020; yanbeic/VAL `generate_caption_pairs.py`,
  `datasets/shoes.py`, `generate_groundtruth.py`, `test_val.py`): for each image of the split's
  list, in order, every pair whose target or reference it is, in the captions file's order. A pair
  with both images in the list is thus a query twice, and a pair with one image in the list is a
  query although its other image is in no list (found on disk by name). The gallery is the list's
  images plus every other image those pairs name. TIRG's, VAL's and CoSMo's published Shoes numbers
  are on this protocol, and most later papers compare with them: the default.
- `artemis`, ARTEMIS's (Delmas et al., ICLR 2022; naver/artemis `prepare_data/prepare_shoes_data.py`,
  `dataset_shoes.py`, `evaluate.py`): each pair whose two images are both in the split's list,
  once; the gallery is the list.

Adaptations: VAL's gallery is sorted by file path and ARTEMIS's follows the list; ours is the list's
order followed by the other images in order of first use (the order only breaks exact ties).
VAL and ARTEMIS give a masked reference the worst score instead of leaving it out, which differs
only where the gallery has at most K images. Training uses each query's caption as written (VAL
shuffles the same lines every epoch; ARTEMIS trains on the same pairs it evaluates). A pair whose
target is its reference stays (it cannot be a hit, as in both codes). VAL's `dotmark` spelling of
punctuation is its word tokenizer's business; the caption here is the file's, stripped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from clip_cir.data.images import ImageCheck
from clip_cir.data.io import read_json, require_fields, require_type
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

SPLITS = ("train", "test")
PROTOCOLS = ("val", "artemis")
DEFAULT_PROTOCOL = "val"
RECALL_KS = (1, 10, 50)
CAPTIONS_FILE = "relative_captions_shoes.json"
LIST_FILES = {"train": "train_im_names.txt", "test": "eval_im_names.txt"}
IMAGES_FOLDER = "attributedata"
FIELDS = ("ImageName", "ReferenceImageName", "RelativeCaption")


def shoes_dir(data_root: Path) -> Path:
    base = Path(data_root) / "shoes"
    if not base.is_dir():
        raise CIRError(f"{base}: Shoes folder not found (--data-root must contain shoes/)")
    return base


def images_root(base: Path) -> Path:
    """Where the images are searched: `attributedata/` if the copy has it, else `shoes/` itself."""
    folder = base / IMAGES_FOLDER
    return folder if folder.is_dir() else base


def index_images(root: Path) -> dict[str, Path]:
    """File name -> file for every `.jpg` under `root`, found by one recursive walk; the same
    name in two folders is an error (a pair could not say which it means)."""
    index: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(".jpg"):
                continue
            path = Path(folder) / name
            if name in index:
                raise CIRError(f"{path}: image name '{name}' also found at {index[name]} (Shoes names "
                               f"images by file name; keep one copy)")
            index[name] = path
    return index


def read_image_list(path: Path) -> list[str]:
    """A split's image names, one a line (blank lines ignored); a name listed twice is an error."""
    if not path.is_file():
        raise CIRError(f"{path}: Shoes image list not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: cannot read the Shoes image list ({e})") from None
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise CIRError(f"{path}:{number}: image '{name}' is listed again (first on line {first_line[name]})")
        first_line[name] = number
    return list(first_line)


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    """The captions file as (reference, target, caption) per entry, in its order."""
    entries = require_type(path, read_json(path, "Shoes captions file"), list, "the top level")
    pairs = []
    for i, entry in enumerate(entries):
        require_fields(path, entry, i, FIELDS)
        for key in FIELDS:
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise CIRError(f"{path}: entry {i} field '{key}' should be a non-empty string, got {entry[key]!r}")
        pairs.append((entry["ReferenceImageName"].strip(), entry["ImageName"].strip(),
                      entry["RelativeCaption"].strip()))
    return pairs


def val_queries(pairs: Sequence[tuple[str, str, str]], names: Sequence[str]) -> list[tuple[int, str]]:
    """VAL's queries, as (entry index, the role of the listed image that brought it in): for each
    listed name in order, the entries whose target ("target") or reference ("reference") it is, in
    the file's order; an entry whose target is its reference comes once, as "target"."""
    by_image: dict[str, list[tuple[int, str]]] = {}
    for k, (reference, target, _) in enumerate(pairs):
        by_image.setdefault(target, []).append((k, "target"))
        if reference != target:
            by_image.setdefault(reference, []).append((k, "reference"))
    return [use for name in names for use in by_image.get(name, ())]


def artemis_queries(pairs: Sequence[tuple[str, str, str]], names: Sequence[str]) -> list[int]:
    """ARTEMIS's queries: the entries whose reference and target are both listed, once each."""
    listed = set(names)
    return [k for k, (reference, target, _) in enumerate(pairs) if reference in listed and target in listed]


def _query(qid: str, reference: str, target: str, caption: str) -> Query:
    return Query(qid=qid, reference=reference, captions=(caption,), train_captions=(caption,),
                 eval_caption=caption, target=target)


def load_shoes(data_root: Path, split: str, images: ImageCheck, options: ReaderOptions) -> list[CIRSplit]:
    """One CIRSplit of Shoes' `train` or `test` split under `options.shoes_protocol` (default
    VAL's, see the module's docstring): its queries ranked against its gallery, reference removed."""
    if split not in SPLITS:
        raise CIRError(f"unknown Shoes split '{split}' (choose from {', '.join(SPLITS)})")
    protocol = options.shoes_protocol or DEFAULT_PROTOCOL
    if protocol not in PROTOCOLS:
        raise CIRError(f"unknown Shoes protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    base = shoes_dir(data_root)
    list_path = base / LIST_FILES[split]
    names = read_image_list(list_path)
    captions_path = base / CAPTIONS_FILE
    pairs = read_pairs(captions_path)
    root = images_root(base)
    index = index_images(root)
    if protocol == "val":
        queries = [_query(f"{k}/{role}", *pairs[k]) for k, role in val_queries(pairs, names)]
    else:
        queries = [_query(str(k), *pairs[k]) for k in artemis_queries(pairs, names)]
    listed = set(names)
    by_name = {name: [index.get(name, root / name)] for name in names}
    used = {name for q in queries for name in (q.reference, q.target)}
    by_name = images.gallery_candidates(split, by_name, used)
    others: dict[str, list[Path]] = {}  # VAL: images its pairs name outside the list
    for q in queries:
        for key, name in (("ReferenceImageName", q.reference), ("ImageName", q.target)):
            if name in listed or name in others:
                continue
            if name not in index and images.require_files and not images.skip:
                entry = q.qid.split("/")[0]
                raise CIRError(f"{captions_path}: entry {entry} names image '{name}' ({key}), which is not in "
                               f"{list_path.name} and has no file under {root}; {images.hint}")
            others[name] = [index.get(name, root / name)]
    gallery = {**images.locate(by_name, list_path), **images.locate(others, captions_path)}
    split_data = CIRSplit(dataset="shoes", name="shoes", split=split, queries=queries, gallery=gallery,
                          exclude_reference=True, recall_ks=RECALL_KS)
    return [images.drop_queries(split_data, len(by_name) + len(others))]
