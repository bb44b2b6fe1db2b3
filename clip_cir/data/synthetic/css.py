"""A small CSS stand-in from the shapes world, in CSS's own files (`clip_cir.data.css`).

CSS is itself a shapes world (CLEVR-rendered scenes of up to a few objects), so its stand-in is the
world's scenes restricted to CSS's vocabulary: shapes rectangle / circle / triangle (the world's
square, circle, triangle), the colours both worlds share, small and large, on the world's 3x3
grid. Each split holds base scenes, the scenes CSS-style modifications ("add a large red circle to
the top left", "remove the center object", "make the top right object blue", "make the bottom left
object small") turn them into, and, as in CSS's `.dup` file, some scenes rendered twice: every
image is labelled by its scene, so a query may have several correct gallery images. The "3D"
images are the world's drawing seen at a slant (a perspective warp: the far rows shrink), so a
flat 2-D top view (`clip_cir.data.css_2d`) and the gallery image differ as in CSS's 2D->3D task.

Written: `<root>/CSSDataset/css_toy_dataset_novel2_small.dup.npy` (a numpy-saved pickled dict,
per split `objects_img`, `labels`, `mods` with `from`, `to`, `to_str`) and
`<root>/CSSDataset/images/css_<split>_<index:06d>.png`. Deterministic for `seed`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from clip_cir.data.css import ANNOTATION_FILE, FOLDER, image_name
from clip_cir.data.css_2d import COLOUR_VALUES
from clip_cir.data.synthetic.world import (
    BASE_OBJECT_WEIGHTS,
    COLOURS,
    JITTER,
    MAX_OBJECTS,
    POSITIONS,
    SIZES,
    ImageJob,
    Obj,
    Scene,
    render,
)

CSS_SHAPES = {"square": "rectangle", "circle": "circle", "triangle": "triangle"}
"""World shape -> the name CSS's object lists use."""
CSS_COLOURS = tuple(c for c in COLOURS if c in COLOUR_VALUES)
FLOOR = (128, 128, 128)
SLANT = 0.3
"""How much wider than the image the far (top) edge of the seen floor is, as a fraction of the width."""
DUPLICATE_P = 0.3


def _scene(rng: random.Random) -> Scene:
    n = rng.choices(list(BASE_OBJECT_WEIGHTS), weights=list(BASE_OBJECT_WEIGHTS.values()))[0]
    cells = sorted(rng.sample(range(len(POSITIONS)), n))
    return tuple(Obj(rng.choice(list(CSS_SHAPES)), rng.choice(CSS_COLOURS), rng.choice(SIZES), c) for c in cells)


def _place(cell: int) -> str:
    return POSITIONS[cell]


def _random_mod(rng: random.Random) -> tuple[str, tuple]:
    """A modification that names its object by place, so one text applies to many scenes."""
    kind = rng.choice(("add", "remove", "colour", "size"))
    cell = rng.randrange(len(POSITIONS))
    if kind == "add":
        obj = Obj(rng.choice(list(CSS_SHAPES)), rng.choice(CSS_COLOURS), rng.choice(SIZES), cell)
        return f"add a {obj.size} {obj.colour} {CSS_SHAPES[obj.shape]} to the {_place(cell)}", ("add", obj)
    if kind == "remove":
        return f"remove the {_place(cell)} object", ("remove", cell)
    if kind == "colour":
        colour = rng.choice(CSS_COLOURS)
        return f"make the {_place(cell)} object {colour}", ("colour", cell, colour)
    size = rng.choice(SIZES)
    return f"make the {_place(cell)} object {size}", ("size", cell, size)


def _apply(scene: Scene, mod: tuple) -> Scene | None:
    """The scene `mod` makes of `scene`, or None where it does not apply (or changes nothing)."""
    kind = mod[0]
    if kind == "add":
        obj = mod[1]
        if len(scene) >= MAX_OBJECTS or any(o.cell == obj.cell for o in scene):
            return None
        return tuple(sorted(scene + (obj,), key=lambda o: o.cell))
    cell = mod[1]
    target = next((o for o in scene if o.cell == cell), None)
    if target is None:
        return None
    if kind == "remove":
        return tuple(o for o in scene if o.cell != cell) if len(scene) > 1 else None
    changed = target._replace(colour=mod[2]) if kind == "colour" else target._replace(size=mod[2])
    return None if changed == target else tuple(changed if o is target else o for o in scene)


