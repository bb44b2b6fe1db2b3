"""CIRR in its published layout (`<root>/cirr_dataset/cirr/{captions,image_splits}`)."""

from __future__ import annotations

import logging
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.io import read_json, require_fields, require_type
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

log = logging.getLogger("clip_cir")
SPLITS = ("train", "val", "test1")
RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)


def cirr_dir(data_root: Path) -> Path:
    base = Path(data_root) / "cirr_dataset"
    if not base.is_dir():
        raise CIRError(f"{base}: CIRR folder not found (--data-root must contain cirr_dataset/)")
    return base


def image_candidates(base: Path, rel: str) -> list[Path]:
    """Where an image may be: the split file's path (`./train/34/<name>.png`) and, for NLVR2
    copies without the numbered sub-folders, the flat `train/<name>.png`."""
    listed = base / rel
    parts = Path(rel).parts  # "./train/34/x.png" -> ("train", "34", "x.png")
    if len(parts) == 3 and parts[0] == "train":
        return [listed, base / "train" / parts[-1]]
    return [listed]


def load_cirr_gallery(data_root: Path, split: str, images: ImageCheck,
                      used: set[str]) -> tuple[Path, dict[str, Path], set[str], int]:
    """The split file's images that exist, the names it lists and how many were looked for;
    `used` are the names the split's queries need (training galleries may be limited to them)."""
    base = cirr_dir(data_root)
    path = base / "cirr" / "image_splits" / f"split.rc2.{split}.json"
    mapping = require_type(path, read_json(path, "CIRR image split file"), dict, "the top level")
    candidates: dict[str, list[Path]] = {}
    for name, rel in mapping.items():
        if not isinstance(rel, str):
            raise CIRError(f"{path}: the path of image '{name}' should be a string")
        candidates[name] = image_candidates(base, rel)
    candidates = images.gallery_candidates(split, candidates, used)
    gallery = images.locate(candidates, path)
    flat = sum(1 for name, found in gallery.items() if found != candidates[name][0])
    if flat:
        log.info("CIRR %s: %d of %d images found in the flat NLVR2 layout (train/<name>.png) rather than at the "
                 "path %s lists; using them", split, flat, len(gallery), path.name)
    return path, gallery, set(mapping), len(candidates)


def load_cirr(data_root: Path, split: str, images: ImageCheck | None = None) -> list[CIRSplit]:
    """All queries of one CIRR split, ranked against that split's whole image set."""
    if split not in SPLITS:
        raise CIRError(f"unknown CIRR split '{split}' (choose from {', '.join(SPLITS)})")
    images = images or ImageCheck()
    path = cirr_dir(data_root) / "cirr" / "captions" / f"cap.rc2.{split}.json"
    entries = require_type(path, read_json(path, "CIRR caption file"), list, "the top level")
    used = {e[k] for e in entries if isinstance(e, dict) for k in ("reference", "target_hard")
            if isinstance(e.get(k), str)}
    split_file, gallery, split_names, listed = load_cirr_gallery(data_root, split, images, used)
    has_targets = split != "test1"
    fields = ["pairid", "reference", "caption", "img_set"] + (["target_hard", "target_soft"] if has_targets else [])
    queries = []
    seen_pairids: set[str] = set()
    for i, entry in enumerate(entries):
        require_fields(path, entry, i, fields)
        if str(entry["pairid"]) in seen_pairids:
            raise CIRError(f"{path}: entry {i} repeats pairid {entry['pairid']}")
        seen_pairids.add(str(entry["pairid"]))
        img_set = entry["img_set"]
        if not isinstance(img_set, dict) or not isinstance(img_set.get("members"), list):
            raise CIRError(f"{path}: entry {i} has no list 'img_set.members'")
        names = [entry["reference"], *img_set["members"]] + ([entry["target_hard"]] if has_targets else [])
        for name in names:
            if not isinstance(name, str):
                raise CIRError(f"{path}: entry {i} (pairid {entry['pairid']}) has an image name that is not "
                               f"a string: {name!r}")
            if name not in split_names:
                raise CIRError(f"{path}: entry {i} (pairid {entry['pairid']}) names image '{name}', "
                               f"which is not in {split_file.name}")
        caption = entry["caption"]
        if not isinstance(caption, str):
            raise CIRError(f"{path}: entry {i} field 'caption' should be a string")
        soft = entry.get("target_soft")
        if has_targets and not (isinstance(soft, dict) and all(isinstance(v, (int, float)) for v in soft.values())):
            raise CIRError(f"{path}: entry {i} field 'target_soft' should be an object of numbers")
        queries.append(Query(
            qid=str(entry["pairid"]),
            reference=entry["reference"],
            captions=(caption,),
            train_captions=(caption,),
            eval_caption=caption,
            target=entry.get("target_hard"),
            target_soft={k: float(v) for k, v in soft.items()} if soft is not None else None,
            members=tuple(img_set["members"]),
        ))
    return [images.drop_queries(CIRSplit(dataset="cirr", name="cirr", split=split, queries=queries, gallery=gallery,
                                         exclude_reference=True, recall_ks=RECALL_KS, subset_ks=SUBSET_KS), listed)]
