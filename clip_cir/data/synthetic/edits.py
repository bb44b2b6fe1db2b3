"""The kind of edit behind each query of a synthetic world, kept beside the real layouts' files.

A benchmark that reports recall per kind of edit (colour, shape, size, add, remove, move) needs
to know each query's edit, which no real layout has a field for: the layouts stay exactly the
real datasets' files, and the kinds go in one sidecar JSON per dataset, category and split under
`<root>/synthetic_edits/`, keyed by the query's identity in its layout (CIRR's `pairid`, the
entry's position in FashionIQ's caption file, CIRCO's annotation `id`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError

EDITS_FOLDER = "synthetic_edits"
EDIT_KINDS = ("colour", "shape", "size", "add", "remove", "move")
"""The kinds a query's edit is reported by; `Edit.kind`'s "bigger" and "smaller" are both "size"."""
KEY_DESCRIPTION = {
    "cirr": "pairid in cap.rc2.<split>.json",
    "fashioniq": "position (from 0) of the entry in cap.<category>.<split>.json",
    "circo": "annotation id in annotations/<split>.json",
}


def reported_kind(kind: str) -> str:
    """The reported kind of an `Edit.kind`: both directions of a resize are one kind, "size"."""
    return "size" if kind in ("bigger", "smaller") else kind


def edits_file(root: str | os.PathLike, dataset: str, category: str | None, split: str) -> Path:
    """`<root>/synthetic_edits/<dataset>_<category or ->_<split>.json`."""
    return Path(root) / EDITS_FOLDER / f"{dataset}_{category or '-'}_{split}.json"


def write_edit_kinds(root: str | os.PathLike, dataset: str, category: str | None, split: str,
                     kinds: Mapping[str, str]) -> None:
    """Write one split's sidecar: `kinds` maps the query's key in its layout to its edit's kind."""
    path = edits_file(root, dataset, category, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"dataset": dataset, "category": category, "split": split, "key": KEY_DESCRIPTION[dataset],
            "kinds": dict(kinds)}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def _layout_key(split: CIRSplit, qid: str) -> str:
    """A query's key in the sidecar: FashionIQ's qid is `<category>/<position>` (or, under protocols
    with several queries per entry, `<category>/<position>/<form>`), the others' is the key."""
    return qid.split("/")[1] if split.dataset == "fashioniq" else qid


def edit_kinds(root: str | os.PathLike, split: CIRSplit) -> list[str]:
    """The edit kind of each query of `split` (read from `root`, a synthetic world), in the split's order."""
    category = split.name if split.dataset == "fashioniq" else None
    path = edits_file(root, split.dataset, category, split.split)
    if not path.is_file():
        raise CIRError(f"{path}: no edit kinds recorded (not a synthetic world?)")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CIRError(f"{path}: unreadable edit kinds ({e})") from None
    kinds = body.get("kinds") if isinstance(body, dict) else None
    if not isinstance(kinds, dict):
        raise CIRError(f"{path}: no 'kinds' object of query -> edit kind")
    out = []
    for query in split.queries:
        kind = kinds.get(_layout_key(split, query.qid))
        if kind is None:
            raise CIRError(f"{path}: no edit kind recorded for query {query.qid} of {split.dataset} {split.split}")
        out.append(kind)
    return out
