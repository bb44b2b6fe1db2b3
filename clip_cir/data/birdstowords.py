"""Birds-to-Words as a composed-retrieval benchmark, read as yahoo/maaf defines it.

Layout (the dataset repository google-research-datasets/birds-to-words, images downloaded from
its URLs into `images/`, named by the last part of each URL):

```
DATA/birds-to-words/birds-to-words-v1.0.tsv
DATA/birds-to-words/images/<last part of img1ImgURL / img2ImgURL>
```

The TSV has eleven tab-separated columns (a header line names them): img1ObservationURL,
img1ImgURL, img1Species, img1Selection, img2ObservationURL, img2ImgURL, img2Species,
img2Selection, split (train / val / test), annN, description.

Protocol: yahoo/maaf `datasets/birdstowords.py` (the reader) and `test_retrieval.py` (the
ranking), at commit a64ff56. Each line is stripped of surrounding whitespace and split on tabs;
a line belongs to a split when its third-last field is the split's name. An image's name is its
URL's last `/`-separated part. A split's gallery is every image its lines name, once each, in
sorted name order. Lines are grouped by (left image, right image) pair; the queries of a val or
test split are one per description (the left image plus the description; the target is the
right image), pairs in sorted `<left>_<right>` order and descriptions in file order.
Descriptions are used as written (no other normalisation). Each query's own reference is
removed from its ranking, and a hit is the target image itself (maaf labels every gallery image
with its own index). Recall@1, 5, 10, 50 and 100.

Training is maaf's: one query per pair holding all its descriptions, plus each pair reversed
(right image to left) with "animal1" and "animal2" swapped in its descriptions (whole
space-separated words only), reverse pairs merging with a pair listed that way. maaf draws a
random pair, then one of its descriptions, at every step; here every pair is a query of each
epoch and the trainer draws one of its descriptions (`train_captions`), seeded by the run's
seed, the epoch and the query's index.

Adaptations:
- maaf leaves out images that are not on disk (and their pairs) without a word; here a missing
  image stops the command unless `--skip-missing-images` is given, which leaves them out and
  reports them.
- maaf selects lines by their split field and ignores any other; here a line that does not have
  the eleven columns, or names an unknown split, is an error naming the line. The one kind of
  line maaf drops silently because of its stripping (an empty description: stripped away, the
  split is no longer third from last) is left out here too, and counted in the log.
- maaf evaluates on `val` unless asked for `test` (`--final_eval_on_test`); here `val` and `test`
  are the TSV's own splits, and the commands' default evaluation split is `val`, as maaf's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RECALL_KS = (1, 5, 10, 50, 100)
FOLDER = "birds-to-words"
TSV_NAME = "birds-to-words-v1.0.tsv"
IMAGES_FOLDER = "images"
COLUMNS = ("img1ObservationURL", "img1ImgURL", "img1Species", "img1Selection", "img2ObservationURL",
           "img2ImgURL", "img2Species", "img2Selection", "split", "annN", "description")
LEFT_URL, RIGHT_URL, SPLIT, DESCRIPTION = 1, 5, 8, 10
SWAPPED_WORDS = {"animal1": "animal2", "animal2": "animal1"}


@dataclass(frozen=True)
class Description:
    """One TSV line of a split: its line number, the two images' names and the description."""

    line: int
    left: str
    right: str
    text: str


def birdstowords_dir(data_root: Path) -> Path:
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise CIRError(f"{base}: Birds-to-Words folder not found (--data-root must contain {FOLDER}/)")
    return base


def image_name(url: str, tsv: Path, line: int, column: str) -> str:
    """The file name maaf gives an image: the last `/`-separated part of its URL."""
    name = url.split("/")[-1]
    if not name or name in (".", ".."):
        raise CIRError(f"{tsv}:{line}: {column} '{url}' ends without a file name")
    return name


