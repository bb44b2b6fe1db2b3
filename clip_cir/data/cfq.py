"""CFQ (Challenging Fashion Queries, Dodds et al. 2022), an evaluation-only benchmark with graded judgements.

Layout, as yahoo/maaf's `src/maaf/datasets/cfq.py` (`CFQSet`) reads it, under `<data root>/cfq/`
(MAAF's default `--data_path` ends in `Data/cfq/`):

    cfq/judgments.tsv               one judge's verdict per line, tab-separated, with a header naming
                                    at least subset, query_hash, caption, catalog_hash, accurate, similar
    cfq/equivalent_captions.json    {caption: [paraphrase, ...]}, the same number of paraphrases each
    cfq/images/<hash>.jpeg          query and catalog images by hash

`accurate` is yes / not sure / no and `similar` is reasonable / somewhat reasonable / not
reasonable (any case), worth 1 / 0 / -1. As MAAF's `CFQ.__init__`, the votes of one (query_hash,
caption, catalog_hash) within a subset are averaged; evaluation (`clip_cir.evaluation.graded`,
after MAAF's `actions/eval_cfq.py`) scores exactly those judged pairs by cosine similarity.

What a split holds: one `CIRSplit` per subset (the `subset` column), named after it. Its queries
are the distinct (query_hash, caption) pairs in file order, `qid` `<subset>/<n>`; its gallery is
the subset's judged catalog images in file order (MAAF's `catalog`); a query image that is not a
catalog image is kept apart in `query_images`; `judgments` maps each query to its judged
candidates' (mean accurate, mean similar). Nothing is removed from a ranking.

Adaptations:
- Paraphrases: MAAF encodes every paraphrase as an extra query (`augmented_compute_metrics`), but
  scores only the original captions' similarities (its metrics read `self.aggregated`, built from
  the file's own captions). We score the same pairs and encode no paraphrase; a query's
  paraphrases are kept after its caption in `Query.captions`, and the file is read and checked
  (MAAF cannot run without it).
- There is no training data: the split is `test`, and asking for `train` (stage 1 or 2) stops with
  one line.
- Hashes are kept as written (pandas would turn an all-digit column into integers).
- Missing images: MAAF stops at the first. Here, as for every benchmark, that is the default;
  with --skip-missing-images a missing catalog image takes only its judged pairs with it, a
  missing query image its queries, and a query left with no judged pair is dropped too.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.io import read_json, require_type
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

SPLITS = ("test",)
FOLDER = "cfq"
JUDGMENTS_FILE = "judgments.tsv"
PARAPHRASES_FILE = "equivalent_captions.json"
IMAGE_SUFFIX = ".jpeg"
COLUMNS = ("subset", "query_hash", "caption", "catalog_hash", "accurate", "similar")
VOTES = {
    "accurate": {"yes": 1, "not sure": 0, "no": -1},
    "similar": {"reasonable": 1, "somewhat reasonable": 0, "not reasonable": -1},
}
"""MAAF's mapping of the (lower-cased) verdicts to numbers."""


@dataclasses.dataclass
class _Votes:
    """The votes on one (query_hash, caption, catalog_hash) of a subset, summed."""

    accurate: int = 0
    similar: int = 0
    count: int = 0

    def means(self) -> tuple[float, float]:
        # pandas' mean of integer votes: their exact sum divided by their count.
        return self.accurate / self.count, self.similar / self.count


def _vote(path: Path, line: int, column: str, value: str) -> int:
    votes = VOTES[column]
    if value.lower() not in votes:
        raise CIRError(f"{path}:{line}: column '{column}' is {value!r} (expected one of "
                       f"{', '.join(votes)}, in any case)")
    return votes[value.lower()]


def read_judgments(path: Path) -> dict[str, dict[tuple[str, str], dict[str, _Votes]]]:
    """subset -> (query_hash, caption) -> catalog_hash -> summed votes, each level in file order."""
    if not path.is_file():
        raise CIRError(f"{path}: CFQ judgements file not found")
    subsets: dict[str, dict[tuple[str, str], dict[str, _Votes]]] = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # a byte-order mark is not part of a name
            rows = csv.reader(f, delimiter="\t")
            header = next(rows, None)
            if header is None:
                raise CIRError(f"{path}: empty file (expected a header naming {', '.join(COLUMNS)})")
            for column in COLUMNS:
                if column not in header:
                    raise CIRError(f"{path}: no column '{column}' in the header (CFQ needs {', '.join(COLUMNS)})")
            at = {column: header.index(column) for column in COLUMNS}
            for row in rows:
                line = rows.line_num
                if not row:  # a blank line, which pandas skips too
                    continue
                if len(row) != len(header):
                    raise CIRError(f"{path}:{line}: {len(row)} tab-separated fields, the header has {len(header)}")
                cells = {column: row[i] for column, i in at.items()}
                empty = next((c for c in COLUMNS if not cells[c].strip()), None)
                if empty is not None:
                    raise CIRError(f"{path}:{line}: column '{empty}' is empty")
                accurate = _vote(path, line, "accurate", cells["accurate"])
                similar = _vote(path, line, "similar", cells["similar"])
                query = (cells["query_hash"], cells["caption"])
                votes = subsets.setdefault(cells["subset"], {}).setdefault(query, {}).setdefault(
                    cells["catalog_hash"], _Votes())
                votes.accurate += accurate
                votes.similar += similar
                votes.count += 1
    except csv.Error as e:
        raise CIRError(f"{path}:{rows.line_num}: malformed line ({e})") from None
    except UnicodeDecodeError as e:
        raise CIRError(f"{path}: not UTF-8 text ({e})") from None
    if not subsets:
        raise CIRError(f"{path}: no judgements below the header")
    return subsets


