"""A folder of photos as a gallery: every image under it, recursively, with no annotation file.

This is how a catalogue is searched with a model trained elsewhere (the demo's and `rank`'s
`--gallery-dir`). Names are paths relative to the folder, in sorted order, so the gallery and its
feature cache key do not depend on the order the file system lists them in.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.triplets import TripletFormat, read_rows
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_gallery(root: str | os.PathLike, images: ImageCheck | None = None) -> CIRSplit:
    """The images under `root` (any depth, hidden folders skipped) as a CIRSplit without queries.

    A query by one of its images never gets that image back (`exclude_reference`, as CIRR's
    protocol): the demo and `rank` search a folder alike."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CIRError(f"{root}: not a folder (--gallery-dir takes the folder that holds the photos)")
    if not root.is_dir():
        raise CIRError(f"{root}: gallery folder not found")
    root = root.absolute()
    found: list[str] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in PHOTO_SUFFIXES]
    if not found:
        raise CIRError(f"{root}: no images ({', '.join(PHOTO_SUFFIXES)}) in this folder or below")
    images = images or ImageCheck()
    gallery = images.locate({name: [root / name] for name in sorted(found)}, root)
    return CIRSplit(dataset="folder", name=root.name, split="gallery", queries=[], gallery=gallery,
                    exclude_reference=True, recall_ks=())


def folder_queries(gallery: CIRSplit, path: str | os.PathLike, fmt: TripletFormat | None = None) -> CIRSplit:
    """`gallery` with the queries of a CSV/TSV/JSONL file of (reference, caption) rows: each
    reference is an image of the gallery folder (a path relative to the file, or absolute)."""
    fmt, path = fmt or TripletFormat(), Path(path)
    if not path.is_file():
        raise CIRError(f"{path}: queries file not found")
    root = Path(os.path.commonpath([str(p) for p in gallery.gallery.values()])) if len(gallery.gallery) > 1 else None
    by_file = {os.path.normpath(str(p)): name for name, p in gallery.gallery.items()}
    queries, seen = [], {}
    for line_number, row in read_rows(path, fmt):
        where = f"{path}:{line_number}"
        reference, caption = row.get(fmt.reference_key), row.get(fmt.caption_key)
        if not isinstance(reference, str) or not reference.strip():
            raise CIRError(f"{where}: empty reference")
        if not isinstance(caption, str) or not caption.strip():
            raise CIRError(f"{where}: empty caption")
        file = os.path.normpath(os.path.join(path.parent.absolute(), reference.strip()))
        if file not in by_file:
            raise CIRError(f"{where}: reference '{reference.strip()}' is not an image of the gallery folder "
                           f"{root or ''}".rstrip())
        qid = str(row.get(fmt.id_key) or line_number)
        if qid in seen:
            raise CIRError(f"{where}: duplicate query id '{qid}' (first at line {seen[qid]})")
        seen[qid] = line_number
        queries.append(Query(qid=qid, reference=by_file[file], captions=(caption.strip(),),
                             train_captions=(caption.strip(),), eval_caption=caption.strip()))
    if not queries:
        raise CIRError(f"{path}: no queries")
    return dataclasses.replace(gallery, queries=queries)
