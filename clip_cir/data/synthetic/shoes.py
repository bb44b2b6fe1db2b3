"""The shapes world written in Shoes' released layout (`clip_cir.data.shoes`), small by default.

Each group is a base scene and near-variants, all drawn on one "category"'s background and listed
in one split's image list; two pairs per group (a reference, one relative caption, a target), as
the other layouts make them. Like the real files, the captions file mixes both splits' pairs in
no particular order, and a few pairs of the test split have a reference that is in no image list
(the real file has 29 such pairs): VAL's protocol uses them, ARTEMIS's does not. Images sit in
`attributedata/womens_<kind>/<0 or 1>/img_womens_<kind>_<k>.jpg`, as the real download's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from clip_cir.data.shoes import CAPTIONS_FILE, IMAGES_FOLDER, LIST_FILES
from clip_cir.data.synthetic.captions import TEMPLATES, _caption
from clip_cir.data.synthetic.world import FIQ_VARIANTS, Edit, Scene, _make_group, _pick_queries, _plan_image, _save

KINDS = {
    "womens_boots": (110, 75, 45),
    "womens_clogs": (95, 120, 60),
    "womens_pumps": (40, 45, 90),
}
"""Category folder -> background colour."""
PAIRS_PER_GROUP = 2
UNLISTED_EVERY = 3
"""Every third test group's base image is in no image list (the pair from it is VAL-only)."""


def _relative_caption(rng: random.Random, scene: Scene, edit: Edit) -> str:
    """One lower-case relative caption without final punctuation, as Shoes' annotators wrote them."""
    return _caption(rng, scene, edit, rng.choice(TEMPLATES[edit.kind]))


def write_shoes(root: Path, seed: int = 0, size: int = 32, n_train: int = 16, n_test: int = 8) -> dict:
    """Write `<root>/shoes/` with `n_train` and `n_test` pairs (rounded up to whole groups of two);
    returns per split the pairs, listed images and unlisted images written."""
    if min(n_train, n_test) < 0:
        raise ValueError("pair counts must be >= 0")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    base = Path(root) / "shoes"
    rng = random.Random(f"{seed}:shoes")
    used: set[Scene] = set()
    counters = {kind: 0 for kind in KINDS}
    jobs = []
    pairs: list[dict] = []
    summary: dict[str, dict] = {}
    for split, n_pairs in (("train", n_train), ("test", n_test)):
        listed: list[str] = []
        unlisted = 0
        n_groups = -(-n_pairs // PAIRS_PER_GROUP)
        for g in range(n_groups):
            kind = list(KINDS)[g % len(KINDS)]
            group = _make_group(rng, FIQ_VARIANTS, used)
            names = []
            for scene in group.scenes:
                number = counters[kind]
                counters[kind] += 1
                name = f"img_{kind}_{number}.jpg"
                names.append(name)
                rel = f"{IMAGES_FOLDER}/{kind}/{number % 2}/{name}"
                jobs.append(_plan_image(rng, base / rel, scene, KINDS[kind], size))
            hide_base = split == "test" and g % UNLISTED_EVERY == UNLISTED_EVERY - 1
            listed += names[1:] if hide_base else names
            unlisted += hide_base
            for ref, tgt, edit in _pick_queries(rng, group, PAIRS_PER_GROUP):
                pairs.append({"ImageName": names[tgt], "ReferenceImageName": names[ref],
                              "RelativeCaption": _relative_caption(rng, group.scenes[ref], edit)})
        rng.shuffle(listed)
        (base / LIST_FILES[split]).parent.mkdir(parents=True, exist_ok=True)
        (base / LIST_FILES[split]).write_text("".join(f"{name}\n" for name in listed), encoding="utf-8")
        summary[split] = {"pairs": n_groups * PAIRS_PER_GROUP, "images": len(listed), "unlisted_images": unlisted}
    rng.shuffle(pairs)
    (base / CAPTIONS_FILE).write_text(json.dumps(pairs) + "\n", encoding="utf-8")
    for job in jobs:
        job.path.parent.mkdir(parents=True, exist_ok=True)
        _save(job)
    return {"root": str(base), **summary}
