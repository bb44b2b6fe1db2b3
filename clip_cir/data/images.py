"""Which listed images a reader may use: present and readable, or (with --skip-missing-images)
left out together with the queries that need them.

Real downloads are often incomplete (FashionIQ's image URLs are partly dead; NLVR2, where
CIRR's images come from, is often partly downloaded). By default a missing or unreadable image
stops the command with one line that names the file and the flag; with the flag, such images and
every query whose reference or target is one of them are dropped, counted and reported. Both
readers go through this one class, so CIRR and FashionIQ behave the same.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError

if TYPE_CHECKING:  # numpy loads when a split is read, not when the parsers import this module (--help)
    from clip_cir.data.table import ImageFiles

log = logging.getLogger("clip_cir")

SKIP_FLAG = "--skip-missing-images"
TRAINING_HINT = f"pass {SKIP_FLAG} to train without the triplets that use them"
EVALUATION_HINT = (f"pass {SKIP_FLAG} to evaluate without them (the numbers are then not comparable "
                   f"with published ones)")
SUBMISSION_HINT = "a submission ranks the whole split: complete the download (every listed image is needed)"


def unreadable_reason(path: Path) -> str | None:
    """Why PIL cannot open this image's header (None if it can). Cheap: the pixels are not decoded."""
    try:
        with Image.open(path) as image:
            _ = image.size  # opening parses the header; size is what a reader needs next
    except FileNotFoundError:
        return "missing"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"unreadable ({e})"
    return None


CHECK_CHUNK = 1024
"""Files checked one after another before deciding whether threads would help."""
SLOW_CHECK_SECONDS = 0.5e-3
"""A check (a stat, then a header read where asked) is quick on a local disk, where threads only
add contention for the interpreter lock (docs/benchmarks.md, large triplet files), and waits on a
network file system. Above this mean time per file over the first chunk, the remaining files are
checked by `CHECK_THREADS` threads, which overlap the waits."""
CHECK_THREADS = 16


def check_files(candidates: Sequence[Sequence[Path]], readable: bool) -> list[tuple[Path, str | None]]:
    """For each name's candidate files: (the first that exists, why it cannot be used or None),
    in order; a name none of whose candidates exists gets (its first, "missing ..."). `readable`
    also opens the found file's header (`unreadable_reason`)."""
    def check(paths: Sequence[Path]) -> tuple[Path, str | None]:
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path is None:
            also = f" (also looked for {', '.join(str(p) for p in paths[1:])})" if len(paths) > 1 else ""
            return paths[0], "missing" + also
        return path, unreadable_reason(path) if readable else None

    def check_chunk(chunk: Sequence[Sequence[Path]]) -> list[tuple[Path, str | None]]:
        return [check(paths) for paths in chunk]

    started = time.perf_counter()
    results = check_chunk(candidates[:CHECK_CHUNK])
    rest = candidates[CHECK_CHUNK:]
    if not rest or (time.perf_counter() - started) / len(results) <= SLOW_CHECK_SECONDS:
        return results + check_chunk(rest)
    chunks = [rest[i:i + CHECK_CHUNK] for i in range(0, len(rest), CHECK_CHUNK)]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return results + [result for chunk in pool.map(check_chunk, chunks) for result in chunk]


@dataclass
class SkippedImage:
    name: str
    path: Path
    reason: str
    """`missing`, or `unreadable (<PIL's message>)`."""
    listed_in: str


@dataclass
class ImageCheck:
    """What readers do with images that are listed but absent or unreadable.

    `skip=False` (default): the first one is a `CIRError` naming it, how many others there are,
    and `hint` (how to go on). `skip=True`: they are left out of the galleries, queries that need
    them are dropped, and both are counted here. `readable=True` also opens each image's header,
    so a corrupt file is caught before any work rather than in the middle of it.
    """

    skip: bool = False
    readable: bool = False
    hint: str = EVALUATION_HINT
    used_only: tuple[str, ...] = ()
    """Splits (e.g. `("train",)` for training) whose galleries hold only the images a query uses:
    an image no triplet needs is neither checked nor reported."""
    require_files: bool = True
    """False for commands that only read annotations (scoring a submission file)."""
    skipped: dict[str, SkippedImage] = field(default_factory=dict)
    dropped_queries: dict[str, int] = field(default_factory=dict)
    """`<dataset>/<benchmark>/<split>` -> queries dropped there."""
    total_queries: dict[str, int] = field(default_factory=dict)
    pruned_galleries: dict[str, int] = field(default_factory=dict)
    """`<dataset>/<benchmark>/<split>` -> gallery images left out there."""

    @classmethod
    def for_purpose(cls, purpose: str, skip: bool = False) -> "ImageCheck":
        """What readers do with absent or unreadable images for a command's `purpose`: 'training'
        (every image's header is opened up front, so a corrupt file stops the run before its first
        step), 'evaluation' or 'submission' (which cannot skip: it ranks the whole split)."""
        hints = {"training": TRAINING_HINT, "evaluation": EVALUATION_HINT, "submission": SUBMISSION_HINT}
        if purpose not in hints:
            raise ValueError(f"unknown purpose {purpose!r}")
        training = purpose == "training"
        return cls(skip=skip, readable=training or skip, hint=hints[purpose], used_only=("train",) if training else ())

    def locate(self, candidates: Mapping[str, Sequence[Path]], listed_in: Path) -> dict[str, Path]:
        """Name -> the first candidate file that exists (readable, if asked), in listing order.

        Several candidates per name cover layouts that differ between copies of a dataset (CIRR's
        NLVR2 images in numbered sub-folders or flat). Names with no usable file are errors, or
        with `skip` are recorded and left out.
        """
        if not self.require_files:
            return {name: paths[0] for name, paths in candidates.items()}
        found: dict[str, Path] = {}
        bad: list[SkippedImage] = []
        for name, (path, reason) in zip(candidates, check_files(list(candidates.values()), self.readable)):
            if reason is not None:
                bad.append(SkippedImage(name, path, reason, listed_in.name))
            else:
                found[name] = path
        self._settle(bad, len(candidates))
        return found

    def locate_files(self, files: ImageFiles, listed_in: Path,
                     where: Callable[[str], str] | None = None) -> ImageFiles:
        """`locate` for a gallery of one file per name, kept as arrays. `where(name)` says which
        line lists an image (`val.csv:3`), asked only for the images that cannot be used."""
        import numpy as np

        if not self.require_files:
            return files
        bad: list[SkippedImage] = []
        keep = np.ones(len(files), dtype=bool)
        checked = check_files([(path,) for path in files.values()], self.readable)
        for i, (name, (path, reason)) in enumerate(zip(files, checked)):
            if reason is not None:
                bad.append(SkippedImage(name, path, reason, where(name) if where else listed_in.name))
                keep[i] = False
        self._settle(bad, len(files))
        return files.take(keep) if bad else files

    def _settle(self, bad: list[SkippedImage], listed: int) -> None:
        """Stop at the first image that cannot be used, or (with `skip`) record them all."""
        if bad and not self.skip:
            first = bad[0]
            what = "is missing on disk" if first.reason.startswith("missing") else f"is {first.reason}"
            also = first.reason[len("missing"):] if first.reason.startswith("missing") else ""
            others = f"; {len(bad) - 1} more of the {listed} images listed are missing or unreadable" \
                if len(bad) > 1 else ""
            raise CIRError(f"{first.path}: image '{first.name}' listed in {first.listed_in} {what}{also}{others}; "
                           f"{self.hint}")
        for item in bad:
            self.skipped.setdefault(item.name, item)

    def is_skipped(self, name: str) -> bool:
        return name in self.skipped

    def gallery_candidates(self, split: str, candidates: dict[str, list[Path]],
                           used: set[str]) -> dict[str, list[Path]]:
        return {n: c for n, c in candidates.items() if n in used} if split in self.used_only else candidates

    def drop_queries(self, split: CIRSplit, listed: int) -> CIRSplit:
        """The split without queries whose reference, target or masked entry was skipped; CIRR image sets lose
        their skipped members (they cannot be ranked). `listed`: how many images the reader
        looked for (the gallery already lacks the skipped ones)."""
        key = f"{split.dataset}/{split.name}/{split.split}"
        self.total_queries[key] = self.total_queries.get(key, 0) + len(split.queries)
        if len(split.gallery) < listed:
            self.pruned_galleries[key] = listed - len(split.gallery)
        if not self.skipped:
            return split
        from clip_cir.data.table import QueryTable

        if isinstance(split.queries, QueryTable):
            import numpy as np

            keep = split.queries.using_none_of(self.skipped)
            if not keep.all():
                self.dropped_queries[key] = self.dropped_queries.get(key, 0) + int((~keep).sum())
                split = dataclasses.replace(split, queries=split.queries.take(np.flatnonzero(keep)))
            return split
        queries = []
        for query in split.queries:
            # CIRCO's other ground truths too: mAP needs every one of them in the gallery.
            # The masked entry too: ranking removes it by its gallery row.
            needed = (query.reference, *([query.target] if query.target is not None else []),
                      *(query.ground_truths or ()), *([query.excluded] if query.excluded is not None else []))
            if any(self.is_skipped(name) for name in needed):
                self.dropped_queries[key] = self.dropped_queries.get(key, 0) + 1
                continue
            if query.members is not None and any(self.is_skipped(m) for m in query.members):
                query = dataclasses.replace(query, members=tuple(m for m in query.members if not self.is_skipped(m)))
            queries.append(query)
        return dataclasses.replace(split, queries=queries)

    @property
    def dropped(self) -> int:
        return sum(self.dropped_queries.values())

    def changed_evaluation(self) -> list[str]:
        """Evaluation splits (not train) whose gallery or queries lost something: their numbers
        are not comparable with published ones."""
        keys = {*self.pruned_galleries, *self.dropped_queries}
        return sorted(k for k in keys if not k.endswith("/train"))

    def summary(self) -> str:
        """One line: what was left out, for the log."""
        missing = sum(1 for s in self.skipped.values() if s.reason.startswith("missing"))
        unreadable = len(self.skipped) - missing
        where = ", ".join(f"{k} {v} of {self.total_queries.get(k, v)}" for k, v in self.dropped_queries.items())
        return (f"{SKIP_FLAG}: left out {missing} missing and {unreadable} unreadable images and the "
                f"{self.dropped} queries that use them" + (f" ({where})" if where else ""))

    def report_lines(self) -> list[str]:
        """`skipped_images.txt`: one tab-separated line per image left out."""
        lines = ["# name\tpath\treason\tlisted in"]
        lines += [f"{s.name}\t{s.path}\t{s.reason}\t{s.listed_in}" for s in self.skipped.values()]
        lines += [f"# queries dropped in {k}: {v} of {self.total_queries.get(k, v)}"
                  for k, v in self.dropped_queries.items()]
        return lines
