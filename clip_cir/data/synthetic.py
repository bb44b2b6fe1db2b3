"""Deterministic synthetic "shapes world" data in the real CIRR, FashionIQ and CIRCO layouts.

Real CIR data sets are large and cannot be fetched on every machine, so the toolkit's
loaders, trainers and evaluators are exercised on a small 2-D world in the spirit of the CSS
benchmark: a scene holds 1-3 coloured shapes on a 3x3 grid, and a query is a reference scene
plus a caption describing one edit (recolour, reshape, resize, add, remove, move). Captions
name objects unambiguously, so the target is fully determined by reference + caption and the
task is learnable. The files are written in exactly the layouts described in DESIGN.md §3, so
the same code paths read synthetic and real data.

Everything is derived from ``random.Random`` instances seeded by strings built from ``seed``:
the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageDraw

try:
    from tqdm import tqdm
except ImportError:  # tqdm only draws a progress bar; generation works without it
    tqdm = None

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

# Placeholders: {ref} a referent ("the red circle"), {new} the new colour / shape,
# {obj} a full new object ("a small green square"), {loc} "at the top left" / "in the center",
# {dest} "to the top left".
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "make {ref} {new}",
        "change the colour of {ref} to {new}",
        "{ref} should be {new} instead",
        "turn {ref} {new}",
        "paint {ref} {new}",
        "recolour {ref} {new}",
        "{ref} is {new} now",
        "switch the colour of {ref} to {new}",
    ),
    "shape": (
        "replace {ref} with a {new}",
        "turn {ref} into a {new}",
        "change {ref} into a {new}",
        "{ref} should be a {new} instead",
        "change the shape of {ref} to a {new}",
        "swap {ref} for a {new} of the same colour and size",
        "make {ref} a {new}",
    ),
    "bigger": (
        "make {ref} bigger",
        "enlarge {ref}",
        "{ref} should be large",
        "increase the size of {ref}",
        "make {ref} larger",
        "scale up {ref}",
    ),
    "smaller": (
        "make {ref} smaller",
        "shrink {ref}",
        "{ref} should be small",
        "decrease the size of {ref}",
        "reduce the size of {ref}",
        "scale down {ref}",
    ),
    "add": (
        "add {obj} {loc}",
        "put {obj} {loc}",
        "there should also be {obj} {loc}",
        "insert {obj} {loc}",
        "place {obj} {loc}",
        "{loc}, add {obj}",
        "include {obj} {loc}",
    ),
    "remove": (
        "remove {ref}",
        "delete {ref}",
        "take away {ref}",
        "get rid of {ref}",
        "{ref} should be gone",
        "without {ref}",
        "erase {ref}",
    ),
    "move": (
        "move {ref} {dest}",
        "put {ref} {loc} instead",
        "{ref} should be {loc}",
        "shift {ref} {dest}",
        "relocate {ref} {dest}",
        "place {ref} {loc}",
    ),
}
TITLE_TEMPLATES = (
    "{d}",
    "a picture of {d}",
    "{d} on a {bg} background",
    "an image of {d}",
    "a {bg} background with {d}",
    "a drawing of {d}",
)
POSITIONAL_REFERENT_P = 0.25  # sometimes name an object by position even when not needed
ATTRIBUTE_SETS = ((), ("colour",), ("size",), ("size", "colour"))


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


# ---------------------------------------------------------------- language


def _loc(cell: int) -> str:
    return "in the center" if POSITIONS[cell] == "center" else f"at the {POSITIONS[cell]}"


def _noun(obj: Obj, attrs: tuple[str, ...]) -> str:
    words = [getattr(obj, a) for a in ("size", "colour") if a in attrs]
    return " ".join(words + [obj.shape])


def _full(obj: Obj) -> str:
    return f"a {_noun(obj, ('size', 'colour'))}"


def _referent(rng: random.Random, scene: Scene, obj: Obj) -> str:
    """Name ``obj`` so that it is the only object in ``scene`` matching the description."""
    unique = [
        attrs for attrs in ATTRIBUTE_SETS
        if sum(o.shape == obj.shape and all(getattr(o, a) == getattr(obj, a) for a in attrs)
               for o in scene) == 1
    ]
    if unique and rng.random() >= POSITIONAL_REFERENT_P:
        return "the " + _noun(obj, rng.choice(unique))
    if rng.random() < 0.3:
        return f"the {rng.choice(('object', 'figure'))} {_loc(obj.cell)}"
    return f"the {_noun(obj, rng.choice(ATTRIBUTE_SETS))} {_loc(obj.cell)}"


def _caption(rng: random.Random, scene: Scene, edit: Edit, template: str) -> str:
    """Fill ``template`` for ``edit`` applied to ``scene`` (the reference)."""
    fields = {}
    if edit.before is not None:
        fields["ref"] = _referent(rng, scene, edit.before)
    if edit.after is not None:
        fields["obj"] = _full(edit.after)
        fields["loc"] = _loc(edit.after.cell)
        fields["dest"] = "to the " + POSITIONS[edit.after.cell]
        fields["new"] = edit.after.colour if edit.kind == "colour" else edit.after.shape
    return template.format(**fields)


def cirr_caption(rng: random.Random, scene: Scene, edit: Edit) -> str:
    """One sentence-like caption, as CIRR's single caption per query."""
    text = _caption(rng, scene, edit, rng.choice(TEMPLATES[edit.kind]))
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.5 else text


