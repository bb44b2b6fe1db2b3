"""CIRCO in its published layout (`<root>/CIRCO/...`, miccunifi/CIRCO).

```
CIRCO/annotations/{val,test}.json
CIRCO/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
CIRCO/COCO2017_unlabeled/unlabeled2017/000000243611.jpg
```

One gallery (the ~123k COCO 2017 unlabeled images) serves both splits. Images are named by
their COCO id as a decimal string ("243611"), so the server's integer ids are data
(`CIRSplit.image_ids`) and metrics and submissions need no CIRCO branch. The protocol follows the
dataset's own evaluation code and SEARLE's: the whole gallery is ranked and the reference is
NOT removed from its own ranking; mAP@K over every ground truth, Recall@K over `target_img_id`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clip_cir.data.images import ImageCheck
from clip_cir.data.io import read_json, require_fields, require_type
from clip_cir.data.types import CIRSplit, Query
from clip_cir.errors import CIRError

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
RECALL_KS = (5, 10, 25, 50)
MAP_KS = (5, 10, 25, 50)
QUERY_TEXTS = ("caption", "concept-and-caption")
"""`caption`: the relative caption alone (default). `concept-and-caption`: the shared concept put
where SEARLE's prompt `a photo of $ that {relative_caption}` puts its pseudo-word for the
reference image, i.e. `a photo of {shared_concept} that {relative_caption}`. (SEARLE's released
code reads `shared_concept` but never puts it in its prompt; the CIRCO authors describe it as
"useful to clarify ambiguities".)"""
GALLERY_FILE = Path("COCO2017_unlabeled") / "annotations" / "image_info_unlabeled2017.json"
IMAGE_DIR = Path("COCO2017_unlabeled") / "unlabeled2017"


def circo_dir(data_root: Path) -> Path:
    base = Path(data_root) / "CIRCO"
    if not base.is_dir():
        raise CIRError(f"{base}: CIRCO folder not found (--data-root must contain CIRCO/)")
    return base


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_circo_gallery(data_root: Path, images: ImageCheck) -> tuple[Path, dict[str, Path], dict[str, int]]:
    """The COCO unlabeled image list: (its path, name -> file that exists, name -> integer id for
    every listed image), in file order."""
    base = circo_dir(data_root)
    path = base / GALLERY_FILE
    info = require_type(path, read_json(path, "COCO unlabeled image list"), dict, "the top level")
    if "images" not in info:
        raise CIRError(f"{path}: no field 'images' (the list of gallery images)")
    entries = require_type(path, info["images"], list, "'images'")
    gallery: dict[str, Path] = {}
    ids: dict[str, int] = {}
    for i, entry in enumerate(entries):
        require_fields(path, entry, i, ("id", "file_name"))
        image_id, file_name = entry["id"], entry["file_name"]
        if not _is_int(image_id):
            raise CIRError(f"{path}: image entry {i} field 'id' should be an integer, got {image_id!r}")
        if not isinstance(file_name, str) or not file_name or Path(file_name).name != file_name:
            raise CIRError(f"{path}: image entry {i} (id {image_id}) field 'file_name' should be a plain file "
                           f"name, got {file_name!r}")
        name = str(image_id)
        if name in gallery:
            raise CIRError(f"{path}: image id {image_id} is listed twice (entries {list(ids).index(name)} and {i})")
        gallery[name] = base / IMAGE_DIR / file_name
        ids[name] = image_id
    if not gallery:
        raise CIRError(f"{path}: 'images' is empty")
    return path, images.locate({name: [file] for name, file in gallery.items()}, path), ids


def query_text(relative_caption: str, shared_concept: str, form: str) -> str:
    """The text the query is encoded from (see QUERY_TEXTS)."""
    if form == "caption":
        return relative_caption
    if form == "concept-and-caption":
        return f"a photo of {shared_concept} that {relative_caption}"
    raise CIRError(f"unknown CIRCO query text '{form}' (choose from {', '.join(QUERY_TEXTS)})")


def _image_name(value: Any, where: str, field: str, gallery_file: Path, ids: dict[str, int]) -> str:
    """One image id from an annotation, as the gallery name it resolves to; `where` names the
    file and entry for the error message."""
    if not _is_int(value):
        raise CIRError(f"{where} field '{field}' should hold integer image ids, got {value!r}")
    if str(value) not in ids:
        raise CIRError(f"{where} names image id {value} ({field}), which is not in {gallery_file.name}")
    return str(value)


def load_circo(data_root: Path, split: str, query_form: str = "caption",
               images: ImageCheck | None = None) -> list[CIRSplit]:
    """All queries of one CIRCO split, ranked against the whole COCO unlabeled gallery (`images`:
    what to do with listed images that are absent, as for CIRR and FashionIQ)."""
    images = images or ImageCheck()
    if split not in SPLITS:
        raise CIRError(f"unknown CIRCO split '{split}' (choose from {', '.join(SPLITS)})")
    query_text("", "", query_form)  # reject an unknown form before reading 123k image entries
    gallery_file, gallery, ids = load_circo_gallery(data_root, images)
    path = circo_dir(data_root) / "annotations" / f"{split}.json"
    entries = require_type(path, read_json(path, "CIRCO annotation file"), list, "the top level")
    has_targets = split == "val"
    fields = ["id", "reference_img_id", "relative_caption", "shared_concept"]
    fields += ["target_img_id", "gt_img_ids"] if has_targets else []
    queries = []
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        require_fields(path, entry, i, fields)
        qid = entry["id"]
        if not _is_int(qid):
            raise CIRError(f"{path}: entry {i} field 'id' should be an integer query id, got {qid!r}")
        if qid in seen:
            raise CIRError(f"{path}: entry {i} repeats query id {qid}")
        seen.add(qid)
        where = f"{path}: entry {i} (id {qid})"
        for text_field in ("relative_caption", "shared_concept"):
            if not isinstance(entry[text_field], str):
                raise CIRError(f"{where} field '{text_field}' should be a string")
        reference = _image_name(entry["reference_img_id"], where, "reference_img_id", gallery_file, ids)
        target, ground_truths, aspects = None, None, ()
        if has_targets:
            gts = entry["gt_img_ids"]
            if not isinstance(gts, list) or not gts:
                raise CIRError(f"{where} field 'gt_img_ids' should be a non-empty list of image ids")
            ground_truths = tuple(_image_name(g, where, "gt_img_ids", gallery_file, ids) for g in gts)
            target = _image_name(entry["target_img_id"], where, "target_img_id", gallery_file, ids)
            if target != ground_truths[0]:
                raise CIRError(f"{where} target_img_id {target} is not the first of gt_img_ids "
                               f"({ground_truths[0]})")
            if len(set(ground_truths)) < len(ground_truths):
                log.warning("%s: query %s lists a ground truth more than once; as in the official evaluation, "
                            "each listing counts in mAP's min(K, #ground truths)", path, qid)
            raw_aspects = entry.get("semantic_aspects", [])
            if not isinstance(raw_aspects, list) or not all(isinstance(a, str) for a in raw_aspects):
                raise CIRError(f"{where} field 'semantic_aspects' should be a list of strings")
            aspects = tuple(raw_aspects)
        caption = entry["relative_caption"]
        text = query_text(caption, entry["shared_concept"], query_form)
        queries.append(Query(qid=str(qid), reference=reference, captions=(caption,), train_captions=(text,),
                             eval_caption=text, target=target, ground_truths=ground_truths, aspects=aspects))
    return [images.drop_queries(CIRSplit(dataset="circo", name="circo", split=split, queries=queries,
                                         gallery=gallery, exclude_reference=False, recall_ks=RECALL_KS,
                                         map_ks=MAP_KS if has_targets else (), image_ids=ids), listed=len(ids))]
