"""A benchmark (CIRR, FashionIQ, CIRCO) written in the generic triplet layout (`clip-cir convert`).

Each split becomes `<split>.jsonl` (absolute image paths), each gallery a gallery file in the
benchmark's own order, and `clip_cir.json` records the benchmark's protocol (reference removed
or not, the K of each metric), so `--dataset triplets` on the output ranks exactly as the
benchmark's own reader does. CIRR's image sets and soft labels have no place in the layout:
Recall_subset and the soft-credit metrics are CIRR-only.
"""

from __future__ import annotations

import json
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.registry import dataset_splits, load_splits
from clip_cir.data.triplets import PROTOCOL_FILE
from clip_cir.data.types import CIRSplit, ReaderOptions
from clip_cir.errors import CIRError


def _row(split: CIRSplit, index: int, grouped: bool) -> dict:
    query = split.queries[index]
    row = {"id": query.qid, "reference": str(split.image_file(query.reference)), "caption": query.eval_caption}
    if grouped:
        row["benchmark"] = split.name
    if query.aspects:
        row["aspects"] = list(query.aspects)
    if query.train_captions != (query.eval_caption,):
        row["train_captions"] = list(query.train_captions)
    targets = query.ground_truths or ((query.target,) if query.target is not None else ())
    if targets:
        files = [str(split.gallery[t]) for t in targets]
        row["target"] = files if query.ground_truths else files[0]
    return row


def convert(dataset: str, data_root: str | Path, output: str | Path,
            options: ReaderOptions | None = None) -> list[Path]:
    """Write every split of `dataset` under `output`; returns the files written.

    The images are not copied (the rows point at them) and need not all be present: only the
    annotations are read.
    """
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise CIRError(f"{output}: exists and is not empty; choose a new --output folder")
    written: list[Path] = []
    protocols = set()
    all_splits = {split: load_splits(dataset, data_root, split, images=ImageCheck(require_files=False),
                                     options=options) for split in dataset_splits(dataset)}
    output.mkdir(parents=True, exist_ok=True)
    for split, parts in all_splits.items():
        grouped = dataset == "fashioniq"
        rows = [_row(part, i, grouped) for part in parts for i in range(len(part.queries))]
        path = output / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        written.append(path)
        for part in parts:
            gallery = output / (f"{split}.{part.name}.gallery.txt" if grouped else f"{split}.gallery.txt")
            gallery.write_text("".join(f"{p}\n" for p in part.gallery.values()), encoding="utf-8")
            written.append(gallery)
            protocols.add((part.exclude_reference, part.recall_ks, part.map_ks if part.map_ks else None))
    # A test split without targets has no mAP cut-offs to contradict the others.
    with_map = {p for p in protocols if p[2] is not None} or protocols
    exclude, recall_ks, map_ks = sorted(with_map, key=str)[0]
    protocol = {"source": dataset, "exclude_reference": exclude, "recall_ks": list(recall_ks),
                "map_ks": list(map_ks or [])}
    (output / PROTOCOL_FILE).write_text(json.dumps(protocol, indent=2) + "\n", encoding="utf-8")
    return [*written, output / PROTOCOL_FILE]
