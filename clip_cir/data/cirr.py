"""CIRR in its published layout (`<root>/cirr_dataset/cirr/{captions,image_splits}`)."""

from __future__ import annotations

from pathlib import Path

from clip_cir.data.io import check_files_exist, read_json, require_fields, require_type
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

SPLITS = ("train", "val", "test1")
RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)


def cirr_dir(data_root: Path) -> Path:
    base = Path(data_root) / "cirr_dataset"
    if not base.is_dir():
        raise CIRError(f"{base}: CIRR folder not found (--data-root must contain cirr_dataset/)")
    return base


def load_cirr_gallery(data_root: Path, split: str) -> tuple[Path, dict[str, Path]]:
    base = cirr_dir(data_root)
    path = base / "cirr" / "image_splits" / f"split.rc2.{split}.json"
    mapping = require_type(path, read_json(path, "CIRR image split file"), dict, "the top level")
    gallery: dict[str, Path] = {}
    for name, rel in mapping.items():
        if not isinstance(rel, str):
            raise CIRError(f"{path}: the path of image '{name}' should be a string")
        gallery[name] = base / rel
    check_files_exist(gallery, path)
    return path, gallery


def load_cirr(data_root: Path, split: str) -> list[CIRSplit]:
    """All queries of one CIRR split, ranked against that split's whole image set."""
    if split not in SPLITS:
        raise CIRError(f"unknown CIRR split '{split}' (choose from {', '.join(SPLITS)})")
    split_file, gallery = load_cirr_gallery(data_root, split)
    path = cirr_dir(data_root) / "cirr" / "captions" / f"cap.rc2.{split}.json"
    entries = require_type(path, read_json(path, "CIRR caption file"), list, "the top level")
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
            if name not in gallery:
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
    return [CIRSplit(dataset="cirr", name="cirr", split=split, queries=queries, gallery=gallery,
                     exclude_reference=True, recall_ks=RECALL_KS, subset_ks=SUBSET_KS)]