def fiq_captions(rng: random.Random, scene: Scene, edit: Edit) -> list[str]:
    """Two different phrasings of one edit, with FashionIQ-like case/punctuation noise."""
    first, second = rng.sample(TEMPLATES[edit.kind], 2)
    captions = []
    for template in (first, second):
        text = _caption(rng, scene, edit, template)
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.3:
            text += "."
        captions.append(text)
    return captions


def describe_scene(rng: random.Random, scene: Scene, background: str) -> str:
    """Whole-scene description used as a CLIP pretraining title."""
    parts = [f"{_full(o)} {_loc(o.cell)}" for o in rng.sample(scene, len(scene))]
    desc = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return rng.choice(TITLE_TEMPLATES).format(d=desc, bg=background)


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


# ---------------------------------------------------------------- layouts


def _split_queries(n: int) -> list[int]:
    """Queries per group: QUERIES_PER_GROUP each, the last group takes the remainder."""
    return [min(QUERIES_PER_GROUP, n - start) for start in range(0, n, QUERIES_PER_GROUP)]


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _target_soft(rng: random.Random, members: list[str], ref: str, tgt: str) -> dict[str, float]:
    """The target scores 1.0; occasionally another member gets a CIRR-style soft label."""
    soft = {tgt: 1.0}
    others = [m for m in members if m not in (ref, tgt)]
    draw = rng.random()
    if draw < 0.2:
        soft[rng.choice(others)] = -1.0
    elif draw < 0.25:
        soft[rng.choice(others)] = 0.5
    return soft


class _Writer:
    """Collects image jobs and pretraining titles while the layouts are planned."""

    def __init__(self, root: Path, size: int):
        self.root = root
        self.size = size
        self.jobs: list[ImageJob] = []
        self.titles: list[tuple[str, str]] = []

    def image(self, rng: random.Random, rel: str, scene: Scene, background: tuple[str, tuple],
              pretrain: bool) -> None:
        self.jobs.append(_plan_image(rng, self.root / rel, scene, background[1], self.size))
        if pretrain:
            self.titles.append((rel, describe_scene(rng, scene, background[0])))


def _plan_cirr(writer: _Writer, seed: int, counts: dict[str, int]) -> dict:
    base = Path("cirr_dataset")
    used: set[Scene] = set()
    summary = {}
    for split, folder in CIRR_SPLITS:
        rng = random.Random(f"{seed}:cirr:{split}")
        image_split: dict[str, str] = {}
        captions: list[dict] = []
        group_queries = _split_queries(counts[split])
        for gid, n_queries in enumerate(group_queries):
            group = _make_group(rng, CIRR_VARIANTS, used)
            scenes = group.scenes
            order = list(range(len(scenes)))  # members order: shuffled, like CIRR
            rng.shuffle(order)
            names = {idx: f"{folder}-{gid}-{rank // 2}-img{rank % 2}"
                     for rank, idx in enumerate(order)}
            members = [names[i] for i in order]
            subdir = f"{folder}/{gid // 100}" if split == "train" else folder
            for idx in order:
                rel = f"{subdir}/{names[idx]}.png"
                image_split[names[idx]] = f"./{rel}"
                writer.image(rng, f"{base}/{rel}", scenes[idx], CIRR_BACKGROUND,
                             pretrain=split == "train")
            for ref, tgt, edit in _pick_queries(rng, group, n_queries):
                entry = {
                    "pairid": len(captions),
                    "reference": names[ref],
                    "target_hard": names[tgt],
                    "target_soft": _target_soft(rng, members, names[ref], names[tgt]),
                    "caption": cirr_caption(rng, scenes[ref], edit),
                    "img_set": {"id": gid, "members": members,
                                "reference_rank": members.index(names[ref]),
                                "target_rank": members.index(names[tgt])},
                }
                if split == "test1":
                    del entry["target_hard"], entry["target_soft"], entry["img_set"]["target_rank"]
                captions.append(entry)
        _write_json(writer.root / base / "cirr" / "captions" / f"cap.rc2.{split}.json", captions)
        _write_json(writer.root / base / "cirr" / "image_splits" / f"split.rc2.{split}.json",
                    image_split)
        summary[split] = {"queries": len(captions), "images": len(image_split),
                          "groups": len(group_queries)}
    return summary