def _plan_split(rng: random.Random, n_scenes: int, n_mods: int, pairs_per_mod: int,
                used: set[Scene]) -> tuple[list[Scene], list[dict]]:
    """Scenes (bases first) and mods `{"text", "pairs": [(base, target scene index)]}`."""
    scenes: list[Scene] = []
    while len(scenes) < n_scenes:
        scene = _scene(rng)
        if scene not in used:
            used.add(scene)
            scenes.append(scene)
    bases = list(scenes)
    mods: list[dict] = []
    texts: set[str] = set()
    for _ in range(200 * n_mods):
        if len(mods) == n_mods:
            break
        text, mod = _random_mod(rng)
        applicable = [i for i, base in enumerate(bases) if _apply(base, mod) is not None]
        if text in texts or len(applicable) < 2:
            continue
        texts.add(text)
        pairs = []
        for i in sorted(rng.sample(applicable, min(pairs_per_mod, len(applicable)))):
            target = _apply(bases[i], mod)
            if target not in scenes:
                used.add(target)
                scenes.append(target)
            pairs.append((i, scenes.index(target)))
        mods.append({"text": text, "pairs": pairs})
    return scenes, mods


def _object_entry(obj: Obj, jitter: tuple[float, float]) -> dict:
    """CSS's object dict; `pos` is (row, column) in [0, 1], the centre the world draws it at."""
    row, col = divmod(obj.cell, 3)
    return {"shape": CSS_SHAPES[obj.shape], "color": obj.colour, "size": obj.size,
            "pos": [(row + 0.5 + jitter[1]) / 3, (col + 0.5 + jitter[0]) / 3]}


def _render_3d(job: ImageJob) -> Image.Image:
    """The world's drawing seen at a slant: the top of the picture is the far side of the floor."""
    flat = render(job)
    w, h = flat.size
    a = SLANT * w / 2
    quad = (-a, 0, 0, h, w, h, w + a, 0)  # source corners for the output's UL, LL, LR, UR
    return flat.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR, fillcolor=FLOOR)


def write_css(root: Path, seed: int = 0, size: int = 32, n_scenes: int = 8, n_mods: int = 5,
              pairs_per_mod: int = 3) -> dict:
    """Write a CSS stand-in under `root/CSSDataset` (train and test: `n_scenes` base scenes each,
    `n_mods` modifications of up to `pairs_per_mod` (source, target) pairs each); returns per split
    the counts of images, labels (distinct scenes), mods and queries, plus `root`."""
    root = Path(root)
    base = root / FOLDER
    (base / "images").mkdir(parents=True, exist_ok=True)
    used: set[Scene] = set()
    data: dict[str, dict] = {}
    summary: dict = {"root": str(root)}
    for split in ("train", "test"):
        rng = random.Random(f"{seed}:css:{split}")
        scenes, mods = _plan_split(rng, n_scenes, n_mods, pairs_per_mod, used)
        objects_img: list[list[dict]] = []
        labels: list[int] = []
        first_image: dict[int, int] = {}
        for label, scene in enumerate(scenes):
            for _ in range(2 if rng.random() < DUPLICATE_P else 1):
                jitter = tuple((rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)) for _ in scene)
                index = len(objects_img)
                first_image.setdefault(label, index)
                path = base / "images" / f"{image_name(split, index)}.png"
                _render_3d(ImageJob(path, scene, FLOOR, size, size, jitter)).save(path, "PNG")
                objects_img.append([_object_entry(o, j) for o, j in zip(scene, jitter)])
                labels.append(label)
        entries = [{"from": [first_image[i] for i, _ in mod["pairs"]], "to": [first_image[t] for _, t in mod["pairs"]],
                    "to_str": mod["text"]} for mod in mods]
        data[split] = {"objects_img": objects_img, "labels": labels, "mods": entries}
        summary[split] = {"images": len(objects_img), "labels": len(scenes), "mods": len(entries),
                          "queries": sum(len(e["from"]) for e in entries)}
    np.save(base / ANNOTATION_FILE, np.array(data, dtype=object), allow_pickle=True)
    return summary
