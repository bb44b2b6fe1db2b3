"""Deterministic synthetic "shapes world" data in the real CIRR, FashionIQ and CIRCO layouts.

Real CIR data sets are large and cannot be fetched on every machine, so the toolkit's
loaders, trainers and evaluators are exercised on a small 2-D world in the spirit of the CSS
benchmark: a scene holds 1-3 coloured shapes on a 3x3 grid, and a query is a reference scene
plus a caption describing one edit (recolour, reshape, resize, add, remove, move). Captions
(`captions.py`) name objects unambiguously, so the target is fully determined by reference +
caption and the task is learnable. The files are written in exactly the layouts described in
docs/datasets.md#layouts, so the same code paths read synthetic and real data.

Everything is derived from ``random.Random`` instances seeded by strings built from ``seed``:
the same arguments give byte-identical files.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "pink": (250, 130, 200),
}
SIZES = ("small", "large")
POSITIONS = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)
MAX_OBJECTS = 3
# Scene sizes of the base scene of a group: mostly 2-3 objects, so edits have room both ways.
BASE_OBJECT_WEIGHTS = {1: 0.15, 2: 0.45, 3: 0.40}
# (long / short, landscape?) - square images plus a few ratios on both sides of targetpad's 1.25.
ASPECTS = ((1.0, True), (1.25, True), (1.25, False), (1.5, True), (1.5, False))
ASPECT_WEIGHTS = (0.4, 0.15, 0.15, 0.15, 0.15)
RADIUS = {"small": 0.27, "large": 0.45}  # fraction of the smaller cell side
JITTER = 0.05  # fraction of the cell side; keeps large objects inside their cell

CIRR_BACKGROUND = ("gray", (128, 128, 128))
FIQ_BACKGROUNDS = {
    "dress": ("black", (25, 25, 25)),
    "shirt": ("white", (240, 240, 240)),
    "toptee": ("beige", (200, 190, 160)),
}
CIRR_SPLITS = (("train", "train"), ("val", "dev"), ("test1", "test1"))  # (json name, folder)
FIQ_SPLITS = ("train", "val", "test")
CIRR_VARIANTS = 5  # CIRR img_set members: base + 5 near-variants = 6
FIQ_VARIANTS = 3  # FashionIQ has no sets; ~2 gallery images per query like the real one
QUERIES_PER_GROUP = 2
FIQ_PNG_EVERY = 10  # real FashionIQ copies mix .jpg with some .png
ASIN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"



class Obj(NamedTuple):
    """One object of a scene; ``cell`` indexes POSITIONS (row-major 3x3 grid)."""

    shape: str
    colour: str
    size: str
    cell: int


Scene = tuple[Obj, ...]  # sorted by cell, cells distinct


@dataclass(frozen=True)
class Edit:
    """A single change of a scene: ``before`` becomes ``after`` (None = absent).

    Storing both sides makes the inverse edit free, so a query can also go from a
    variant back to its base scene.
    """

    before: Obj | None
    after: Obj | None

    @property
    def kind(self) -> str:
        if self.before is None:
            return "add"
        if self.after is None:
            return "remove"
        if self.before.colour != self.after.colour:
            return "colour"
        if self.before.shape != self.after.shape:
            return "shape"
        if self.before.size != self.after.size:
            return "bigger" if self.after.size == "large" else "smaller"
        return "move"

    def inverse(self) -> Edit:
        return Edit(self.after, self.before)

    def apply(self, scene: Scene) -> Scene:
        objs = [o for o in scene if o != self.before]
        if self.after is not None:
            objs.append(self.after)
        return tuple(sorted(objs, key=lambda o: o.cell))


# ---------------------------------------------------------------- world sampling


def _random_object(rng: random.Random, cell: int) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), cell)


def _random_scene(rng: random.Random) -> Scene:
    n = rng.choices(list(BASE_OBJECT_WEIGHTS), weights=list(BASE_OBJECT_WEIGHTS.values()))[0]
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    return tuple(_random_object(rng, c) for c in cells)


def _empty_cells(scene: Scene) -> list[int]:
    taken = [o.cell for o in scene]
    return [c for c in range(len(POSITIONS)) if c not in taken]


def _random_edit(rng: random.Random, scene: Scene) -> Edit:
    """Pick a valid single edit; scenes keep 1..MAX_OBJECTS objects in distinct cells."""
    kinds = ["colour", "shape", "size", "move"]
    if len(scene) > 1:
        kinds.append("remove")
    if len(scene) < MAX_OBJECTS:
        kinds.append("add")
    kind = rng.choice(kinds)
    if kind == "add":
        return Edit(None, _random_object(rng, rng.choice(_empty_cells(scene))))
    obj = rng.choice(scene)
    if kind == "remove":
        return Edit(obj, None)
    if kind == "colour":
        return Edit(obj, obj._replace(colour=rng.choice([c for c in COLOURS if c != obj.colour])))
    if kind == "shape":
        return Edit(obj, obj._replace(shape=rng.choice([s for s in SHAPES if s != obj.shape])))
    if kind == "size":
        return Edit(obj, obj._replace(size="small" if obj.size == "large" else "large"))
    return Edit(obj, obj._replace(cell=rng.choice(_empty_cells(scene))))


@dataclass
class Group:
    """A base scene and near-variants, each one single edit away from the base."""

    base: Scene
    edits: list[Edit]

    @property
    def scenes(self) -> list[Scene]:
        return [self.base] + [e.apply(self.base) for e in self.edits]


def _make_group(rng: random.Random, n_variants: int, used: set[Scene]) -> Group:
    """Sample a group whose scenes are new to ``used`` (and added to it).

    Keeping every scene unique within a layout means no two gallery images show the same
    content, so each query has exactly one correct answer and no scene leaks across splits.
    """
    for _ in range(1000):
        base = _random_scene(rng)
        if base in used:
            continue
        seen = {base}
        edits: list[Edit] = []
        for _ in range(50 * n_variants):
            edit = _random_edit(rng, base)
            variant = edit.apply(base)
            if variant not in seen and variant not in used:
                seen.add(variant)
                edits.append(edit)
                if len(edits) == n_variants:
                    group = Group(base, edits)
                    used.update(group.scenes)
                    return group
    raise RuntimeError("shapes world exhausted: could not sample a new group")


def _pick_queries(rng: random.Random, group: Group, n_queries: int) -> list[tuple[int, int, Edit]]:
    """Return (reference index, target index, edit) within ``group.scenes``.

    The first query goes base -> variant; later ones go either way, since the inverse of a
    single edit is captioned as easily from the variant's side.
    """
    variants = rng.sample(range(1, len(group.scenes)), n_queries)
    queries = []
    for k, v in enumerate(variants):
        edit = group.edits[v - 1]
        if k > 0 and rng.random() < 0.5:
            queries.append((v, 0, edit.inverse()))
        else:
            queries.append((0, v, edit))
    return queries


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageJob:
    """Everything needed to render and save one image, fixed at planning time."""

    path: Path
    scene: Scene
    background: tuple[int, int, int]
    width: int
    height: int
    jitter: tuple[tuple[float, float], ...]  # per object, in cell fractions


def _plan_image(rng: random.Random, path: Path, scene: Scene,
                background: tuple[int, int, int], size: int) -> ImageJob:
    ratio, landscape = rng.choices(ASPECTS, weights=ASPECT_WEIGHTS)[0]
    long_side = round(size * ratio)
    width, height = (long_side, size) if landscape else (size, long_side)
    jitter = tuple((rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)) for _ in scene)
    return ImageJob(path, scene, background, width, height, jitter)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = 0.85 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "star":
        return [
            (cx + rad * math.cos(a), cy + rad * math.sin(a))
            for k in range(10)
            for rad, a in [(r if k % 2 == 0 else 0.5 * r, -math.pi / 2 + k * math.pi / 5)]
        ]
    raise ValueError(f"no polygon for shape {shape!r}")


def render(job: ImageJob) -> Image.Image:
    """Draw the scene; geometry scales with the image's cell size."""
    image = Image.new("RGB", (job.width, job.height), job.background)
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = job.width / 3, job.height / 3
    for obj, (jx, jy) in zip(job.scene, job.jitter):
        row, col = divmod(obj.cell, 3)
        cx = (col + 0.5 + jx) * cell_w
        cy = (row + 0.5 + jy) * cell_h
        r = RADIUS[obj.size] * min(cell_w, cell_h)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), fill=fill)
    return image


def _save(job: ImageJob) -> None:
    image = render(job)
    if job.path.suffix == ".jpg":
        image.save(job.path, "JPEG", quality=95)
    else:
        image.save(job.path, "PNG")
