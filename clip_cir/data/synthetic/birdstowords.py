"""The shapes world written in Birds-to-Words' layout (`clip_cir.data.birdstowords`), small.

Each group of scenes is a base scene and two single-edit variants; the pairs are (base, first
variant) and (second variant, base), so an image takes part in several pairs as a pivot image of
the real dataset does. A pair has one to three descriptions that say what each side shows where
they differ, in the world's words and the dataset's style (lower case, "animal1" / "animal2",
punctuation split off): "animal1 has a small red circle at the top left . animal2 has a small
blue circle at the top left .". Both sides are named, so maaf's reversed training pairs (animal1
and animal2 swapped) read true too. Images are JPEGs named as maaf names a download, by their
URL's last part (`medium.jpg?<number>`).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from clip_cir.data.birdstowords import COLUMNS, FOLDER, IMAGES_FOLDER, TSV_NAME
from clip_cir.data.synthetic.captions import _full, _loc
from clip_cir.data.synthetic.world import CIRR_BACKGROUND, Edit, Obj, Scene, _make_group, _plan_image, render

SPLITS = ("train", "val", "test")
VARIANTS = 2
MAX_DESCRIPTIONS = 3
SELECTIONS = ("visual", "sameSpecies", "sameGenus", "sameFamily", "sameOrder", "sameClass")
TEMPLATES = (
    "animal1 has {a} . animal2 has {b} .",
    "animal2 has {b} while animal1 has {a} .",
    "in animal1 there is {a} , in animal2 there is {b} .",
    "animal1 shows {a} and animal2 shows {b} .",
)


def _side(obj: Obj | None, cell: int) -> str:
    """An object and where it is, or "nothing" where the other side has one."""
    return f"{_full(obj)} {_loc(obj.cell)}" if obj is not None else f"nothing {_loc(cell)}"


def describe_pair(rng: random.Random, edit: Edit, n: int) -> list[str]:
    """`n` differently worded descriptions of a pair whose right image is the left one after `edit`."""
    where = (edit.before or edit.after).cell  # an added or removed object's cell, for the side without it
    return [t.format(a=_side(edit.before, where), b=_side(edit.after, where)) for t in rng.sample(TEMPLATES, n)]


def _species(scene: Scene) -> str:
    first = scene[0]
    return f"{first.shape.capitalize()} {first.colour}"


def write_birdstowords(root: Path, seed: int = 0, size: int = 32, n_train: int = 12, n_val: int = 6,
                       n_test: int = 6, overwrite: bool = False) -> dict:
    """Write `root/birds-to-words/` (the TSV and `images/`) with `n_*` pairs per split; returns
    per split the pairs, descriptions and images written."""
    base = Path(root) / FOLDER
    if base.is_dir() and any(base.iterdir()):
        if not overwrite:
            raise ValueError(f"{base} exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(base)
    (base / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}:birdstowords")
    used: set[Scene] = set()
    photo_ids = iter(rng.sample(range(100_000, 9_999_999), 3 * (n_train + n_val + n_test)))
    lines = ["\t".join(COLUMNS)]
    summary: dict[str, dict] = {}
    for split, n_pairs in zip(SPLITS, (n_train, n_val, n_test)):
        images = descriptions = 0
        for start in range(0, n_pairs, VARIANTS):
            group = _make_group(rng, VARIANTS, used)
            pairs = [(0, 1, group.edits[0]), (2, 0, group.edits[1].inverse())][:n_pairs - start]
            urls: dict[int, tuple[str, str]] = {}
            for index in sorted({i for left, right, _ in pairs for i in (left, right)}):
                photo = next(photo_ids)
                name = f"medium.jpg?{1_400_000_000 + photo}"
                job = _plan_image(rng, base / IMAGES_FOLDER / name, group.scenes[index], CIRR_BACKGROUND[1], size)
                render(job).save(job.path, "JPEG", quality=95)
                urls[index] = (f"https://www.inaturalist.org/observations/{photo + 7}",
                               f"https://static.inaturalist.org/photos/{photo}/{name}")
                images += 1
            for left, right, edit in pairs:
                texts = describe_pair(rng, edit, rng.randint(1, MAX_DESCRIPTIONS))
                for number, text in enumerate(texts, start=1):
                    row = (*urls[left], _species(group.scenes[left]), "base", *urls[right],
                           _species(group.scenes[right]), rng.choice(SELECTIONS), split, str(number), text)
                    lines.append("\t".join(row))
                    descriptions += 1
        summary[split] = {"pairs": n_pairs, "descriptions": descriptions, "images": images}
    (base / TSV_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": str(root), **summary}
