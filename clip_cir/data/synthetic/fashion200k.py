"""The shapes world written in Fashion200k's layout as TIRG reads it (`clip_cir.data.fashion200k`).

Each image is a one-object scene on a light background, described like a Fashion200k product
("large red circle": size, colour, then the shape standing for the garment category). The five
shapes stand for the five categories (`CATEGORY_SHAPES`), so `dress_*_detect_all.txt` lists the
circles. Several images may share a description (the object sits in another cell, drawn
another size on the canvas), as Fashion200k's products share theirs, so a test query has several
correct answers. `test_queries.txt` pairs test images whose descriptions differ in one word
(size or colour), as TIRG's fixed file does.
"""

from __future__ import annotations

import random
from pathlib import Path

from clip_cir.data.fashion200k import CATEGORIES, FOLDER, TEST_QUERIES
from clip_cir.data.synthetic.world import COLOURS, POSITIONS, SIZES, Obj, _plan_image, render

CATEGORY_SHAPES = dict(zip(CATEGORIES, ("circle", "square", "triangle", "diamond", "star")))
"""Fashion200k category -> the shape standing for it."""
BACKGROUND = (240, 240, 240)


def _describe(obj: Obj) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def _one_word_apart(a: Obj, b: Obj) -> bool:
    return a.shape == b.shape and (a.size != b.size) + (a.colour != b.colour) == 1


def _sample_objects(rng: random.Random, n: int) -> list[Obj]:
    """`n` objects in groups of one base and its one-word variants, so most have partners."""
    objects: list[Obj] = []
    while len(objects) < n:
        base = Obj(rng.choice(list(CATEGORY_SHAPES.values())), rng.choice(list(COLOURS)), rng.choice(SIZES),
                   rng.randrange(len(POSITIONS)))
        variants = [base, base._replace(colour=rng.choice([c for c in COLOURS if c != base.colour])),
                    base._replace(size="small" if base.size == "large" else "large")]
        for obj in variants + [base]:  # the base twice: a description with two images
            objects.append(obj._replace(cell=rng.randrange(len(POSITIONS))))
    return objects[:n]


def write_fashion200k(root: Path, seed: int = 0, size: int = 32, n_train: int = 40, n_test: int = 24,
                      n_queries: int = 24) -> dict:
    """Write `root/Fashion200k/` (label files, images, test_queries.txt) and return the counts:
    `{"train": {"images": n}, "test": {"images": n, "queries": q}}`. Deterministic in `seed`."""
    base = Path(root) / FOLDER
    summary: dict[str, dict[str, int]] = {}
    test_lines: list[tuple[str, Obj]] = []
    for split, n in (("train", n_train), ("test", n_test)):
        rng = random.Random(f"{seed}:fashion200k:{split}")
        rows: dict[str, list[str]] = {category: [] for category in CATEGORIES}
        shape_category = {shape: category for category, shape in CATEGORY_SHAPES.items()}
        for i, obj in enumerate(_sample_objects(rng, n)):
            category = shape_category[obj.shape]
            product = f"{split}{i:05d}"
            rel = f"women/{category}/{_describe(obj).replace(' ', '_')}/{product}/{product}_0.jpeg"
            job = _plan_image(rng, base / rel, (obj,), BACKGROUND, size)
            job.path.parent.mkdir(parents=True, exist_ok=True)
            render(job).save(job.path, "JPEG", quality=95)
            rows[category].append(f"{rel}\t{rng.uniform(0.5, 1.0):.4f}\t{_describe(obj)}\n")
            if split == "test":
                test_lines.append((rel, obj))
        for category, lines in rows.items():
            path = base / "labels" / f"{category}_{split}_detect_all.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(lines), encoding="utf-8")
        summary[split] = {"images": n}
    rng = random.Random(f"{seed}:fashion200k:queries")
    pairs = [(a, b) for a, obj_a in test_lines for b, obj_b in test_lines if _one_word_apart(obj_a, obj_b)]
    pairs = rng.sample(pairs, min(n_queries, len(pairs)))
    (base / TEST_QUERIES).write_text("".join(f"{a} {b}\n" for a, b in pairs), encoding="utf-8")
    summary["test"]["queries"] = len(pairs)
    return summary
