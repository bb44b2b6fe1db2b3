"""Any CIR data in one documented layout (`--dataset triplets`): per split, one CSV, TSV or JSONL
file of queries, read into the same `CIRSplit` as the three benchmarks.

    DATA/<split>.jsonl | <split>.csv | <split>.tsv   one query per row: reference, caption, target(s)
    DATA/<split>.gallery.txt                          optional: the gallery, one image path per line
    DATA/<split>.<group>.gallery.txt                  optional: the gallery of one group (see below)
    DATA/clip_cir.json                                optional: the protocol (reference removed? which K)

Columns (names chosen by `TripletFormat`): `reference` and `target` are image paths, relative to
the file that lists them or absolute; `target` holds one path or several (a JSON list, or
`|`-separated in CSV), several meaning several ground truths (mAP@K as CIRCO computes it); it is
empty or absent in test splits. `caption` is the relative caption. Optional: `id` (the query id,
unique; default: the line number), `benchmark` (a group: one CIRSplit per value, ranked against
its own gallery, as FashionIQ's categories) and, in JSONL, `train_captions` (the caption forms
training draws from) and `aspects` (semantic aspects: mAP@10 is reported per aspect, as CIRCO's).
Without a gallery file the gallery is every image the split names.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

SUFFIXES = (".jsonl", ".csv", ".tsv")
PROTOCOL_FILE = "clip_cir.json"
RECALL_KS = (1, 5, 10, 50)
MAP_KS = (5, 10, 25, 50)
"""Used when any query of a split has several targets (CIRCO's cut-offs)."""


@dataclass(frozen=True)
class TripletFormat:
    """How the split files name their columns (open_clip's `--csv-*-key` convention), and the
    protocol choices the command line may override."""

    reference_key: str = "reference"
    caption_key: str = "caption"
    target_key: str = "target"
    id_key: str = "id"
    group_key: str = "benchmark"
    separator: str | None = None
    """CSV separator; default by suffix: ',' for .csv, tab for .tsv."""
    target_separator: str = "|"
    """Between several targets in one CSV cell."""
    exclude_reference: bool | None = None
    """Remove each reference from its own ranking; None: the protocol file's choice, else True."""


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
    unknown = set(protocol) - {"exclude_reference", "recall_ks", "map_ks", "source"}
    if unknown:
        raise CIRError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} "
                       f"(known: exclude_reference, recall_ks, map_ks, source)")
    for key in ("recall_ks", "map_ks"):
        ks = protocol.get(key, [1])
        if not (isinstance(ks, list) and all(isinstance(k, int) and k > 0 for k in ks)):
            raise CIRError(f"{path}: '{key}' should be a list of positive integers")
    return protocol


