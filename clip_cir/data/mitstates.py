"""MIT-States as TIRG defines it (google/tirg `datasets.py`, class `MITStates`; scored by its
`test_retrieval.py`).

Layout (`--data-root` holds `mitstates/`, or is that folder itself)::

    mitstates/images/<adjective> <noun>/<file>.jpg

Every folder whose name holds a space is one caption, `<adjective> <noun>`; folders whose
adjective is `adj` (MIT-States' images of a noun in no particular state) and entries without a
space are skipped, as TIRG skips them. A folder name of more than two words, or a file in a
caption folder not ending in `jpg`, is an error (TIRG stops there too). Images are named
`<adjective> <noun>/<file>`; their label is the caption, the folder's two words joined by one
space (TIRG's caption is the folder name itself: the same for every folder of the release).

Split: the 49 nouns of `TEST_NOUNS` (TIRG's list) are the test split, every other noun trains.
Each noun needs images under two adjectives or more (TIRG asserts it).

Protocol (TIRG's):
- Test: one query per test image and other adjective of its noun (adjectives in the order they
  are first seen); the query text is the target adjective alone, the target is the label
  `<target adjective> <noun>` (no one image: `Query.target` is None); a retrieved image is a hit
  when its caption equals that label; the source image is removed from its own ranking;
  Recall@1/5/10/50/100 (papers quote 1, 5, 10), and TIRG's diagnostics on one word of the labels,
  `adjective_recall_at{k}` and `noun_recall_at{k}` (`label_views`).
- Train: TIRG draws, per source image, two targets at once (each: a random adjective of the
  image's noun, its own included, then a random image of that caption), again until the two
  targets' adjectives differ, and yields the two queries one after the other; the query text is
  the target's adjective. Here the draw is made once: two queries per training image (`<i>/0`,
  `<i>/1`), drawn by that rule with `random.Random("mitstates:<image index>")`, so training
  triplets are static and the same on every run. As in TIRG, a target may share the source's
  adjective (even be the source image).

Adaptation: TIRG lists folders and files with `os.listdir` (file-system order, not reproducible);
here both are sorted by name, so the image order (and thus the gallery and the queries' order)
is the same everywhere. It matches TIRG's only where the file system lists in name order.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

DATASET = "mitstates"
FOLDER = "mitstates"
SPLITS = ("train", "test")
RECALL_KS = (1, 5, 10, 50, 100)
LABEL_VIEWS = (("adjective", 0), ("noun", 1))
NO_STATE = "adj"
"""The adjective of MIT-States' folders of nouns in no particular state, which TIRG skips."""
TEST_NOUNS = (
    "armor", "bracelet", "bush", "camera", "candy", "castle", "ceramic", "cheese", "clock", "clothes",
    "coffee", "fan", "fig", "fish", "foam", "forest", "fruit", "furniture", "garden", "gate", "glass",
    "horse", "island", "laptop", "lead", "lightning", "mirror", "orange", "paint", "persimmon",
    "plastic", "plate", "potato", "road", "rubber", "sand", "shell", "sky", "smoke", "steel", "stream",
    "table", "tea", "tomato", "vacuum", "wax", "wheel", "window", "wool",
)
"""The nouns TIRG holds out for testing (google/tirg datasets.py, `MITStates.__init__`)."""


@dataclass(frozen=True)
class StateImage:
    name: str
    """`<adjective> <noun>/<file>`, the gallery name."""
    path: Path
    adjective: str
    noun: str

    @property
    def caption(self) -> str:
        return f"{self.adjective} {self.noun}"


def dataset_dir(data_root: Path) -> Path:
    """`<data_root>/mitstates`, or `data_root` itself where it holds `images/` directly."""
    base = Path(data_root) / FOLDER
    if (base / "images").is_dir():
        return base
    if (Path(data_root) / "images").is_dir() and not base.exists():
        return Path(data_root)
    raise CIRError(f"{base / 'images'}: MIT-States image folder not found "
                   f"(--data-root must contain {FOLDER}/images/ or images/)")


def list_images(images_dir: Path, split: str) -> list[StateImage]:
    """The split's images: caption folders in name order, each folder's files in name order."""
    out: list[StateImage] = []
    for folder in sorted(os.listdir(images_dir)):
        if " " not in folder:
            continue
        words = folder.split()
        if len(words) != 2:
            raise CIRError(f"{images_dir / folder}: a MIT-States folder name should be '<adjective> <noun>', "
                           f"got {len(words)} words")
        adjective, noun = words
        if adjective == NO_STATE or (noun in TEST_NOUNS) != (split == "test"):
            continue
        if not (images_dir / folder).is_dir():
            raise CIRError(f"{images_dir / folder}: expected a folder of '{folder}' images, found a file")
        for file in sorted(os.listdir(images_dir / folder)):
            if not file.endswith("jpg"):
                raise CIRError(f"{images_dir / folder / file}: MIT-States caption folders hold only .jpg images")
            out.append(StateImage(f"{folder}/{file}", images_dir / folder / file, adjective, noun))
    return out


