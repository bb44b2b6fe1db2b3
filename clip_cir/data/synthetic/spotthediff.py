"""The shapes world written in Spot-the-Diff's layout (`clip_cir.data.spotthediff`), small.

A record is a scene (`<img_id>.png`) and the same scene after one edit (`<img_id>_2.png`), drawn
as two frames of a fixed camera: same size, and every object the edit leaves in its cell keeps
its exact place. Its sentences are the world's captions of the edit in the dataset's style
(lower case, no final period), one to three phrasings. As in the real annotation files, an
evaluation split repeats one `img_id` in a second record with other sentences (its images are
written once), and one record has only an empty sentence (no query).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from clip_cir.data.spotthediff import AFTER_SUFFIX, FOLDER, IMAGES_FOLDER
from clip_cir.data.synthetic.captions import cirr_caption
from clip_cir.data.synthetic.world import CIRR_BACKGROUND, JITTER, ImageJob, Scene, _make_group, _plan_image, _save

SPLITS = ("train", "val", "test")
MAX_SENTENCES = 3


def after_frame(rng: random.Random, before: ImageJob, path: Path, scene: Scene) -> ImageJob:
    """The second frame: `before`'s size and background, objects in unchanged cells where they were."""
    placed = {obj.cell: jitter for obj, jitter in zip(before.scene, before.jitter)}
    jitter = tuple(placed.get(obj.cell) or (rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER))
                   for obj in scene)
    return ImageJob(path, scene, before.background, before.width, before.height, jitter)


def sentences(rng: random.Random, scene: Scene, edit, n: int) -> list[str]:
    """`n` captions of `edit` on `scene`, lower case without a final period."""
    out: list[str] = []
    for _ in range(10 * n):
        text = cirr_caption(rng, scene, edit).rstrip(".").lower()
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


def write_spotthediff(root: Path, seed: int = 0, size: int = 32, n_train: int = 12, n_val: int = 6,
                      n_test: int = 6, overwrite: bool = False) -> dict:
    """Write `root/spot-the-diff/data/` (`annotations/<split>.json` and `resized_images/`) with
    `n_*` scene pairs per split (val and test get one more record, repeating an `img_id`); returns
    per split the records, the queries (non-empty sentences) and the image files written."""
    base = Path(root) / FOLDER
    if base.is_dir() and any(base.iterdir()):
        if not overwrite:
            raise ValueError(f"{base} exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(base)
    (base / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}:spotthediff")
    used: set[Scene] = set()
    ids = iter(rng.sample(range(1, 10_000), n_train + n_val + n_test))
    summary: dict[str, dict] = {}
    for split, n_pairs in zip(SPLITS, (n_train, n_val, n_test)):
        records, pairs = [], []
        for _ in range(n_pairs):
            image_id = str(next(ids))
            group = _make_group(rng, 1, used)
            before = _plan_image(rng, base / IMAGES_FOLDER / f"{image_id}.png", group.base, CIRR_BACKGROUND[1], size)
            _save(before)
            _save(after_frame(rng, before, base / IMAGES_FOLDER / f"{image_id}{AFTER_SUFFIX}.png", group.scenes[1]))
            pairs.append((image_id, group))
            records.append({"img_id": image_id,
                            "sentences": sentences(rng, group.base, group.edits[0], rng.randint(1, MAX_SENTENCES))})
        if split != "train" and len(records) >= 2:
            records[-1]["sentences"] = [""]  # annotators who wrote nothing: no query
            image_id, group = pairs[0]  # another annotation of the first pair: two more gallery entries
            records.insert(len(records) // 2, {"img_id": image_id,
                                               "sentences": sentences(rng, group.base, group.edits[0], 1)})
        (base / "annotations" / f"{split}.json").write_text(json.dumps(records), encoding="utf-8")
        summary[split] = {"records": len(records), "queries": sum(s != "" for r in records for s in r["sentences"]),
                          "images": 2 * n_pairs}
    return {"root": str(root), **summary}