def _asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "B" + "".join(rng.choice(ASIN_ALPHABET) for _ in range(9))
        if name not in taken:
            taken.add(name)
            return name


def _plan_fashioniq(writer: _Writer, seed: int, counts: dict[str, int]) -> dict:
    base = Path("fashionIQ_dataset")
    names_taken: set[str] = set()
    summary: dict[str, dict] = {}
    n_images = 0
    for c, (category, background) in enumerate(FIQ_BACKGROUNDS.items()):
        used: set[Scene] = set()
        summary[category] = {}
        for split in FIQ_SPLITS:
            rng = random.Random(f"{seed}:fashioniq:{category}:{split}")
            n_cat = counts[split] // 3 + (c < counts[split] % 3)
            image_split: list[str] = []
            captions: list[dict] = []
            for n_queries in _split_queries(n_cat):
                group = _make_group(rng, FIQ_VARIANTS, used)
                scenes = group.scenes
                names = [_asin(rng, names_taken) for _ in scenes]
                for name, scene in zip(names, scenes):
                    ext = ".png" if n_images % FIQ_PNG_EVERY == FIQ_PNG_EVERY // 2 else ".jpg"
                    n_images += 1
                    image_split.append(name)
                    writer.image(rng, f"{base}/images/{name}{ext}", scene, background,
                                 pretrain=split == "train")
                for ref, tgt, edit in _pick_queries(rng, group, n_queries):
                    entry = {"target": names[tgt], "candidate": names[ref],
                             "captions": fiq_captions(rng, scenes[ref], edit)}
                    if split == "test":
                        del entry["target"]
                    captions.append(entry)
            _write_json(writer.root / base / "captions" / f"cap.{category}.{split}.json", captions)
            _write_json(writer.root / base / "image_splits" / f"split.{category}.{split}.json",
                        image_split)
            summary[category][split] = {"queries": len(captions), "images": len(image_split)}
    return summary


CIRCO_BACKGROUND = CIRR_BACKGROUND
CIRCO_VARIANTS = 3  # the target's edit plus two other single edits of the reference (hard negatives)
CIRCO_MAX_GROUND_TRUTHS = 8  # 1..8 renders of the target scene per query: 4.5 on average (real CIRCO: 4.53)
CIRCO_MAX_ID = 581_929  # COCO 2017 ids stay below this
# The CIRCO semantic aspect each kind of edit exercises (the real annotations' vocabulary).
CIRCO_ASPECTS = {
    "colour": "compare_change", "shape": "compare_change", "bigger": "comparative_statement",
    "smaller": "comparative_statement", "add": "addition", "remove": "negation", "move": "spatial_relations_background",
}


def _shared_concept(scene: Scene, edit: Edit) -> str:
    """What reference and target have in common: an object the edit leaves alone (else the edited
    object as it was), described fully, as CIRCO's `shared_concept` ("a teddy bear")."""
    kept = [o for o in scene if o != edit.before]
    obj = kept[0] if kept else edit.before
    return f"{_full(obj)} {_loc(obj.cell)}"