def read_descriptions(tsv: Path, split: str) -> list[Description]:
    """The lines of `split`, in file order, after checking every line of the file."""
    if not tsv.is_file():
        raise CIRError(f"{tsv}: Birds-to-Words TSV not found")
    out: list[Description] = []
    empty_descriptions = 0
    try:
        with open(tsv, encoding="utf-8") as f:  # universal newlines, as maaf's plain open()
            for number, line in enumerate(f, start=1):
                fields = line.strip().split("\t")
                if number == 1 and fields[-3:] == list(COLUMNS[-3:]):
                    continue  # the header
                raw = line.rstrip("\r\n").split("\t")
                if len(fields) == len(COLUMNS) - 1 and len(raw) == len(COLUMNS) and not raw[-1].strip():
                    empty_descriptions += 1  # maaf's strip removes the empty column: the line matches no split
                    continue
                if len(fields) != len(COLUMNS):
                    raise CIRError(f"{tsv}:{number}: {len(fields)} tab-separated columns, expected "
                                   f"{len(COLUMNS)} ({', '.join(COLUMNS)})")
                if fields[SPLIT] not in SPLITS:
                    raise CIRError(f"{tsv}:{number}: split '{fields[SPLIT]}' is not one of {', '.join(SPLITS)}")
                if fields[SPLIT] == split:
                    out.append(Description(number, image_name(fields[LEFT_URL], tsv, number, COLUMNS[LEFT_URL]),
                                           image_name(fields[RIGHT_URL], tsv, number, COLUMNS[RIGHT_URL]),
                                           fields[DESCRIPTION]))
    except UnicodeDecodeError as e:
        raise CIRError(f"{tsv}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CIRError(f"{tsv}: cannot read the Birds-to-Words TSV ({e})") from None
    if empty_descriptions:
        log.warning("%s: %d lines with an empty description left out (as maaf's reader leaves them out)",
                    tsv, empty_descriptions)
    return out


def swap_animals(description: str) -> str:
    """The description of the reversed pair: the words "animal1" and "animal2" exchanged."""
    return " ".join(SWAPPED_WORDS.get(word, word) for word in description.split(" "))


@dataclass
class Pair:
    """A (reference, target) pair and its descriptions with their line numbers (0: a reversed copy)."""

    reference: str
    target: str
    texts: list[str]
    lines: list[int]


def group_pairs(rows: list[Description], with_reversed: bool) -> list[tuple[str, Pair]]:
    """maaf's queries: pairs keyed `<left>_<right>` in sorted key order, descriptions in file
    order; `with_reversed` (training) adds each pair reversed with its animals swapped."""
    pairs: dict[str, Pair] = {}

    def add(reference: str, target: str, text: str, line: int) -> None:
        key = f"{reference}_{target}"
        if key not in pairs:  # maaf's key: a later pair with the same key joins the first
            pairs[key] = Pair(reference, target, [], [])
        pairs[key].texts.append(text)
        pairs[key].lines.append(line)

    for row in rows:
        add(row.left, row.right, row.text, row.line)
        if with_reversed:
            add(row.right, row.left, swap_animals(row.text), 0)
    return [(key, pairs[key]) for key in sorted(pairs)]


def _queries(pairs: list[tuple[str, Pair]], training: bool) -> list[Query]:
    if training:
        return [Query(qid=key, reference=pair.reference, captions=tuple(pair.texts), train_captions=tuple(pair.texts),
                      eval_caption=pair.texts[0], target=pair.target) for key, pair in pairs]
    return [Query(qid=str(line), reference=pair.reference, captions=(text,), train_captions=(text,),
                  eval_caption=text, target=pair.target)
            for _, pair in pairs for text, line in zip(pair.texts, pair.lines)]


def load_birdstowords(data_root: Path, split: str, images: ImageCheck | None = None,
                     options: ReaderOptions | None = None) -> list[CIRSplit]:
    """One CIRSplit: the split's queries ranked against every image the split's lines name
    (`options`: the registry's reader signature; Birds-to-Words has none of its own)."""
    if split not in SPLITS:
        raise CIRError(f"unknown Birds-to-Words split '{split}' (choose from {', '.join(SPLITS)})")
    images = images or ImageCheck()
    base = birdstowords_dir(data_root)
    tsv = base / TSV_NAME
    rows = read_descriptions(tsv, split)
    if not rows:
        raise CIRError(f"{tsv}: no lines of split '{split}'")
    names = sorted({name for row in rows for name in (row.left, row.right)})
    candidates = {name: [base / IMAGES_FOLDER / name] for name in names}
    candidates = images.gallery_candidates(split, candidates, set(names))
    gallery = images.locate(candidates, tsv)
    queries = _queries(group_pairs(rows, with_reversed=split == "train"), training=split == "train")
    return [images.drop_queries(CIRSplit(dataset="birdstowords", name="birdstowords", split=split, queries=queries,
                                         gallery=gallery, exclude_reference=True, recall_ks=RECALL_KS),
                                len(candidates))]