def adjectives_by_noun(found: list[StateImage], images_dir: Path) -> dict[str, list[str]]:
    """Each noun's adjectives in the order their first image is listed (TIRG's `noun2adjs`)."""
    adjectives: dict[str, list[str]] = {}
    for image in found:
        kinds = adjectives.setdefault(image.noun, [])
        if image.adjective not in kinds:
            kinds.append(image.adjective)
    for noun, kinds in adjectives.items():
        if len(kinds) < 2:
            raise CIRError(f"{images_dir / (kinds[0] + ' ' + noun)}: noun '{noun}' has images under one adjective "
                           f"only; MIT-States needs two or more per noun (TIRG asserts it)")
    return adjectives


def evaluation_queries(found: list[StateImage], adjectives: dict[str, list[str]]) -> list[Query]:
    """One query per image and other adjective of its noun (TIRG's `generate_test_queries_`)."""
    queries = []
    for image in found:
        for adjective in adjectives[image.noun]:
            if adjective != image.adjective:
                queries.append(Query(qid=str(len(queries)), reference=image.name, captions=(adjective,),
                                     train_captions=(adjective,), eval_caption=adjective,
                                     target_label=f"{adjective} {image.noun}"))
    return queries


def _draw_target(rng: random.Random, noun: str, adjectives: dict[str, list[str]], found: list[StateImage],
                 by_caption: dict[str, list[int]]) -> StateImage:
    """TIRG's `caption_index_sample_`: a random adjective of the noun (the source's own included),
    then a random image of that caption."""
    adjective = rng.choice(adjectives[noun])
    return found[rng.choice(by_caption[f"{adjective} {noun}"])]


def training_queries(found: list[StateImage], adjectives: dict[str, list[str]]) -> list[Query]:
    """Two queries per image with targets of different adjectives (TIRG's `__getitem__` pair)."""
    by_caption: dict[str, list[int]] = {}
    for i, image in enumerate(found):
        by_caption.setdefault(image.caption, []).append(i)
    queries = []
    for i, image in enumerate(found):
        rng = random.Random(f"{DATASET}:{i}")
        while True:
            first = _draw_target(rng, image.noun, adjectives, found, by_caption)
            second = _draw_target(rng, image.noun, adjectives, found, by_caption)
            if first.adjective != second.adjective:
                break
        for k, target in enumerate((first, second)):
            queries.append(Query(qid=f"{i}/{k}", reference=image.name, captions=(target.adjective,),
                                 train_captions=(target.adjective,), eval_caption=target.adjective,
                                 target=target.name, target_label=target.caption))
    return queries


def load_mitstates(data_root: Path, split: str, images: ImageCheck | None = None,
                   options: ReaderOptions | None = None) -> list[CIRSplit]:
    """One MIT-States split as TIRG reads and scores it (see the module docstring); `options` has
    nothing for MIT-States."""
    if split not in SPLITS:
        raise CIRError(f"unknown MIT-States split '{split}' (choose from {', '.join(SPLITS)})")
    images = images or ImageCheck()
    images_dir = dataset_dir(data_root) / "images"
    found = list_images(images_dir, split)
    if not found:
        raise CIRError(f"{images_dir}: no MIT-States {split} images ('<adjective> <noun>/*.jpg' folders"
                       f"{' of the 49 test nouns' if split == 'test' else ' of other nouns than the 49 test ones'})")
    adjectives = adjectives_by_noun(found, images_dir)
    queries = evaluation_queries(found, adjectives) if split == "test" else training_queries(found, adjectives)
    used = {name for q in queries for name in (q.reference, q.target) if name is not None}
    candidates = images.gallery_candidates(split, {image.name: [image.path] for image in found}, used)
    gallery = images.locate(candidates, images_dir)
    labels = {image.name: image.caption for image in found if image.name in gallery}
    return [images.drop_queries(CIRSplit(dataset=DATASET, name=DATASET, split=split, queries=queries,
                                         gallery=gallery, exclude_reference=True, recall_ks=RECALL_KS,
                                         gallery_labels=labels, label_views=LABEL_VIEWS), len(candidates))]
