"""CSS's 2-D query images: the flat top-view drawing of an image's object list, rendered once to
PNG files for the 2D->3D protocol.

The rule is google/tirg's `datasets.py`, `CSSDataset.get_img(idx, get_2d=True)` (its inner
`generate_2d_image`): a 64x64 white canvas; each object, in list order, painted over the earlier
ones in its colour's RGB value (the table below) at centre (row, column) = `pos * 64`, with half
size s = 4 pixels (8 when `size == "large"`):
- `rectangle`: rows int(y-s) up to int(y+s) (exclusive), columns int(x-s) up to int(x+s) (exclusive);
- `circle` (drawn as a diamond): each row r from int(y-s) to int(y+s) inclusive, columns
  int(x0) up to int(2x - x0) with x0 = x + (|r - y| - s) (added in that order);
- `triangle`: each row r from int(y-s) to int(y+s) exclusive, columns int(min(x0, x1)) up to
  int(max(x0, x1)) with x0 = x + (r - y + s) / 2, x1 = 2x - x0.
`int` truncates toward zero and bounds index the canvas as numpy does (a negative bound counts
from the far edge, a slice is clipped); a row at or past the bottom edge, where tirg's drawing fails
with an IndexError, is a CIRError here. tirg keeps the canvas as floats in [0, 1] (value / 255);
the PNG holds the same values times 255, exactly, so a transform's ToTensor gives tirg's floats back.

Where tirg would stop at an unknown colour (a KeyError) or silently paint nothing for an unknown
shape, this module stops with one line naming the file, the image and the object.

The files go to `$CLIP_CIR_CACHE/css_2d/<digest>/<split>/` (default `~/.cache/clip_cir`), where
`<digest>` names the annotation file's content and this drawing's version, so the user's data root
is never written to. A split's folder is rendered in a temporary folder and renamed into place
whole: a folder that exists is complete, and processes rendering at once (DDP ranks) keep the
first one's.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from clip_cir.errors import CIRError

CANVAS = 64
BACKGROUND = 255
COLOUR_VALUES: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (244, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 205, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SHAPES = ("rectangle", "circle", "triangle")
HALF_SIZE = 4.0
LARGE_FACTOR = 2
DRAWING_VERSION = 2
"""Part of the cache folder's name: bump it when the drawing changes, so old files are not reused."""

Rows = int | slice
"""Which canvas rows a run of pixels covers: one row, or (a rectangle) a slice of rows."""


def object_runs(obj: Mapping[str, Any]) -> list[tuple[Rows, int, int]]:
    """The (rows, first column, end column) runs one object paints, bounds as tirg computes them."""
    s = HALF_SIZE * LARGE_FACTOR if obj["size"] == "large" else HALF_SIZE
    y = float(obj["pos"][0]) * CANVAS
    x = float(obj["pos"][1]) * CANVAS
    shape = obj["shape"]
    if shape == "rectangle":
        return [(slice(int(y - s), int(y + s)), int(x - s), int(x + s))]
    runs: list[tuple[Rows, int, int]] = []
    if shape == "circle":
        for row in range(int(y - s), int(y + s) + 1):
            left = x + (abs(row - y) - s)  # tirg's order of additions: it decides int() at whole numbers
            runs.append((row, int(left), int(2 * x - left)))
        return runs
    if shape == "triangle":
        for row in range(int(y - s), int(y + s)):
            edge = x + (row - y + s) / 2
            mirrored = 2 * x - edge
            runs.append((row, int(min(edge, mirrored)), int(max(edge, mirrored))))
        return runs
    raise ValueError(f"unknown shape {shape!r} (the 2-D drawing knows {', '.join(SHAPES)})")


def draw_objects(objects: Sequence[Mapping[str, Any]], where: str = "objects") -> np.ndarray:
    """The 64x64 RGB uint8 drawing of one image's objects; `where` names them in errors."""
    canvas = np.full((CANVAS, CANVAS, 3), BACKGROUND, dtype=np.uint8)
    for k, obj in enumerate(objects):
        what = f"{where} object {k}"
        if not isinstance(obj, Mapping) or any(key not in obj for key in ("shape", "color", "size", "pos")):
            raise CIRError(f"{what} should be a dict with 'shape', 'color', 'size' and 'pos', got {obj!r}")
        colour = COLOUR_VALUES.get(obj["color"])
        if colour is None:
            raise CIRError(f"{what} has colour {obj['color']!r}; the 2-D drawing knows {', '.join(COLOUR_VALUES)}")
        try:
            float(obj["pos"][0]), float(obj["pos"][1])
        except (TypeError, ValueError, IndexError, KeyError):
            raise CIRError(f"{what} 'pos' should be two numbers (row, column), got {obj['pos']!r}") from None
        if obj["shape"] not in SHAPES:
            raise CIRError(f"{what} has shape {obj['shape']!r}; the 2-D drawing knows {', '.join(SHAPES)}")
        runs = object_runs(obj)
        for rows, start, stop in runs:
            if isinstance(rows, int) and rows >= CANVAS:
                raise CIRError(f"{what} at pos {tuple(obj['pos'])} reaches row {rows}, off the {CANVAS}-pixel canvas")
            canvas[rows, start:stop] = colour
    return canvas


def cache_root() -> Path:
    """Where clip-cir keeps what it computes once: `$CLIP_CIR_CACHE`, else `~/.cache/clip_cir`."""
    return Path(os.environ.get("CLIP_CIR_CACHE", Path.home() / ".cache" / "clip_cir"))


def image_name(split: str, index: int) -> str:
    """The 2-D drawing's file stem, beside the 3-D image `css_<split>_<index>`: `..._2d`."""
    return f"css_{split}_{index:06d}_2d"


def query_images(annotation: Path, digest: str, split: str, objects: Sequence[Sequence[Mapping[str, Any]]],
                 indices: Iterable[int]) -> dict[int, Path]:
    """Image index -> its 2-D drawing's PNG, for `indices`, rendered on the first call for this
    annotation file's content (`digest`) and split. Errors name `annotation`."""
    wanted = sorted(set(indices))
    folder = cache_root() / "css_2d" / f"{digest[:24]}-v{DRAWING_VERSION}" / split
    paths = {i: folder / f"{image_name(split, i)}.png" for i in wanted}
    if folder.is_dir() and all(path.is_file() for path in paths.values()):
        return paths
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{split}-{os.getpid()}-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for i in wanted:
            pixels = draw_objects(objects[i], f"{annotation}: {split} objects_img[{i}]")
            Image.fromarray(pixels, "RGB").save(staging / paths[i].name, "PNG")
        if folder.is_dir():  # incomplete (files deleted by hand): replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder.is_dir() and all(path.is_file() for path in paths.values())):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths
