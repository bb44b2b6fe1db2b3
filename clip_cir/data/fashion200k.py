"""Fashion200k as TIRG defines it (google/tirg `datasets.py`, class `Fashion200k`; scored by its
`test_retrieval.py`).

Layout (`--data-root` holds `Fashion200k/`, or is that folder itself)::

    Fashion200k/labels/{dress,jacket,pants,skirt,top}_{train,test}_detect_all.txt
    Fashion200k/test_queries.txt
    Fashion200k/women/<category>/<...>/<id>/<id>_0.jpeg      (any path a label line names)

A label line is `path<TAB>detection score<TAB>description`; the image is `Fashion200k/<path>`.
The score is read but not used, as in TIRG. The description becomes the image's caption as TIRG
post-processes it (`caption_text`). `test_queries.txt` (TIRG's fixed test queries) holds one
`source target` pair of image paths per line.

Protocol (TIRG's):
- Test: one query per line of `test_queries.txt`; its text is `replace <w_src> with <w_tgt>`
  (`modifier_text`); the gallery is every test image in label-file order; a retrieved image is a
  hit when its caption equals the target's (`Query.target_label`, `CIRSplit.gallery_labels`),
  so a query has as many correct answers as test images share the target's caption; the source
  image is removed from its own ranking; Recall@1/5/10/50/100 (papers quote 1, 10, 50).
- Train: TIRG draws, at every step, a random image that has a "parent" caption (the caption with
  one word removed, `parent_caption`) shared with another caption, one such other caption, and a
  random image of it as the target. Here the draw is made once: one query per such image, in
  image order, drawn by TIRG's rule with `random.Random("fashion200k:<image index>")`, so the
  training triplets are static and the same on every run.

Adaptations:
- TIRG reads every file of `labels/` whose name contains the split, in `os.listdir` order; here
  the five named files, in the order above (sorted names), so the gallery order is reproducible.
- A label path listed more than once is one gallery entry per line, as in TIRG; the repeats are
  named `<path>#2`, `<path>#3`, ... (gallery names are unique), and a test query's source is the
  last line naming its path (TIRG's `file2imgid` keeps the last).
- Blank lines are ignored; a line without three tab-separated fields (or with an empty path), a
  test query line without two paths, a query naming an image no test label line lists, or one
  whose source or target has an empty description is an error naming file:line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, Query, ReaderOptions
from clip_cir.errors import CIRError

DATASET = "fashion200k"
FOLDER = "Fashion200k"
SPLITS = ("train", "test")
CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")
RECALL_KS = (1, 5, 10, 50, 100)
TEST_QUERIES = "test_queries.txt"
CAPTION_MARKS = ((".", "dotmark"), ("?", "questionmark"), ("&", "andmark"), ("*", "starmark"))
"""TIRG's caption post-processing: these characters become words, in this order."""


def caption_text(description: str) -> str:
    """The caption TIRG gives a label line's description: stripped of surrounding whitespace, then
    `.`, `?`, `&` and `*` spelled out as `dotmark`, `questionmark`, `andmark`, `starmark`."""
    text = description.strip()
    for mark, word in CAPTION_MARKS:
        text = text.replace(mark, word)
    return text


def different_words(source: str, target: str) -> tuple[str, str]:
    """TIRG's word pair for a modifier: the first word of `source` not among `target`'s words and
    the first word of `target` not among `source`'s. Where every word is shared, TIRG's loop ends
    on the last word, so the last word is used."""
    source_words, target_words = source.split(), target.split()
    if not source_words or not target_words:
        raise ValueError("an empty caption has no word to replace")
    source_word = next((w for w in source_words if w not in target_words), source_words[-1])
    target_word = next((w for w in target_words if w not in source_words), target_words[-1])
    return source_word, target_word


def modifier_text(source: str, target: str) -> str:
    """The query text TIRG builds from the two captions: `replace <w_src> with <w_tgt>`."""
    source_word, target_word = different_words(source, target)
    return f"replace {source_word} with {target_word}"


def parent_caption(caption: str, word: str) -> str:
    """TIRG's parent of `caption` for one of its words: every occurrence of `word` as a substring
    removed (also inside other words, as TIRG's `str.replace` does), double spaces made single
    once, and the ends stripped."""
    return caption.replace(word, "").replace("  ", " ").strip()


@dataclass(frozen=True)
class LabelLine:
    name: str
    """The gallery name: the path, with `#<n>` for its n-th listing."""
    path: str
    caption: str
    listed_in: Path
    """The label file."""


def _text_lines(path: Path) -> list[str]:
    """A text file's lines split at line ends only (`\n`, `\r\n`, `\r`), as Python's file iteration
    splits them; a file that is not UTF-8 is one line naming it."""
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise CIRError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def dataset_dir(data_root: Path) -> Path:
    """`<data_root>/Fashion200k`, or `data_root` itself where it holds `labels/` directly."""
    base = Path(data_root) / FOLDER
    if base.is_dir():
        return base
    if (Path(data_root) / "labels").is_dir():
        return Path(data_root)
    raise CIRError(f"{base}: Fashion200k folder not found (--data-root must contain {FOLDER}/ or its labels/)")


