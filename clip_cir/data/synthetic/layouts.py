"""The synthetic world written out in the real CIRR, FashionIQ and CIRCO layouts (docs/datasets.md#layouts),
with images rendered in parallel and a caption CSV for pretraining."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Sequence

from clip_cir.data.synthetic.captions import _full, _loc, cirr_caption, describe_scene, fiq_captions
from clip_cir.data.synthetic.classic import CLASSIC, check_classic, write_classic
from clip_cir.data.synthetic.edits import EDITS_FOLDER, reported_kind, write_edit_kinds
from clip_cir.data.synthetic.world import (
    ASIN_ALPHABET,
    CIRR_BACKGROUND,
    CIRR_SPLITS,
    CIRR_VARIANTS,
    FIQ_BACKGROUNDS,
    FIQ_PNG_EVERY,
    FIQ_SPLITS,
    FIQ_VARIANTS,
    QUERIES_PER_GROUP,
    Edit,
    ImageJob,
    Scene,
    _make_group,
    _pick_queries,
    _plan_image,
    _random_scene,
    _save,
)

try:
    from tqdm import tqdm
except ImportError:  # tqdm only draws a progress bar; generation works without it
    tqdm = None


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
        kinds: dict[str, str] = {}
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
                kinds[str(entry["pairid"])] = reported_kind(edit.kind)
                captions.append(entry)
        _write_json(writer.root / base / "cirr" / "captions" / f"cap.rc2.{split}.json", captions)
        _write_json(writer.root / base / "cirr" / "image_splits" / f"split.rc2.{split}.json",
                    image_split)
        write_edit_kinds(writer.root, "cirr", None, split, kinds)
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
            kinds: dict[str, str] = {}
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
                    kinds[str(len(captions))] = reported_kind(edit.kind)
                    captions.append(entry)
            _write_json(writer.root / base / "captions" / f"cap.{category}.{split}.json", captions)
            _write_json(writer.root / base / "image_splits" / f"split.{category}.{split}.json",
                        image_split)
            write_edit_kinds(writer.root, "fashioniq", category, split, kinds)
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
        kinds: dict[str, str] = {}
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
            kinds[str(qid)] = reported_kind(edit.kind)
            annotations.append(entry)
        _write_json(writer.root / base / "annotations" / f"{split}.json", annotations)
        write_edit_kinds(writer.root, "circo", None, split, kinds)
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
    """Refuse to mix generated data into an existing data set unless asked to replace it: any
    folder the synthetic world writes (the stand-ins' too, written this time or not, so that
    synth_info.json describes all of it)."""
    for folder in ("cirr_dataset", "fashionIQ_dataset", "CIRCO", EDITS_FOLDER, *CLASSIC.values()):
        path = root / folder
        if path.is_dir() and any(path.iterdir()):
            if not overwrite:
                raise ValueError(
                    f"{path} exists and is not empty; pass overwrite=True to replace it")
            shutil.rmtree(path)


def generate(root: str | os.PathLike, n_train: int = 3000, n_val: int = 600, n_test: int = 600,
             size: int = 64, seed: int = 0, progress: bool = True, overwrite: bool = False,
             n_circo: int = 0, circo_distractors: int | None = None, classic: Sequence[str] = ()) -> dict:
    """Write the shapes world under ``root`` in CIRR and FashionIQ layouts, and CIRCO's and the
    classic benchmarks' if asked.

    ``n_*`` are query counts per split (FashionIQ splits them across its three categories);
    ``size`` is the short side of every image. ``n_circo`` queries go in each of CIRCO's val
    and test splits (0: no CIRCO folder), over one gallery that also holds ``circo_distractors``
    unrelated scenes (default 5 per query); CIRCO is sized apart so that callers who need only
    CIRR and FashionIQ pay nothing for it. Also writes ``pretrain_captions.csv`` (one
    descriptive title per train image, for contrastive CLIP pretraining, which the method
    assumes), ``synth_info.json`` and each query's kind of edit in ``synthetic_edits/``
    (`clip_cir.data.synthetic.edits`). ``classic`` names stand-ins of the classic benchmarks
    (`clip_cir.data.synthetic.classic.CLASSIC`: fashion200k, css, shoes, ...) to write too, each
    small (its writer's default counts), ``size`` pixels, in its own published layout; without
    them every file is as before. Returns the summary stored in ``synth_info.json`` plus ``root``.
    """
    if circo_distractors is None:
        circo_distractors = 5 * n_circo
    if min(n_train, n_val, n_test, n_circo, circo_distractors) < 0:
        raise ValueError("query counts must be >= 0")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    classic = check_classic(classic)
    root = Path(root)
    _check_root(root, overwrite)
    writer = _Writer(root, size)
    cirr_counts = {"train": n_train, "val": n_val, "test1": n_test}
    fiq_counts = {"train": n_train, "val": n_val, "test": n_test}
    info = {
        "generator": "clip_cir.data.synthetic",
        "args": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed,
                 "n_circo": n_circo, "circo_distractors": circo_distractors,
                 **({"classic": list(classic)} if classic else {})},
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
    if classic:
        info["classic"] = write_classic(root, classic, seed, size)
    _write_json(root / "synth_info.json", info)
    return {"root": str(root), **info}