def read_rows(path: Path, fmt: TripletFormat) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every query row; a malformed line or a missing column is an error
    naming file:line."""
    required = (fmt.reference_key, fmt.caption_key)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix == ".jsonl":
                for line_number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CIRError(f"{path}:{line_number}: malformed JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise CIRError(f"{path}:{line_number}: a row should be a JSON object")
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


def _targets(value: Any, fmt: TripletFormat, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise CIRError(f"{where}: '{fmt.target_key}' should be image paths")
        return tuple(v.strip() for v in value)
    if not isinstance(value, str):
        raise CIRError(f"{where}: '{fmt.target_key}' should be an image path or a list of them")
    return tuple(v.strip() for v in value.split(fmt.target_separator) if v.strip())


@dataclass
class _Group:
    queries: list[Query]
    named: dict[str, Path]
    """Image name -> file, in order of first appearance."""
    lines: dict[str, int]
    """Query id -> its line, for errors about it."""


class _Names:
    """Image path as written -> (name, file), each path parsed once however many rows use it."""

    def __init__(self, base: Path):
        self.base, self.seen = str(base), {}

    def __call__(self, value: Any, key: str, where: str) -> tuple[str, Path]:
        known = self.seen.get(value)
        if known is not None:
            return known
        if not isinstance(value, str) or not value.strip():
            raise CIRError(f"{where}: empty {key}")
        name = os.path.normpath(value.strip())
        known = self.seen[value] = (name, Path(name if os.path.isabs(name) else os.path.join(self.base, name)))
        return known


def _read_gallery(path: Path) -> dict[str, Path]:
    gallery: dict[str, Path] = {}
    names = _Names(path.parent)
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if line.strip():
                name, file = names(line, "image path", f"{path}:{line_number}")
                gallery.setdefault(name, file)
    return gallery


def load_triplets(root: Path, split: str, fmt: TripletFormat | None = None,
                  images: ImageCheck | None = None) -> list[CIRSplit]:
    """One CIRSplit per group of the split file (one if it has no group column)."""
    fmt, images = fmt or TripletFormat(), images or ImageCheck()
    path = split_file(root, split)
    protocol = read_protocol(root)
    groups: dict[str, _Group] = {}
    first_line: dict[str, int] = {}
    with_targets = without_targets = 0
    parse = _Names(path.parent)
    for line_number, row in read_rows(path, fmt):
        where = f"{path}:{line_number}"
        reference, reference_file = parse(row.get(fmt.reference_key), "reference", where)
        caption = row.get(fmt.caption_key)
        if not isinstance(caption, str) or not caption.strip():
            raise CIRError(f"{where}: empty caption")
        caption = caption.strip()
        targets = [parse(t, "target", where) for t in _targets(row.get(fmt.target_key), fmt, where)]
        if len(targets) == 1 and targets[0][0] == reference:
            raise CIRError(f"{where}: the reference '{reference}' is also its only target")
        qid = row.get(fmt.id_key)
        qid = str(line_number) if qid is None or qid == "" else str(qid)
        if qid in first_line:
            raise CIRError(f"{where}: duplicate query id '{qid}' (first at line {first_line[qid]})")
        first_line[qid] = line_number
        with_targets, without_targets = with_targets + bool(targets), without_targets + (not targets)
        if with_targets and without_targets:
            raise CIRError(f"{where}: some rows have a {fmt.target_key} and others none; "
                           f"a split has targets for every query or for none")
        aspects = row.get("aspects") or []
        if not (isinstance(aspects, list) and all(isinstance(a, str) for a in aspects)):
            raise CIRError(f"{where}: 'aspects' should be a list of names")
        train_captions = row.get("train_captions") or [caption]
        if not (isinstance(train_captions, list) and all(isinstance(c, str) and c for c in train_captions)):
            raise CIRError(f"{where}: 'train_captions' should be a list of captions")
        group_name = str(row.get(fmt.group_key) or "triplets")  # ungrouped: flat metric keys
        group = groups.setdefault(group_name, _Group([], {}, {}))
        group.lines[qid] = line_number
        for name, file in [(reference, reference_file), *targets]:
            group.named.setdefault(name, file)
        target_names = tuple(name for name, _ in targets)
        group.queries.append(Query(qid=qid, reference=reference, captions=(caption,),
                                   train_captions=tuple(train_captions), eval_caption=caption,
                                   target=target_names[0] if target_names else None,
                                   ground_truths=target_names if len(target_names) > 1 else None,
                                   aspects=tuple(aspects)))
    if not groups:
        raise CIRError(f"{path}: no queries")
    several = any(q.ground_truths for g in groups.values() for q in g.queries)
    if several:  # mAP@K ranks every query against its ground truths, a single one included
        for group in groups.values():
            group.queries = [q if q.ground_truths or q.target is None else
                             dataclasses.replace(q, ground_truths=(q.target,)) for q in group.queries]
    exclude = fmt.exclude_reference if fmt.exclude_reference is not None else protocol.get("exclude_reference", True)
    recall_ks = tuple(protocol.get("recall_ks", RECALL_KS))
    map_ks = tuple(protocol.get("map_ks", MAP_KS if several else ())) if with_targets else ()
    splits = []
    for group_name, group in groups.items():
        gallery_path = next((p for p in (root / f"{split}.{group_name}.gallery.txt", root / f"{split}.gallery.txt")
                             if p.is_file()), None)
        listed = group.named
        if gallery_path is not None:
            listed = _read_gallery(gallery_path)
            for query in group.queries:
                for name in (query.reference, *(query.ground_truths or [query.target] * (query.target is not None))):
                    if name not in listed:
                        role = "reference" if name == query.reference else "target"
                        raise CIRError(f"{path}:{group.lines[query.qid]}: {role} '{name}' is not in the gallery "
                                       f"{gallery_path.name}")
        used = {n for q in group.queries for n in (q.reference, *(q.ground_truths or (q.target,))) if n}
        candidates = images.gallery_candidates(split, {n: [p] for n, p in listed.items()}, used)
        gallery = images.locate(candidates, gallery_path or path)
        splits.append(images.drop_queries(
            CIRSplit(dataset="triplets", name=group_name, split=split, queries=group.queries, gallery=gallery,
                     exclude_reference=bool(exclude), recall_ks=recall_ks, map_ks=map_ks),
            len(candidates)))
    return splits
