"""Any benchmark written in the generic triplet layout (`clip-cir convert`).

Each split becomes `<split>.jsonl` (absolute image paths), each gallery a gallery file in the
benchmark's own order, and `clip_cir.json` records the benchmark's protocol (reference removed
or not, the K of each metric, the label views), so `--dataset triplets` on the output ranks and
scores exactly as the benchmark's own reader does. `write_triplets` writes any `CIRSplit`s, so
every reader's output converts alike:

- A gallery without labels whose entries are distinct files is a text file of paths, and rows
  name images by their paths (CIRR, FashionIQ, CIRCO).
- Where a gallery has labels (hits by label, `Query.target_label`) or shows a file under several
  names (Spot-the-Diff), every gallery of the benchmark is a JSONL file of entries keeping the
  benchmark's names, and rows name entries by those names.
- A reference that is no gallery entry (`CIRSplit.query_images`) is written as its file's path;
  `Query.excluded` where a query masks another entry than its reference.

CIRR's image sets and soft labels have no place in the layout: Recall_subset and the soft-credit
metrics are CIRR-only. A query's raw `captions` are not kept: the rows hold the evaluation
caption and the caption forms training draws from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from clip_cir.data.images import ImageCheck
from clip_cir.data.registry import dataset_splits, load_splits
from clip_cir.data.triplets import PROTOCOL_FILE
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError


def _needs_entries(split: CIRSplit) -> bool:
    """Whether the gallery needs the JSONL form: labels, or a file shown under several names."""
    return split.gallery_labels is not None or len({str(p) for p in split.gallery.values()}) < len(split.gallery)


def _image_ref(split: CIRSplit, name: str, named: bool) -> str:
    """How a row names an image: a gallery entry by its name (JSONL gallery) or its file's path;
    a reference kept apart from the gallery by its file's path."""
    if name in split.gallery:
        return name if named else str(split.gallery[name])
    return str(split.image_file(name))


def _row(split: CIRSplit, query: Query, grouped: bool, named: bool) -> dict:
    row = {"id": query.qid, "reference": _image_ref(split, query.reference, named), "caption": query.eval_caption}
    if grouped:
        row["benchmark"] = split.name
    if query.aspects:
        row["aspects"] = list(query.aspects)
    if query.train_captions != (query.eval_caption,):
        row["train_captions"] = list(query.train_captions)
    targets = query.ground_truths or ((query.target,) if query.target is not None else ())
    if targets:
        refs = [_image_ref(split, t, named) for t in targets]
        row["target"] = refs if query.ground_truths else refs[0]
    if query.target_label is not None and split.gallery_labels is not None:
        row["target_label"] = query.target_label
    if query.excluded is not None:
        row["excluded"] = _image_ref(split, query.excluded, named)
    return row


def _entries(split: CIRSplit, where: str) -> str:
    """The gallery as JSONL entries: the benchmark's names (checked to read back as written)."""
    lines = []
    for name, path in split.gallery.items():
        if not name.strip() or name != name.strip() or os.path.normpath(name) != name:
            raise CIRError(f"{where}: gallery entry name {name!r} would not read back as written (names are "
                           f"compared as normalised paths); cannot convert")
        entry = {"image": str(path)}
        if name != str(path):
            entry["name"] = name
        if split.gallery_labels is not None:
            entry["label"] = split.gallery_labels[name]
        lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
    for name in split.query_images or {}:
        if str(split.query_images[name]) in split.gallery:
            raise CIRError(f"{where}: the file of reference '{name}' is also the name of a gallery entry; "
                           f"cannot convert")
    return "".join(lines)


def _protocol(split: CIRSplit) -> tuple:
    return (split.exclude_reference, split.recall_ks, split.map_ks if split.map_ks else None,
            split.label_views if split.gallery_labels is not None else None)


def _check_protocol(splits: Mapping[str, Sequence[CIRSplit]], exclude: bool, recall_ks: tuple,
                    map_ks: tuple, views: tuple, source: str) -> None:
    """A `CIRError` for a split whose protocol the one protocol file would change."""
    for name, parts in splits.items():
        for part in parts:
            has_targets = any(q.target is not None or q.ground_truths for q in part.queries)  # as the reader
            # gives mAP cut-offs only to a split with target images
            kept = (exclude, recall_ks, map_ks if has_targets else part.map_ks,
                    views if part.gallery_labels is not None else ())
            own = (part.exclude_reference, part.recall_ks, part.map_ks, part.label_views)
            if kept != own:
                keys = ("exclude_reference", "recall_ks", "map_ks", "label_views")
                differ = ", ".join(f"{k} {o} (others: {w})" for k, o, w in zip(keys, own, kept) if o != w)
                raise CIRError(f"{source} {name} {part.name}: {differ}; one {PROTOCOL_FILE} cannot hold both")


def write_triplets(splits: Mapping[str, Sequence[CIRSplit]], output: str | Path, source: str) -> list[Path]:
    """Write `splits` (split name -> its CIRSplits, one per group) under `output` in the triplet
    layout, with the protocol that makes `--dataset triplets` score them as they are; returns
    the files written. `source` is recorded in the protocol file."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise CIRError(f"{output}: exists and is not empty; choose a new --output folder")
    files: dict[Path, str] = {}
    protocols = set()
    named = any(_needs_entries(part) for parts in splits.values() for part in parts)  # one form for all galleries
    for split, parts in splits.items():
        grouped = len(parts) > 1 or any(part.name != part.dataset for part in parts)
        rows, galleries = [], {}
        for part in parts:
            rows += [_row(part, query, grouped, named) for query in part.queries]
            stem = f"{split}.{part.name}" if grouped else split
            galleries[output / f"{stem}.gallery.{'jsonl' if named else 'txt'}"] = (
                _entries(part, f"{source} {split} {part.name}") if named
                else "".join(f"{p}\n" for p in part.gallery.values()))
            protocols.add(_protocol(part))
        files[output / f"{split}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        files.update(galleries)
    # A test split without targets has no mAP cut-offs to contradict the others.
    with_map = {p for p in protocols if p[2] is not None} or protocols
    exclude, recall_ks, map_ks, _ = sorted(with_map, key=str)[0]
    views = next((p[3] for p in sorted(protocols, key=str) if p[3] is not None), ())
    _check_protocol(splits, exclude, recall_ks, map_ks or (), views, source)
    protocol = {"source": source, "exclude_reference": exclude, "recall_ks": list(recall_ks),
                "map_ks": list(map_ks or [])}
    if views:
        protocol["label_views"] = [list(view) for view in views]
    files[output / PROTOCOL_FILE] = json.dumps(protocol, indent=2) + "\n"
    output.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        file.write_text(text, encoding="utf-8")
    return list(files)


def convert(dataset: str, data_root: str | Path, output: str | Path,
            options: ReaderOptions | None = None) -> list[Path]:
    """Write every split of `dataset` under `output`; returns the files written.

    The images are not copied (the rows point at them) and need not all be present: only the
    annotations are read.
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise CIRError(f"{output}: exists and is not empty; choose a new --output folder")
    all_splits = {split: load_splits(dataset, data_root, split, images=ImageCheck(require_files=False),
                                     options=options) for split in dataset_splits(dataset)}
    if any(part.judgments is not None for parts in all_splits.values() for part in parts):
        raise CIRError(f"{dataset}: graded judgements (not targets) have no place in the triplet layout")
    return write_triplets(all_splits, output, dataset)
