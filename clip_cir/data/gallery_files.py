"""The gallery files of the triplet layout (`clip_cir.data.triplets`): a plain list of image paths,
or a JSONL file of entries that may be named apart from their images and may carry labels.

    <split>[.<group>].gallery.txt     one image path per line; an entry's name is its path
    <split>[.<group>].gallery.jsonl   one entry per line: {"image": PATH, "name": NAME, "label": LABEL}

In JSONL, `name` (default: the image path) is what a query row calls the entry, so one file can be
several entries under several names (a benchmark whose gallery repeats an image); `label` gives
the entry a label, and a query with a `target_label` then hits on any entry carrying it (tirg's
rule, `clip_cir.evaluation.metrics.label_recall_at_k`). Every entry has a label or none has.
Names are compared as paths are (`a/./b` is `a/b`) and are unique within a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from clip_cir.data.columns import normalise_paths
from clip_cir.data.io import json_object_lines
from clip_cir.data.table import ImageFiles, strings
from clip_cir.errors import CIRError

GALLERY_SUFFIXES = (".gallery.txt", ".gallery.jsonl")
ENTRY_FIELDS = ("image", "name", "label")


@dataclass
class GalleryListing:
    """A gallery file's entries in its order: names and files, and labels where it gives them."""

    files: ImageFiles
    labels: np.ndarray | None = None
    """Entry i's label (numpy strings, as written); None: the file gives none."""
    lines: np.ndarray | None = None
    """Entry i's line in a JSONL file (a text file's lines are looked up when an error needs one)."""

    def labels_of(self, names: ImageFiles) -> dict[str, str] | None:
        """Name -> label of the entries `names` kept (all of them, or what was left of them)."""
        if self.labels is None:
            return None
        labels = dict(zip(self.files.names.tolist(), self.labels.tolist()))
        return labels if len(names) == len(self.files) else {name: labels[name] for name in names}


def gallery_file(root: Path, split: str, group: str) -> Path | None:
    """The gallery file of one group of a split: the group's own, else the split's, else None.
    A text and a JSONL file for one gallery are an error (which one was meant?)."""
    for stem in (f"{split}.{group}", split):
        found = [root / f"{stem}{suffix}" for suffix in GALLERY_SUFFIXES if (root / f"{stem}{suffix}").is_file()]
        if len(found) > 1:
            raise CIRError(f"{root}: both {found[0].name} and {found[1].name} list a gallery; keep one")
        if found:
            return found[0]
    return None


def read_gallery(path: Path) -> GalleryListing:
    """A gallery file's entries: a text file's images each once (a repeated path is one entry),
    a JSONL file's entries as listed (a repeated name is an error naming both lines)."""
    if path.suffix == ".jsonl":
        return _read_entries(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CIRError(f"{path}: not UTF-8 text ({e})") from None
    listed = strings([line.strip() for line in text.split("\n") if line.strip()])
    return GalleryListing(ImageFiles(strings(pd.unique(normalise_paths(listed, "\x00" not in text))), path.parent))


def _read_entries(path: Path) -> GalleryListing:
    images: list[str] = []
    names: list[str] = []
    labels: list[str | None] = []
    lines: list[int] = []
    named = False
    try:
        with open(path, encoding="utf-8") as f:
            for number, entry in json_object_lines(f, path, "an entry"):
                unknown = sorted(set(entry) - set(ENTRY_FIELDS))
                if unknown:
                    raise CIRError(f"{path}:{number}: unknown field(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(ENTRY_FIELDS)})")
                image, name, label = (entry.get(key) for key in ENTRY_FIELDS)
                if not isinstance(image, str) or not image.strip():
                    raise CIRError(f"{path}:{number}: 'image' should be the entry's image path")
                for key, value in (("name", name), ("label", label)):
                    if value is not None and (not isinstance(value, str) or not value.strip()):
                        raise CIRError(f"{path}:{number}: '{key}' should be a non-empty string")
                if lines and (label is None) != (labels[0] is None):
                    raise CIRError(f"{path}:{number}: this entry has {'no ' if label is None else 'a '}'label' and "
                                   f"the one at line {lines[0]} {'has' if label is None else 'has none'}; "
                                   f"give every entry a label or none")
                images.append(image.strip())
                names.append(name.strip() if name is not None else image.strip())
                labels.append(label)
                lines.append(number)
                named = named or name is not None
    except UnicodeDecodeError as e:
        raise CIRError(f"{path}: not UTF-8 text ({e})") from None
    if not lines:
        raise CIRError(f"{path}: no gallery entries")
    normal = normalise_paths(strings(names), not any("\x00" in n for n in names))
    codes, distinct = pd.factorize(normal.astype(object))
    if len(distinct) < len(codes):
        repeat = int(np.argmax(np.concatenate([[False], codes[1:] <= np.maximum.accumulate(codes)[:-1]])))
        first = int(np.argmax(codes == codes[repeat]))
        raise CIRError(f"{path}:{lines[repeat]}: the name '{normal[repeat]}' is taken by the entry at line "
                       f"{lines[first]} (an entry is named by its image path unless it gives a 'name')")
    return GalleryListing(files=ImageFiles(normal, path.parent, strings(images) if named else None),
                          labels=strings(labels) if labels[0] is not None else None,
                          lines=np.asarray(lines, dtype=np.int64))


def listing_lines(listing: GalleryListing, path: Path) -> Callable[[str], str]:
    """name -> `file:line` of the gallery file's entry (a text file's first line naming the
    image, read again on each call: only an unusable image makes one)."""
    if listing.lines is not None:
        position = pd.Index(listing.files.names)
        return lambda name: f"{path.name}:{listing.lines[position.get_loc(name)]}"

    def where(name: str) -> str:
        with open(path, encoding="utf-8") as f:
            line = next((number for number, text in enumerate(f, 1)
                         if text.strip() and os.path.normpath(text.strip()) == name), None)
        return f"{path.name}:{line}" if line else path.name
    return where
