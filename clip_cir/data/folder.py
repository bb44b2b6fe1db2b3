"""A folder of photos as a gallery: every image under it, recursively, with no annotation file.

This is how a catalogue is searched with a model trained elsewhere (the demo's and `rank`'s
`--gallery-dir`). Names are paths relative to the folder, in sorted order, so the gallery and its
feature cache key do not depend on the order the file system lists them in.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_gallery(root: str | os.PathLike, images: ImageCheck | None = None) -> CIRSplit:
    """The images under `root` (any depth, hidden folders skipped) as a CIRSplit without queries."""
    root = Path(root)
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
                    exclude_reference=False, recall_ks=())