def read_paraphrases(path: Path) -> dict[str, tuple[str, ...]]:
    """caption -> its paraphrases; MAAF takes as many of each as the first caption has."""
    data = require_type(path, read_json(path, "CFQ paraphrase file"), dict, "the top level")
    width = None
    out: dict[str, tuple[str, ...]] = {}
    for caption, paraphrases in data.items():
        if not (isinstance(paraphrases, list) and all(isinstance(p, str) for p in paraphrases)):
            raise CIRError(f"{path}: the paraphrases of {caption!r} should be a list of strings")
        width = len(paraphrases) if width is None else width
        if len(paraphrases) < width:
            raise CIRError(f"{path}: {caption!r} has {len(paraphrases)} paraphrases, fewer than the "
                           f"{width} of the first caption")
        out[caption] = tuple(paraphrases[:width])
    return out


def _subset_split(subset: str, judged: dict[tuple[str, str], dict[str, _Votes]], files: dict[str, Path],
                  paraphrases: dict[str, tuple[str, ...]], images: ImageCheck) -> CIRSplit:
    """One subset as a split: the judged pairs whose images can be used."""
    catalog = list(dict.fromkeys(name for candidates in judged.values() for name in candidates))
    gallery = {name: files[name] for name in catalog if name in files}
    queries, judgments = [], {}
    for n, ((query_hash, caption), candidates) in enumerate(judged.items()):
        qid = f"{subset}/{n}"
        queries.append(Query(qid=qid, reference=query_hash, captions=(caption, *paraphrases.get(caption, ())),
                             train_captions=(caption,), eval_caption=caption))
        judgments[qid] = {name: votes.means() for name, votes in candidates.items() if name in gallery}
    apart = {q.reference: files[q.reference] for q in queries if q.reference not in gallery and q.reference in files}
    split = CIRSplit(dataset="cfq", name=subset, split="test", queries=queries, gallery=gallery,
                     exclude_reference=False, recall_ks=(), query_images=apart or None, judgments=judgments)
    split = images.drop_queries(split, len(catalog))
    # A query whose judged candidates were all skipped has nothing left to score.
    kept = [q for q in split.queries if judgments[q.qid]]
    if len(kept) < len(split.queries):
        key = f"cfq/{subset}/test"
        images.dropped_queries[key] = images.dropped_queries.get(key, 0) + len(split.queries) - len(kept)
    references = {q.reference for q in kept}
    return dataclasses.replace(split, queries=kept, judgments={q.qid: judgments[q.qid] for q in kept},
                               query_images={r: p for r, p in apart.items() if r in references} or None)


def load_cfq(data_root: Path, split: str, images: ImageCheck | None = None,
             options: ReaderOptions | None = None) -> list[CIRSplit]:
    """One CIRSplit per CFQ subset, with the graded judgements evaluation scores (MAAF's protocol);
    CFQ has no reader options."""
    if split == "train":
        raise CIRError("CFQ is an evaluation set (graded judgements, no training triplets): train on another "
                       "dataset (FashionIQ, as MAAF does) and evaluate with --dataset cfq --split test")
    if split not in SPLITS:
        raise CIRError(f"unknown CFQ split '{split}' (CFQ has one split: {', '.join(SPLITS)})")
    base = Path(data_root) / FOLDER
    if not base.is_dir():
        raise CIRError(f"{base}: CFQ folder not found (--data-root must contain {FOLDER}/)")
    judgments_path = base / JUDGMENTS_FILE
    subsets = read_judgments(judgments_path)
    paraphrases = read_paraphrases(base / PARAPHRASES_FILE)
    images = images or ImageCheck()
    names = dict.fromkeys(name for judged in subsets.values() for (query_hash, _), candidates in judged.items()
                          for name in (query_hash, *candidates))
    files = images.locate({name: [base / "images" / f"{name}{IMAGE_SUFFIX}"] for name in names}, judgments_path)
    return [_subset_split(subset, judged, files, paraphrases, images) for subset, judged in subsets.items()]
