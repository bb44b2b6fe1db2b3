"""The shapes world written in MIT-States' layout as TIRG reads it (`clip_cir.data.mitstates`).

The colour is the state (adjective) and the shape the object (noun): `images/red triangle/0.jpg`
shows one red triangle, in a random cell and size. TIRG's split holds out 49 nouns (none of them
a shape), so two shapes take the names of held-out nouns they resemble (`NOUNS`: a circle is a
`plate`, a square a `window`) and make the test split; the other three shapes train. Each noun
gets a few colours; an `adj <noun>` folder (MIT-States' images in no particular state, which
the reader skips) is written for every noun too.
"""

from __future__ import annotations

import random
from pathlib import Path

from clip_cir.data.mitstates import FOLDER, NO_STATE, TEST_NOUNS
from clip_cir.data.synthetic.world import COLOURS, POSITIONS, SIZES, Obj, _plan_image, render

NOUNS = {"triangle": "triangle", "diamond": "diamond", "star": "star", "circle": "plate", "square": "window"}
"""Shape drawn -> the noun its folders are named with; `plate` and `window` are TIRG test nouns."""
BACKGROUND = (128, 128, 128)


def write_mitstates(root: Path, seed: int = 0, size: int = 32, adjectives_per_noun: int = 3,
                    images_per_caption: int = 2) -> dict:
    """Write `root/mitstates/images/<colour> <noun>/<k>.jpg` and return the counts per split:
    `{"train": {"images": n, "nouns": m}, "test": {...}}` (the skipped `adj` folders not counted).
    Deterministic in `seed`."""
    rng = random.Random(f"{seed}:mitstates")
    images_dir = Path(root) / FOLDER / "images"
    summary = {split: {"images": 0, "nouns": 0} for split in ("train", "test")}
    for shape, noun in NOUNS.items():
        split = "test" if noun in TEST_NOUNS else "train"
        summary[split]["nouns"] += 1
        colours = rng.sample(sorted(COLOURS), adjectives_per_noun)
        for adjective in [*colours, NO_STATE]:
            folder = images_dir / f"{adjective} {noun}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(images_per_caption if adjective != NO_STATE else 1):
                colour = adjective if adjective != NO_STATE else rng.choice(sorted(COLOURS))
                obj = Obj(shape, colour, rng.choice(SIZES), rng.randrange(len(POSITIONS)))
                job = _plan_image(rng, folder / f"{k}.jpg", (obj,), BACKGROUND, size)
                render(job).save(job.path, "JPEG", quality=95)
                if adjective != NO_STATE:
                    summary[split]["images"] += 1
    return summary
