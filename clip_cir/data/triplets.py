"""Any CIR data in one documented layout (`--dataset triplets`): per split, one CSV, TSV or JSONL
file of queries, read into the same `CIRSplit` as the benchmarks.

    DATA/<split>.jsonl | <split>.csv | <split>.tsv   one query per row: reference, caption, target(s)
    DATA/<split>.gallery.txt | .gallery.jsonl         optional: the gallery (image paths, or entries)
    DATA/<split>.<group>.gallery.txt | .jsonl         optional: the gallery of one group (see below)
    DATA/clip_cir.json                                optional: the protocol (reference removed? which K)

Columns (names chosen by `TripletFormat`): `reference` and `target` are image paths, relative to
the file that lists them or absolute; `target` holds one path or several (a JSON list, or
`|`-separated in CSV), several meaning several ground truths (mAP@K as CIRCO computes it); it is
empty or absent in test splits. `caption` is the relative caption. Optional: `id` (the query id,
unique; default: the line number), `benchmark` (a group: one CIRSplit per value, ranked against
its own gallery, as FashionIQ's categories), `target_label` (the label a hit carries: where the
gallery's entries have labels, any entry carrying it is a hit, tirg's rule, and `target` is only
the positive training uses, which may then be the reference itself; for every row or none, and
only with a labelled gallery), `excluded` (the gallery entry left out of this query's
ranking instead of its reference) and, in JSONL, `train_captions` (the caption forms training
draws from) and `aspects` (semantic aspects: mAP@10 is reported per aspect, as CIRCO's).

A gallery file is a text file of image paths, or a JSONL file of entries
`{"image": PATH, "name": NAME, "label": LABEL}` (`clip_cir.data.gallery_files`): `name`
(default: the path) is what rows call the entry, so one file can be several entries; labels are
on every entry or none. Rows name gallery entries (`target`, `excluded`, a gallery `reference`)
by their names. A `reference` that is no entry of a gallery file is a query image, encoded apart
from the gallery (`CIRSplit.query_images`); where the protocol removes references from their
rankings such a row must name its `excluded` entry. Without a gallery file the gallery is every
image the split names (references, targets, excluded entries). A split that is evaluated lists
each query once (rows without an `id` that repeat a group, reference, caption, targets, target
label and excluded entry are an error); a split trained on may repeat one, which weighs that
triplet more.

The protocol file's keys: `exclude_reference` (default true), `recall_ks`, `map_ks`, `source` (the
benchmark a converted copy came from) and `label_views`, a list of `[name, word index]`: recall
also on one whitespace-separated word of the labels, reported as `<name>_recall_at<K>` (MIT-States'
`[["adjective", 0], ["noun", 1]]`), for the splits whose gallery has labels.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from clip_cir.data.columns import Checked, check, row_columns
from clip_cir.data.csv_columns import csv_columns
from clip_cir.data.gallery_files import GalleryListing, gallery_file, listing_lines, read_gallery
from clip_cir.data.images import ImageCheck
from clip_cir.data.io import json_object_lines
from clip_cir.data.table import ImageFiles, QueryTable, return_freed_memory
from clip_cir.data.types import CIRSplit, TripletFormat
from clip_cir.errors import CIRError

SUFFIXES = (".jsonl", ".csv", ".tsv")
PROTOCOL_FILE = "clip_cir.json"
RECALL_KS = (1, 5, 10, 50)
MAP_KS = (5, 10, 25, 50)
"""Used when any query of a split has several targets (CIRCO's cut-offs)."""
PROTOCOL_KEYS = ("exclude_reference", "recall_ks", "map_ks", "label_views", "source")
VIEW_NAME = r"[A-Za-z][A-Za-z0-9_]*"


def split_file(root: Path, split: str) -> Path:
    """The one file of queries for `split`; an error names what was looked for."""
    found = [root / f"{split}{suffix}" for suffix in SUFFIXES if (root / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        raise CIRError(f"{root}: several files for split '{split}' ({', '.join(p.name for p in found)}); keep one")
    if not found:
        present = sorted(p.name for p in root.iterdir() if p.suffix in SUFFIXES) if root.is_dir() else []
        raise CIRError(f"{root}: no {'/'.join(split + s for s in SUFFIXES)} for split '{split}'"
                       + (f" (found: {', '.join(present)})" if present else ""))
    return found[0]


def read_protocol(root: Path) -> dict[str, Any]:
    path = root / PROTOCOL_FILE
    if not path.is_file():
        return {}
    try:
        protocol = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(protocol, dict):
        raise CIRError(f"{path}: should be a JSON object")
    unknown = set(protocol) - set(PROTOCOL_KEYS)
    if unknown:
        raise CIRError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(PROTOCOL_KEYS)})")
    for key in ("recall_ks", "map_ks"):
        ks = protocol.get(key, [1])
        if not (isinstance(ks, list) and all(isinstance(k, int) and k > 0 for k in ks)):
            raise CIRError(f"{path}: '{key}' should be a list of positive integers")
    views = protocol.get("label_views", [])
    if not (isinstance(views, list) and all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and re.fullmatch(VIEW_NAME, v[0])
            and isinstance(v[1], int) and not isinstance(v[1], bool) and v[1] >= 0 for v in views)):
        raise CIRError(f"{path}: 'label_views' should be a list of [name, word index] pairs (a name of letters, "
                       f"digits and underscores; an index from 0), e.g. [[\"adjective\", 0], [\"noun\", 1]]")
    if len({v[0] for v in views}) < len(views):
        raise CIRError(f"{path}: 'label_views' names a view twice")
    return protocol


