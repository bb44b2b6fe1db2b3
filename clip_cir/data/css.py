"""CSS (tirg's CLEVR-rendered shapes scenes) in its published layout, read as google/tirg reads it.

Layout (`--data-root` holds `CSSDataset/`, or is that folder itself):
- `css_toy_dataset_novel2_small.dup.npy`: a numpy-saved pickled dict; per split (`train`, `test`)
  a dict with `objects_img` (one list of objects per image, each a dict with `shape`, `color`,
  `size`, `pos`), `mods` (each a dict: `from` and `to`, lists of image indices of equal length,
  and `to_str`, the modification text) and, optionally, `labels` (one per image);
- `images/css_<split>_<index:06d>.png`: image `index` of the split, rendered in 3-D.

Defining code: google/tirg `datasets.py` (`CSSDataset`) and `test_retrieval.py` (`test`).
- The gallery is every image of the split, in index order. Image i's caption is `str(labels[i])`,
  or `str(i)` when the split has no `labels`.
- Test queries: for each mod, in order, and each of its (from, to) pairs, one query: the source
  image `from`, the text `to_str`, the target caption (label) of image `to`
  (`generate_test_queries_`). A hit at K is any of the top K gallery images whose caption equals
  the target caption (so every image of the target's scene counts), after the source image is
  masked from its own ranking (`sims[i, source] = -10e10`). Recall@{1, 5, 10, 50, 100}.
- 3D->3D (default): the query image is the source's 3-D image. 2D->3D
  (`ReaderOptions.css_query_images = "2d"`, `--css-query-images 2d`): the query image is the flat
  drawing of the source's objects (`get_img(idx, get_2d=True)`), rendered once to PNG files
  (`clip_cir.data.css_2d`) and given as `CIRSplit.query_images`; the masked entry is still the
  source's 3-D image (`Query.excluded`). tirg's released code trains on 3-D sources only; the
  option applies to every split this reader reads, so pass it to evaluation only to train on 3-D and
  test on 2-D, or to training too to train on 2-D queries.

Adaptations:
- Training queries: tirg draws a random mod, then a random pair of it, per step (and pairs a second
  query with the same source and another mod). Here the training queries are every (from, to) pair
  of every mod, once each, the same list as the test queries: static and deterministic, with the
  target image `to` as the positive. Mods with many pairs weigh more than under tirg's uniform draw
  of the mod.
- The annotation file is a pickle (the original format; numpy's `allow_pickle`). It is read only
  from the user's data root and through an unpickler that accepts plain data and numpy's arrays and
  scalars alone, so a file that names any other class or function stops with one line instead of
  running it. Python 2 strings decode as latin-1, as numpy's own reading of Python 2 pickles does.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import pickle
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clip_cir.constants import CSS_FOLDER, CSS_SPLITS
from clip_cir.data import css_2d
from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

SPLITS = CSS_SPLITS
RECALL_KS = (1, 5, 10, 50, 100)
QUERY_IMAGES = ("3d", "2d")
FOLDER = CSS_FOLDER
ANNOTATION_FILE = "css_toy_dataset_novel2_small.dup.npy"
NPY_MAGIC = b"\x93NUMPY"
DATA_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset"),
    ("_codecs", "encode"),
}
"""What a pickle of plain data and numpy arrays refers to (`numpy.core` is numpy 1's name of `numpy._core`)."""


class _DataUnpickler(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in DATA_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which an annotation file has no use for")
        return super().find_class(module, name)


def read_annotation(path: Path) -> tuple[dict, str]:
    """The annotation file's dict and the SHA-256 of its bytes (which names its 2-D drawings)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CIRError(f"{path}: cannot read the CSS annotation file ({e.strerror or e})") from None
    if not raw.startswith(NPY_MAGIC) or len(raw) < 12:
        raise CIRError(f"{path}: not a numpy .npy file")
    major = raw[6]
    if major not in (1, 2, 3):
        raise CIRError(f"{path}: unknown .npy format version {major}")
    size_format, start = ("<H", 10) if major == 1 else ("<I", 12)
    (header_size,) = struct.unpack(size_format, raw[8:start])
    try:
        header = ast.literal_eval(raw[start:start + header_size].decode("utf-8" if major == 3 else "latin-1"))
    except (ValueError, SyntaxError, UnicodeDecodeError):
        raise CIRError(f"{path}: malformed .npy header") from None
    if not isinstance(header, dict) or header.get("descr") != "|O":
        raise CIRError(f"{path}: holds a {header.get('descr') if isinstance(header, dict) else '?'} array, "
                       f"not the pickled dict of CSS's annotation file")
    try:
        value = _DataUnpickler(io.BytesIO(raw[start + header_size:]), encoding="latin1").load()
    except Exception as e:  # a malformed pickle raises nearly anything
        raise CIRError(f"{path}: cannot unpickle the CSS annotations ({e})") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if not isinstance(value, dict):
        raise CIRError(f"{path}: should hold a dict of splits, got {type(value).__name__}")
    return value, hashlib.sha256(raw).hexdigest()


def css_dir(data_root: Path) -> Path:
    """The folder holding the annotation file: `<root>/CSSDataset`, or the data root itself."""
    for base in (Path(data_root) / FOLDER, Path(data_root)):
        if (base / ANNOTATION_FILE).is_file():
            return base
    raise CIRError(f"{Path(data_root) / FOLDER / ANNOTATION_FILE}: CSS annotation file not found (--data-root must "
                   f"contain {FOLDER}/ or {ANNOTATION_FILE} itself)")


def image_name(split: str, index: int) -> str:
    """Image `index`'s name: its file's stem, `css_<split>_<index:06d>`."""
    return f"css_{split}_{index:06d}"


def _index(path: Path, where: str, value: Any, n_images: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CIRError(f"{path}: {where} should be an image index, got {value!r}")
    if not 0 <= value < n_images:
        raise CIRError(f"{path}: {where} names image {int(value)}, but the split has {n_images} images (objects_img)")
    return int(value)


def _text(path: Path, where: str, value: Any) -> str:
    if isinstance(value, bytes):  # Python 2's str, as tirg's first release decoded it
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise CIRError(f"{path}: {where} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise CIRError(f"{path}: {where} should be text, got {type(value).__name__}")
    return value


def _split_part(path: Path, data: dict, split: str) -> dict:
    part = data.get(split)
    if part is None:
        raise CIRError(f"{path}: no '{split}' split (it has {', '.join(map(str, data)) or 'none'})")
    if not isinstance(part, dict):
        raise CIRError(f"{path}: split '{split}' should be a dict, got {type(part).__name__}")
    for key in ("objects_img", "mods"):
        if key not in part:
            raise CIRError(f"{path}: split '{split}' has no '{key}'")
    return part


def modification_pairs(path: Path, split: str, mods: Any, n_images: int) -> list[tuple[str, int, int, str]]:
    """(query id `<mod>/<pair>`, source index, target index, text) for every pair of every mod, in
    the order tirg makes its test queries."""
    if not isinstance(mods, (list, tuple, np.ndarray)):
        raise CIRError(f"{path}: {split} 'mods' should be a list, got {type(mods).__name__}")
    pairs = []
    for m, mod in enumerate(mods):
        where = f"{split} mods[{m}]"
        if not isinstance(mod, dict):
            raise CIRError(f"{path}: {where} should be a dict, got {type(mod).__name__}")
        for key in ("from", "to", "to_str"):
            if key not in mod:
                raise CIRError(f"{path}: {where} has no '{key}'")
        sources, targets = mod["from"], mod["to"]
        for key, value in (("from", sources), ("to", targets)):
            if not isinstance(value, (list, tuple, np.ndarray)):
                raise CIRError(f"{path}: {where} '{key}' should be a list of image indices, got {type(value).__name__}")
        if len(sources) != len(targets):
            raise CIRError(f"{path}: {where} has {len(sources)} 'from' and {len(targets)} 'to' images")
        text = _text(path, f"{where} 'to_str'", mod["to_str"])
        for k, (source, target) in enumerate(zip(sources, targets)):
            pairs.append((f"{m}/{k}", _index(path, f"{where} 'from'[{k}]", source, n_images),
                          _index(path, f"{where} 'to'[{k}]", target, n_images), text))
    return pairs


def image_labels(path: Path, split: str, part: dict, n_images: int) -> list[str]:
    """Each image's caption as tirg makes it: `str(labels[i])`, or `str(i)` without labels."""
    if "labels" not in part:
        return [str(i) for i in range(n_images)]
    labels = part["labels"]
    if len(labels) != n_images:
        raise CIRError(f"{path}: {split} has {len(labels)} labels for {n_images} images (objects_img)")
    return [str(label) for label in labels]


def _with_2d_queries(split: CIRSplit, path: Path, digest: str, objects: Sequence, index: dict[str, int]) -> CIRSplit:
    """Each query's reference becomes its source's 2-D drawing; the source's 3-D image stays masked."""
    drawn = css_2d.query_images(path, digest, split.split, objects, (index[q.reference] for q in split.queries))
    names = {i: css_2d.image_name(split.split, i) for i in drawn}
    queries = [dataclasses.replace(q, reference=names[index[q.reference]], excluded=q.reference) for q in split.queries]
    return dataclasses.replace(split, queries=queries, query_images={names[i]: p for i, p in drawn.items()})


def load_css(data_root: Path, split: str, images: ImageCheck | None = None,
             options: ReaderOptions | None = None) -> list[CIRSplit]:
    """One CIRSplit: the split's queries (one per mod pair) over its whole gallery, a hit being any
    image of the target's label, the source masked; 2-D query images with `css_query_images="2d"`."""
    if split not in SPLITS:
        raise CIRError(f"unknown CSS split '{split}' (choose from {', '.join(SPLITS)})")
    options = options or ReaderOptions()
    if options.css_query_images not in QUERY_IMAGES:
        raise CIRError(f"--css-query-images must be one of {', '.join(QUERY_IMAGES)}, got {options.css_query_images!r}")
    images = images or ImageCheck()
    base = css_dir(data_root)
    path = base / ANNOTATION_FILE
    data, digest = read_annotation(path)
    part = _split_part(path, data, split)
    objects = part["objects_img"]
    if not isinstance(objects, (list, tuple, np.ndarray)):
        raise CIRError(f"{path}: {split} 'objects_img' should be a list (one entry per image), got "
                       f"{type(objects).__name__}")
    n_images = len(objects)
    labels = image_labels(path, split, part, n_images)
    pairs = modification_pairs(path, split, part["mods"], n_images)
    names = [image_name(split, i) for i in range(n_images)]
    candidates = {name: [base / "images" / f"{name}.png"] for name in names}
    used = {names[i] for _, source, target, _ in pairs for i in (source, target)}
    candidates = images.gallery_candidates(split, candidates, used)
    gallery = images.locate(candidates, path)
    queries = [Query(qid=qid, reference=names[source], captions=(text,), train_captions=(text,), eval_caption=text,
                     target=names[target], target_label=labels[target]) for qid, source, target, text in pairs]
    result = images.drop_queries(CIRSplit(
        dataset="css", name="css", split=split, queries=queries, gallery=gallery, exclude_reference=True,
        recall_ks=RECALL_KS, gallery_labels={name: labels[i] for i, name in enumerate(names) if name in gallery}),
        len(candidates))
    if options.css_query_images == "2d":
        result = _with_2d_queries(result, path, digest, objects, {name: i for i, name in enumerate(names)})
    return [result]