def read_label_files(base: Path, split: str) -> list[LabelLine]:
    """Every line of the split's five label files, in file then line order."""
    lines: list[LabelLine] = []
    listed: dict[str, int] = {}
    for category in CATEGORIES:
        path = base / "labels" / f"{category}_{split}_detect_all.txt"
        if not path.is_file():
            raise CIRError(f"{path}: Fashion200k label file not found")
        for number, line in enumerate(_text_lines(path), start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            where = f"{path}:{number}"
            if len(fields) < 3:
                raise CIRError(f"{where}: expected 'path<TAB>score<TAB>description', got {len(fields)} "
                               f"tab-separated field{'s' if len(fields) != 1 else ''}")
            image = fields[0]
            if not image.strip():
                raise CIRError(f"{where}: empty image path")
            listed[image] = listed.get(image, 0) + 1
            name = image if listed[image] == 1 else f"{image}#{listed[image]}"
            lines.append(LabelLine(name, image, caption_text(fields[2]), path))
    return lines


def read_test_queries(base: Path, lines: list[LabelLine]) -> list[Query]:
    """TIRG's fixed test queries: the source's and target's captions give the modifier text and
    the label a hit must carry."""
    path = base / TEST_QUERIES
    if not path.is_file():
        raise CIRError(f"{path}: Fashion200k test query file not found (TIRG's test_queries.txt)")
    last = {line.path: line for line in lines}  # TIRG's file2imgid: the last listing wins
    queries: list[Query] = []
    for number, row in enumerate(_text_lines(path), start=1):
        fields = row.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise CIRError(f"{path}:{number}: expected 'source_path target_path', got {len(fields)} fields")
        for image in fields:
            if image not in last:
                raise CIRError(f"{path}:{number}: image '{image}' is not listed in labels/*_test_detect_all.txt")
        source, target = last[fields[0]], last[fields[1]]
        if not source.caption or not target.caption:
            raise CIRError(f"{path}:{number}: image '{(target if source.caption else source).path}' has an "
                           f"empty description, so no word to replace")
        text = modifier_text(source.caption, target.caption)
        queries.append(Query(qid=str(len(queries)), reference=source.name, captions=(text,),
                             train_captions=(text,), eval_caption=text, target=target.name,
                             target_label=target.caption))
    return queries


def training_queries(lines: list[LabelLine]) -> list[Query]:
    """One query per image whose caption has a one-word-different partner, drawn by TIRG's rule
    (`caption_index_init_` / `caption_index_sample_`) with a generator seeded by the image's index.

    Parents: for each distinct caption (first-listed order) and each of its words,
    `parent_caption`; a parent with two or more child captions makes their images modifiable,
    and each such image lists the parent (parents in first-seen order). Draw: a parent of the
    image, then one of its children, again until the child is not the image's own caption; the
    target is one of that caption's images.
    """
    images_of: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        images_of.setdefault(line.caption, []).append(i)
    children: dict[str, list[str]] = {}
    for caption in images_of:
        for word in caption.split():
            kids = children.setdefault(parent_caption(caption, word), [])
            if caption not in kids:
                kids.append(caption)
    parents_of: dict[int, list[str]] = {}
    for parent, kids in children.items():
        if len(kids) >= 2:
            for caption in kids:
                for i in images_of[caption]:
                    parents_of.setdefault(i, []).append(parent)
    queries: list[Query] = []
    for i in sorted(parents_of):
        rng = random.Random(f"{DATASET}:{i}")
        own = lines[i].caption
        while True:
            caption = rng.choice(children[rng.choice(parents_of[i])])
            if caption != own:
                break
        target = lines[rng.choice(images_of[caption])]
        text = modifier_text(own, target.caption)
        queries.append(Query(qid=str(i), reference=lines[i].name, captions=(text,), train_captions=(text,),
                             eval_caption=text, target=target.name, target_label=target.caption))
    return queries


def load_fashion200k(data_root: Path, split: str, images: ImageCheck | None = None,
                     options: ReaderOptions | None = None) -> list[CIRSplit]:
    """One Fashion200k split as TIRG reads and scores it (see the module docstring); `options`
    has nothing for Fashion200k."""
    if split not in SPLITS:
        raise CIRError(f"unknown Fashion200k split '{split}' (choose from {', '.join(SPLITS)})")
    images = images or ImageCheck()
    base = dataset_dir(data_root)
    lines = read_label_files(base, split)
    queries = read_test_queries(base, lines) if split == "test" else training_queries(lines)
    used = {name for q in queries for name in (q.reference, q.target)}
    candidates = images.gallery_candidates(split, {line.name: [base / line.path] for line in lines}, used)
    by_file: dict[Path, dict[str, list[Path]]] = {}  # each label file's images, so errors name the file
    for line in lines:
        if line.name in candidates:
            by_file.setdefault(line.listed_in, {})[line.name] = candidates[line.name]
    gallery: dict[str, Path] = {}
    for label_file, files in by_file.items():
        gallery.update(images.locate(files, label_file))
    labels = {line.name: line.caption for line in lines if line.name in gallery}
    return [images.drop_queries(CIRSplit(dataset=DATASET, name=DATASET, split=split, queries=queries,
                                         gallery=gallery, exclude_reference=True, recall_ks=RECALL_KS,
                                         gallery_labels=labels), len(candidates))]