def read_rows(path: Path, fmt: TripletFormat) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every query row; a malformed line or a missing column is an error
    naming file:line."""
    required = (fmt.reference_key, fmt.caption_key)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix == ".jsonl":
                for line_number, row in json_object_lines(f, path):
                    for key in required:
                        if key not in row:
                            raise CIRError(f"{path}:{line_number}: no field '{key}' ({_key_hint(key, fmt)})")
                    yield line_number, row
                return
            separator = fmt.separator or ("\t" if path.suffix == ".tsv" else ",")
            reader = csv.DictReader(f, delimiter=separator)
            columns = reader.fieldnames or []
            for key in required:
                if key not in columns:
                    raise CIRError(f"{path}:1: no column '{key}' (columns: {', '.join(columns) or 'none'}; "
                                   f"{_key_hint(key, fmt)}; separator {separator!r})")
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise CIRError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise CIRError(f"{path}: malformed CSV ({e})") from None


def _key_hint(key: str, fmt: TripletFormat) -> str:
    flag = {fmt.reference_key: "--csv-reference-key", fmt.caption_key: "--csv-caption-key"}.get(key, "")
    return f"choose the column with {flag}" if flag else "check the column names"


def load_triplets(root: Path, split: str, fmt: TripletFormat | None = None,
                  images: ImageCheck | None = None) -> list[CIRSplit]:
    """One CIRSplit per group of the split file (one if it has no group column); its queries are
    a `QueryTable`, its gallery an `ImageFiles`: memory in proportion to the text, not to objects."""
    fmt, images = fmt or TripletFormat(), images or ImageCheck()
    path = split_file(root, split)
    protocol = read_protocol(root)
    columns = csv_columns(path, fmt) if path.suffix != ".jsonl" else None
    # The splits a run trains on (`used_only`) may repeat a query; an evaluated one may not.
    found = check(columns or row_columns(read_rows(path, fmt), fmt), path, fmt, allow_repeats=split in images.used_only)
    del columns
    table, several = found.table, found.table.all_ground_truths
    exclude = fmt.exclude_reference if fmt.exclude_reference is not None else protocol.get("exclude_reference", True)
    recall_ks = tuple(protocol.get("recall_ks", RECALL_KS))
    map_ks = tuple(protocol.get("map_ks", MAP_KS if several else ())) if len(table.targets.values) else ()
    views = tuple((name, index) for name, index in protocol.get("label_views", []))
    splits = []
    # Each image mention's group (a row's reference, targets, excluded entry), for the groups' galleries.
    mention_groups = np.repeat(found.group_codes, found.mention_counts) if len(found.group_names) > 1 else None
    for group, group_name in enumerate(found.group_names):
        queries, lines, named = table, found.lines, table.names  # one group: every row, every image
        if len(found.group_names) > 1:
            rows = np.flatnonzero(found.group_codes == group)
            queries, lines = table.take(rows), found.lines[rows]
            named = table.names[pd.unique(found.image_codes[mention_groups == group])]  # in order of first appearance
        gallery_path = gallery_file(root, split, group_name)
        apart = None
        if gallery_path is None:
            listing = GalleryListing(ImageFiles(named, path.parent))
        else:
            listing = read_gallery(gallery_path)
            apart = _check_listed(queries, lines, listing.files, path, gallery_path, bool(exclude))
        _check_labels(queries, lines, listing, path, split)
        candidates = listing.files
        if gallery_path is not None and split in images.used_only:
            candidates = candidates.take(pd.Index(named).get_indexer(candidates.names) >= 0)
        where = listing_lines(listing, gallery_path) if gallery_path else _row_lines(found, path)
        gallery = images.locate_files(candidates, gallery_path or path, where)
        query_images = None
        if apart is not None and len(apart):  # references that are no gallery entry: encoded apart
            query_images = images.locate_files(ImageFiles(table.names[apart], path.parent), path,
                                               _row_lines(found, path))
        labels = listing.labels_of(gallery)
        splits.append(images.drop_queries(
            CIRSplit(dataset="triplets", name=group_name, split=split, queries=queries, gallery=gallery,
                     exclude_reference=bool(exclude), recall_ks=recall_ks, map_ks=map_ks, gallery_labels=labels,
                     label_views=views if labels is not None else (), query_images=query_images),
            len(candidates)))
    del found, table
    return_freed_memory()
    return splits


def _row_lines(found: Checked, path: Path) -> Callable[[str], str]:
    """name -> `file:line` of the first row that names the image, for errors about it: worked out
    on the first call, which only an unusable image makes."""
    first_line: list[np.ndarray] = []

    def where(name: str) -> str:
        if not first_line:
            table = found.table
            mention_rows = np.repeat(np.arange(len(table)), found.mention_counts)
            codes, first = np.unique(found.image_codes, return_index=True)
            lines = np.zeros(len(table.names), dtype=np.int64)
            lines[codes] = found.lines[mention_rows[first]]
            first_line.append(lines)
        return f"{path.name}:{first_line[0][pd.Index(found.table.names).get_loc(name)]}"
    return where


def _check_listed(queries: QueryTable, lines: np.ndarray, gallery: ImageFiles, path: Path, gallery_path: Path,
                  exclude: bool) -> np.ndarray:
    """The codes of the references that are no gallery entry (in order of first appearance); a
    `CIRError` for the first row whose target or excluded entry is not in the gallery file, or
    whose reference is not while the protocol would leave it out of its ranking and the row names
    no other entry to leave out."""
    listed = pd.Index(gallery.names).get_indexer(queries.names) >= 0
    outside = ~listed[queries.reference]
    excluded = queries.excluded if queries.excluded is not None else np.full(len(queries), -1)
    has_excluded = excluded >= 0
    bad_reference = outside & ~has_excluded if exclude else np.zeros(len(queries), dtype=bool)
    bad_target = ~listed[queries.targets.values]
    bad_excluded = np.zeros(len(queries), dtype=bool)
    bad_excluded[has_excluded] = ~listed[excluded[has_excluded]]
    bad = bad_reference | bad_excluded
    bad[queries.targets.row_of_values()[bad_target]] = True
    if bad.any():
        row = int(np.argmax(bad))
        reason = ""
        if bad_reference[row]:
            role, code = "reference", queries.reference[row]
            reason = (f", and the protocol leaves each query's reference out of its ranking: name the gallery entry to "
                      f"leave out in 'excluded' (or set \"exclude_reference\": false in {PROTOCOL_FILE})")
        elif bad_target[queries.targets.offsets[row]:queries.targets.offsets[row + 1]].any():
            start, stop = queries.targets.offsets[row:row + 2]
            role, code = "target", queries.targets.values[start + int(np.argmax(bad_target[start:stop]))]
        else:
            role, code = "excluded entry", excluded[row]
        raise CIRError(f"{path}:{lines[row]}: {role} '{queries.names[code]}' is not in the gallery "
                       f"{gallery_path.name}{reason}")
    return pd.unique(queries.reference[outside])


def _check_labels(queries: QueryTable, lines: np.ndarray, listing: GalleryListing, path: Path, split: str) -> None:
    """A `CIRError` for the first row with a target label where the gallery has no labels."""
    if queries.target_labels is None or listing.labels is not None:
        return
    has = queries.target_labels != ""
    if has.any():
        raise CIRError(f"{path}:{lines[int(np.argmax(has))]}: a 'target_label' needs labelled gallery entries: list "
                       f"the gallery in {split}.gallery.jsonl with a 'label' for each entry")