def _plan_circo(writer: _Writer, seed: int, n_queries: int, n_distractors: int) -> dict:
    """CIRCO's layout: one COCO-style gallery for val and test, several ground truths per query.

    A query is a reference scene and one edit. Its ground truths are 1..8 separate images of the
    edited scene (different placement jitter and aspect ratio: other photos that satisfy the
    same edit), the first being `target_img_id`. Distractors: the reference itself (CIRCO does
    not remove it), two other single edits of the reference, and `n_distractors` unrelated scenes.
    Image ids are random COCO-like integers; files are `<12-digit id>.jpg`.
    """
    base = Path("CIRCO")
    rng = random.Random(f"{seed}:circo")
    used: set[Scene] = set()
    taken: set[int] = set()
    images: list[dict] = []

    def add_image(scene: Scene) -> int:
        while True:
            image_id = rng.randrange(1, CIRCO_MAX_ID)
            if image_id not in taken:
                taken.add(image_id)
                break
        file_name = f"{image_id:012d}.jpg"
        writer.image(rng, f"{base}/COCO2017_unlabeled/unlabeled2017/{file_name}", scene, CIRCO_BACKGROUND,
                     pretrain=False)
        job = writer.jobs[-1]
        images.append({"license": 0, "file_name": file_name, "coco_url": "", "height": job.height,
                       "width": job.width, "date_captured": "", "flickr_url": "", "id": image_id})
        return image_id

    summary: dict[str, dict] = {}
    for split in ("val", "test"):
        annotations = []
        n_ground_truths = 0
        for qid in range(n_queries):
            group = _make_group(rng, CIRCO_VARIANTS, used)
            reference, target, *others = group.scenes
            edit = group.edits[0]
            reference_id = add_image(reference)
            gts = [add_image(target) for _ in range(rng.randint(1, CIRCO_MAX_GROUND_TRUTHS))]
            for scene in others:
                add_image(scene)
            n_ground_truths += len(gts)
            caption = cirr_caption(rng, reference, edit).rstrip(".")
            entry = {"reference_img_id": reference_id, "target_img_id": gts[0],
                     "relative_caption": caption[0].lower() + caption[1:],
                     "shared_concept": _shared_concept(reference, edit), "gt_img_ids": gts, "id": qid,
                     "semantic_aspects": [CIRCO_ASPECTS[edit.kind]]}
            if split == "test":
                entry = {k: entry[k] for k in ("reference_img_id", "relative_caption", "shared_concept", "id")}
            annotations.append(entry)
        _write_json(writer.root / base / "annotations" / f"{split}.json", annotations)
        summary[split] = {"queries": n_queries, "ground_truths": n_ground_truths}
    for _ in range(n_distractors):
        scene = _random_scene(rng)
        while scene in used:
            scene = _random_scene(rng)
        used.add(scene)
        add_image(scene)
    rng.shuffle(images)  # COCO's file lists no particular order
    info = {"description": "synthetic shapes world in the COCO 2017 unlabeled layout (clip_cir.data.synthetic)",
            "version": "1.0", "year": 2017}
    _write_json(writer.root / base / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
                {"info": info, "licenses": [], "images": images})
    summary["gallery"] = len(images)
    return summary


def _check_root(root: Path, overwrite: bool) -> None:
    """Refuse to mix generated data into an existing data set unless asked to replace it."""
    for folder in ("cirr_dataset", "fashionIQ_dataset", "CIRCO"):
        path = root / folder
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise ValueError(
                    f"{path} exists and is not empty; pass overwrite=True to replace it")
            shutil.rmtree(path)


def generate(root: str | os.PathLike, n_train: int = 3000, n_val: int = 600, n_test: int = 600,
             size: int = 64, seed: int = 0, progress: bool = True, overwrite: bool = False,
             n_circo: int = 0, circo_distractors: int | None = None) -> dict:
    """Write the shapes world under ``root`` in CIRR and FashionIQ layouts, and CIRCO's if asked.

    ``n_*`` are query counts per split (FashionIQ splits them across its three categories);
    ``size`` is the short side of every image. ``n_circo`` queries go in each of CIRCO's val
    and test splits (0: no CIRCO folder), over one gallery that also holds ``circo_distractors``
    unrelated scenes (default 5 per query); CIRCO is sized apart so that callers who need only
    CIRR and FashionIQ pay nothing for it. Also writes ``pretrain_captions.csv`` (one
    descriptive title per train image, for contrastive CLIP pretraining, which the method
    assumes) and ``synth_info.json``. Returns the summary stored in ``synth_info.json``
    plus ``root``.
    """
    if circo_distractors is None:
        circo_distractors = 5 * n_circo
    if min(n_train, n_val, n_test, n_circo, circo_distractors) < 0:
        raise ValueError("query counts must be >= 0")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    root = Path(root)
    _check_root(root, overwrite)
    writer = _Writer(root, size)
    cirr_counts = {"train": n_train, "val": n_val, "test1": n_test}
    fiq_counts = {"train": n_train, "val": n_val, "test": n_test}
    info = {
        "generator": "clip_cir.data.synthetic",
        "args": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed,
                 "n_circo": n_circo, "circo_distractors": circo_distractors},
        "cirr": _plan_cirr(writer, seed, cirr_counts),
        "fashioniq": _plan_fashioniq(writer, seed, fiq_counts),
        **({"circo": _plan_circo(writer, seed, n_circo, circo_distractors)} if n_circo else {}),
        "pretrain_captions": "pretrain_captions.csv",
        "pretrain_rows": len(writer.titles),
        "images": len(writer.jobs),
    }
    for directory in sorted({job.path.parent for job in writer.jobs}):
        directory.mkdir(parents=True, exist_ok=True)
    jobs = writer.jobs
    if progress and tqdm is not None:
        jobs = tqdm(jobs, desc="rendering shapes", unit="img", disable=None)
    for job in jobs:
        _save(job)
    lines = ["filepath\ttitle"] + [f"{rel}\t{title}" for rel, title in writer.titles]
    (root / "pretrain_captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(root / "synth_info.json", info)
    return {"root": str(root), **info}
