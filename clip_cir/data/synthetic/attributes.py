"""A synthetic attribute-labelled catalogue: single-object scenes of the shapes world (`world.py`)
labelled with the object's colour, shape, size and position, written in both layouts
`clip_cir.data.attributes` reads (ADDE's files and the CSV), for attribute manipulation.

A small part of the world keeps the catalogue dense enough for queries: 4 colours, 4 shapes, 2
sizes and the 4 corner cells (128 combinations), so many "this object, in another colour" targets
exist in a gallery of a few dozen images. Training images lose each label with probability
`missing` (a semi-supervised training set, as the paper's); test images are fully labelled, as
the paper's evaluation images are, and the test queries follow ADDE's rule
(`generate_queries`). Both layouts hold the same images, labels (values numbered in sorted order
of their names, as the CSV reader numbers them) and queries.

Everything derives from `random.Random` seeded with strings built from `seed`: the same arguments
give the same files.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_cir.data.attributes import (
    MISSING,
    AttributeCatalogue,
    generate_queries,
    write_adde_catalogue,
    write_adde_queries,
    write_csv_catalogue,
    write_csv_queries,
)
from clip_cir.data.synthetic.world import (
    CIRR_BACKGROUND,
    COLOURS,
    JITTER,
    POSITIONS,
    SHAPES,
    SIZES,
    ImageJob,
    Obj,
    _save,
)

ATTRIBUTE_COLOURS = tuple(COLOURS)[:4]
ATTRIBUTE_SHAPES = SHAPES[:4]
ATTRIBUTE_CELLS = (0, 2, 6, 8)
"""The corner cells of the 3x3 grid."""
ATTRIBUTES = ("colour", "shape", "size", "position")
IMAGES_FOLDER = "images"
ADDE_FOLDER = "adde"
MISSING_SHARE = 0.2


@dataclass(frozen=True)
class AttributeCatalogueFiles:
    """Where `write_attribute_catalogue` put things: images under `image_root`; ADDE's files in
    `adde` (read with image root `image_root`); the CSVs beside the images' folder."""

    image_root: Path
    adde: Path
    train_csv: Path
    test_csv: Path
    queries_csv: Path


def _values() -> tuple[tuple[str, ...], ...]:
    names = (ATTRIBUTE_COLOURS, ATTRIBUTE_SHAPES, SIZES, tuple(POSITIONS[c] for c in ATTRIBUTE_CELLS))
    return tuple(tuple(sorted(v)) for v in names)


def _catalogue(rng: random.Random, root: Path, split: str, n: int, size: int, missing: float,
               source: Path) -> tuple[AttributeCatalogue, list[ImageJob]]:
    values = _values()
    names, jobs, labels = [], [], []
    for i in range(n):
        obj = Obj(rng.choice(ATTRIBUTE_SHAPES), rng.choice(ATTRIBUTE_COLOURS), rng.choice(SIZES),
                  rng.choice(ATTRIBUTE_CELLS))
        name = f"{IMAGES_FOLDER}/{split}_{i:04d}.png"
        jitter = ((rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)),)
        jobs.append(ImageJob(root / name, (obj,), CIRR_BACKGROUND[1], size, size, jitter))
        row = [values[a].index(v) for a, v in enumerate((obj.colour, obj.shape, obj.size, POSITIONS[obj.cell]))]
        labels.append([MISSING if rng.random() < missing else v for v in row])
        names.append(name)
    catalogue = AttributeCatalogue(images=tuple(names), paths=tuple(root / n for n in names), attributes=ATTRIBUTES,
                                   values=values, labels=np.array(labels, dtype=np.int64).reshape(n, len(ATTRIBUTES)),
                                   source=source)
    return catalogue, jobs


def write_attribute_catalogue(root: str | os.PathLike, seed: int = 0, size: int = 32, n: int = 128,
                              n_test: int = 64, missing: float = MISSING_SHARE) -> AttributeCatalogueFiles:
    """Render `n` training and `n_test` test images of `size` px under `root` and write both layouts:
    `adde/` (imgs, labels and attr_num, the test queries) and `attributes_{train,test}.csv` with
    `queries_test.csv`."""
    root = Path(root)
    (root / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    files = AttributeCatalogueFiles(image_root=root, adde=root / ADDE_FOLDER, train_csv=root / "attributes_train.csv",
                                    test_csv=root / "attributes_test.csv", queries_csv=root / "queries_test.csv")
    train, train_jobs = _catalogue(random.Random(f"attributes-train-{seed}"), root, "train", n, size, missing,
                                   files.train_csv)
    test, test_jobs = _catalogue(random.Random(f"attributes-test-{seed}"), root, "test", n_test, size, 0.0,
                                 files.test_csv)
    for job in train_jobs + test_jobs:
        _save(job)
    queries = generate_queries(test)
    for split, catalogue in (("train", train), ("test", test)):
        write_adde_catalogue(files.adde, split, catalogue)
    write_adde_queries(files.adde, test, queries)
    write_csv_catalogue(files.train_csv, train)
    write_csv_catalogue(files.test_csv, test)
    write_csv_queries(files.queries_csv, test, queries)
    return files
