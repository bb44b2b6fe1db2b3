"""Spot-the-Diff as a composed-retrieval benchmark, read as yahoo/maaf defines it.

Layout (the dataset repository harsh19/spot-the-diff, with its `resized_images/` download):

```
DATA/spot-the-diff/data/annotations/{train,val,test}.json
DATA/spot-the-diff/data/resized_images/<img_id>.png      (the "before" frame)
DATA/spot-the-diff/data/resized_images/<img_id>_2.png    (the "after" frame)
```

An annotation file is a list of records `{"img_id": "5406", "sentences": ["...", ...]}`; an
`img_id` may appear in several records of a file.

Protocol: yahoo/maaf `datasets/spotthediff.py` (the reader) and `test_retrieval.py` (the
ranking), at commit a64ff56. Every record adds two gallery entries, `<img_id>.png` then
`<img_id>_2.png`, in file order and without merging repeats: a record whose `img_id` appeared
before adds two more entries showing the same two files. Entries are named `<img_id>` and
`<img_id>_2`, and a repeat's `<img_id>#<n>` and `<img_id>_2#<n>` (its n-th occurrence), so
each entry keeps its own name. A record's non-empty sentences (exactly `""` is empty; nothing
else is normalised) are its descriptions; a val or test query is one per description: the
record's first entry plus the description, its target the record's own second entry. Only that
entry is a hit, not another entry showing the same file (maaf labels every entry with its own
index), and only the record's own first entry is removed from its ranking (another copy of the
same file stays). Records without a description add their entries but no query. Recall@1, 5,
10, 50 and 100. Query ids are `<record position>/<sentence position>`, from 0.

Training is maaf's: one query per record with a description, holding all its descriptions.
maaf draws a random record, then one of its descriptions, at every step; here every record is a
query of each epoch and the trainer draws one of its descriptions (`train_captions`), seeded by
the run's seed, the epoch and the query's index.

Adaptations:
- maaf replaces an image it cannot open by the gallery's first image (with a printed warning);
  here a missing image stops the command unless `--skip-missing-images` is given, which leaves
  out the entries showing it and the queries that need them, and reports them.
- maaf evaluates on `val` unless asked for `test` (`--final_eval_on_test`); here `val` and `test`
  are the annotation files' own splits, and the commands' default evaluation split is `val`.
  The dataset's splits were not made for retrieval: val and test numbers may differ a lot
  (maaf's README says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_cir.data.images import ImageCheck
from clip_cir.data.io import read_json, require_fields, require_type
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

SPLITS = ("train", "val", "test")
RECALL_KS = (1, 5, 10, 50, 100)
FOLDER = Path("spot-the-diff") / "data"
IMAGES_FOLDER = "resized_images"
AFTER_SUFFIX = "_2"


def spotthediff_dir(data_root: Path) -> Path:
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise CIRError(f"{base}: Spot-the-Diff folder not found (--data-root must contain {FOLDER.as_posix()}/)")
    return base


def entry_name(stem: str, taken: dict[str, Any]) -> str:
    """`stem`, or `stem#n` for its n-th occurrence: one name per gallery entry."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}#{n}"
    return name


def _image_id(value: Any, path: Path, index: int) -> str:
    """maaf formats `img_id` into the file name as it is: a string, or an integer's digits."""
    if isinstance(value, str) and value and "/" not in value and value not in (".", ".."):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise CIRError(f"{path}: entry {index} field 'img_id' should be an image id (a string or an integer), "
                   f"got {value!r}")


def _sentences(value: Any, path: Path, index: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise CIRError(f"{path}: entry {index} field 'sentences' should be a list of strings")
    return value


def load_spotthediff(data_root: Path, split: str, images: ImageCheck | None = None,
                    options: ReaderOptions | None = None) -> list[CIRSplit]:
    """One CIRSplit: the split's queries ranked against its two entries per record (`options`:
    the registry's reader signature; Spot-the-Diff has none of its own)."""
    if split not in SPLITS:
        raise CIRError(f"unknown Spot-the-Diff split '{split}' (choose from {', '.join(SPLITS)})")
    images = images or ImageCheck()
    base = spotthediff_dir(data_root)
    path = base / "annotations" / f"{split}.json"
    records = require_type(path, read_json(path, "Spot-the-Diff annotation file"), list, "the top level")
    if not records:
        raise CIRError(f"{path}: no records")
    folder = base / IMAGES_FOLDER
    candidates: dict[str, list[Path]] = {}
    queries: list[Query] = []
    training = split == "train"
    for i, record in enumerate(records):
        require_fields(path, record, i, ("img_id", "sentences"))
        image_id = _image_id(record["img_id"], path, i)
        before = entry_name(image_id, candidates)
        candidates[before] = [folder / f"{image_id}.png"]
        after = entry_name(image_id + AFTER_SUFFIX, candidates)
        candidates[after] = [folder / f"{image_id}{AFTER_SUFFIX}.png"]
        described = [(j, s) for j, s in enumerate(_sentences(record["sentences"], path, i)) if s != ""]
        if not described:
            continue  # maaf: a record with only empty sentences is no query
        texts = tuple(s for _, s in described)
        if training:
            queries.append(Query(qid=str(i), reference=before, captions=texts, train_captions=texts,
                                 eval_caption=texts[0], target=after))
        else:
            queries += [Query(qid=f"{i}/{j}", reference=before, captions=(s,), train_captions=(s,), eval_caption=s,
                              target=after) for j, s in described]
    used = {name for q in queries for name in (q.reference, q.target)}
    candidates = images.gallery_candidates(split, candidates, used)
    gallery = images.locate(candidates, path)
    return [images.drop_queries(CIRSplit(dataset="spotthediff", name="spotthediff", split=split, queries=queries,
                                         gallery=gallery, exclude_reference=True, recall_ks=RECALL_KS),
                                len(candidates))]
