"""Columnar storage for large query files: a split of a million triplets as a few numpy arrays
rather than a million Python objects, so its memory is a small multiple of the text it holds.

Image names are integer codes into one vocabulary, captions and ids are numpy strings, several
targets are offsets into one array of codes. A `Query` is made only when one is asked for; the
table is a `Sequence[Query]`, so the code that reads `split.queries` works as it does on a list.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import ItemsView, Mapping, Sequence, ValuesView
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Container, Iterator

import numpy as np
from numpy.dtypes import StringDType

from clip_cir.data.types import Query

BLOCK = 4096
"""Rows made into Python objects at a time when a table or gallery is iterated."""


def text_dtype() -> StringDType:
    """A new numpy string dtype (variable-width UTF-8, no Python object per element). Always a new
    one: the first array made with a dtype instance keeps its strings in that instance, so an
    instance kept in a global would keep a freed array's strings for the life of the process."""
    return StringDType()


def strings(values) -> np.ndarray:
    """A 1-D numpy string array of `values`."""
    return np.asarray(values, dtype=text_dtype()).reshape(-1)


def return_freed_memory() -> None:
    """Give the pages of freed arrays back to the system. Reading a large file makes transient
    arrays several times the size of the result; glibc keeps most of what they leave free (the
    process's memory would stay twice what it holds) unless asked. Elsewhere: nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


@dataclass(frozen=True)
class Ragged:
    """Row i is `values[offsets[i]:offsets[i + 1]]`: a variable number of items per row."""

    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def from_lengths(cls, lengths: np.ndarray, values: np.ndarray) -> "Ragged":
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(offsets, values)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row_of_values(self) -> np.ndarray:
        """The row each value belongs to."""
        return np.repeat(np.arange(len(self.offsets) - 1), self.lengths)

    def take(self, rows: np.ndarray) -> "Ragged":
        lengths = self.lengths[rows]
        starts = self.offsets[:-1][rows]
        out = Ragged.from_lengths(lengths, self.values[:0])
        # Value j of the output is at starts[row] + (j - out.offsets[row]) in the input.
        index = np.arange(out.offsets[-1]) + np.repeat(starts - out.offsets[:-1], lengths)
        return Ragged(out.offsets, self.values[index])

    def rows(self, start: int, stop: int, lookup: np.ndarray | None = None) -> list[list]:
        """Rows start..stop as Python lists (of `lookup[value]` when given)."""
        offsets = self.offsets[start:stop + 1].tolist()
        flat = self.values[offsets[0]:offsets[-1]]
        flat = (flat if lookup is None else lookup[flat]).tolist()
        base = offsets[0]
        return [flat[a - base:b - base] for a, b in zip(offsets, offsets[1:])]


@dataclass(frozen=True, eq=False)
class QueryTable(Sequence[Query]):
    """The queries of one split, column by column; item i is the `Query` of row i."""

    ids: np.ndarray
    """Query ids: numpy strings, or integers (line numbers) when the file names none."""
    names: np.ndarray
    """Every image name the rows use (numpy strings); `reference` and `targets` index into it."""
    reference: np.ndarray
    targets: Ragged
    """Each row's targets as codes into `names`, in the file's order (none in a test split)."""
    captions: np.ndarray
    train_captions: Ragged | None = None
    """Caption forms training draws from; a row without any trains on its caption. None: no row has any."""
    aspects: Ragged | None = None
    all_ground_truths: bool = False
    """True when some row of the file has several targets: a single target is then also listed
    as the query's ground truths, so mAP@K ranks every query."""
    excluded: np.ndarray | None = None
    """Each row's entry to leave out of its ranking as a code into `names`, -1 where the row names
    none (its reference is left out). None: no row names one."""
    target_labels: np.ndarray | None = None
    """Each row's target label (numpy strings, '' where the row has none). None: no row has one."""

    def __len__(self) -> int:
        return len(self.reference)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return self.take(np.arange(len(self))[item])
        index = int(item)
        if not -len(self) <= index < len(self):
            raise IndexError(f"query {item} of {len(self)}")
        index %= len(self)
        return self._block(index, index + 1)[0]

    def __iter__(self) -> Iterator[Query]:
        for start in range(0, len(self), BLOCK):
            yield from self._block(start, min(start + BLOCK, len(self)))

    def __repr__(self) -> str:
        return f"QueryTable({len(self)} queries, {len(self.names)} image names)"

    def _block(self, start: int, stop: int) -> list[Query]:
        names = self.names
        references = names[self.reference[start:stop]].tolist()
        targets = self.targets.rows(start, stop, names)
        captions = self.captions[start:stop].tolist()
        ids = [str(i) for i in self.ids[start:stop].tolist()]
        forms = self.train_captions.rows(start, stop) if self.train_captions is not None else None
        aspects = self.aspects.rows(start, stop) if self.aspects is not None else None
        excluded = self._excluded_names(start, stop)
        labels = self.target_labels[start:stop].tolist() if self.target_labels is not None else None
        several = 1 if self.all_ground_truths else 2
        out = []
        for i, (qid, reference, caption, target) in enumerate(zip(ids, references, captions, targets)):
            out.append(Query(qid=qid, reference=reference, captions=(caption,),
                             train_captions=tuple(forms[i]) if forms and forms[i] else (caption,),
                             eval_caption=caption, target=target[0] if target else None,
                             ground_truths=tuple(target) if len(target) >= several else None,
                             aspects=tuple(aspects[i]) if aspects else (),
                             target_label=(labels[i] or None) if labels else None,
                             excluded=excluded[i] if excluded else None))
        return out

    def _excluded_names(self, start: int, stop: int) -> list[str | None] | None:
        if self.excluded is None:
            return None
        codes = self.excluded[start:stop]
        names = self.names[np.maximum(codes, 0)].tolist()
        return [name if code >= 0 else None for name, code in zip(names, codes.tolist())]

    def take(self, rows: np.ndarray) -> "QueryTable":
        """The table of the given rows (indices, in the order given); the vocabulary is shared."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(self, ids=self.ids[rows], reference=self.reference[rows], targets=self.targets.take(rows),
                       captions=self.captions[rows],
                       train_captions=self.train_captions.take(rows) if self.train_captions is not None else None,
                       aspects=self.aspects.take(rows) if self.aspects is not None else None,
                       excluded=self.excluded[rows] if self.excluded is not None else None,
                       target_labels=self.target_labels[rows] if self.target_labels is not None else None)

    def using_none_of(self, images: Container[str]) -> np.ndarray:
        """Per row: True when neither its reference nor any of its targets (nor the entry it leaves
        out of its ranking) is in `images`."""
        bad = np.fromiter((name in images for name in self.names.tolist()), dtype=bool, count=len(self.names))
        keep = ~bad[self.reference]
        keep[self.targets.row_of_values()[bad[self.targets.values]]] = False
        if self.excluded is not None:
            named = self.excluded >= 0
            keep[named] &= ~bad[self.excluded[named]]
        return keep


class ImageFiles(Mapping[str, Path]):
    """Image name -> file, for a gallery held as an array of names: a file is the name joined to
    `base` (which leaves an absolute name as it is), made when asked for. Where entries are named
    apart from their files (several names may show one file), `files[i]` is entry i's path."""

    def __init__(self, names: np.ndarray, base: str | os.PathLike, files: np.ndarray | None = None):
        self.names, self.base, self.files = names, str(base), files
        self._index: dict[str, int] | None = None

    def file(self, name: str) -> Path:
        if self.files is None:
            return Path(os.path.join(self.base, name))
        return self[name]

    def _position(self) -> dict[str, int]:
        if self._index is None:  # built on the first look-up only: iterating needs none
            self._index = {name: i for i, name in enumerate(self)}
        return self._index

    def __getitem__(self, name: str) -> Path:
        position = self._position().get(name)
        if position is None:
            raise KeyError(name)
        return Path(os.path.join(self.base, name if self.files is None else str(self.files[position])))

    def __contains__(self, name: object) -> bool:
        return name in self._position()

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self.names), BLOCK):
            yield from self.names[start:start + BLOCK].tolist()

    def paths(self) -> Iterator[str]:
        """Each entry's path as listed (relative to `base`, or absolute), in order."""
        listed = self.names if self.files is None else self.files
        for start in range(0, len(listed), BLOCK):
            yield from listed[start:start + BLOCK].tolist()

    def values(self) -> ValuesView[Path]:
        return _Files(self)

    def items(self) -> ItemsView[str, Path]:
        return _Items(self)

    def take(self, keep: np.ndarray) -> "ImageFiles":
        """The gallery of the kept names (a boolean mask or indices), in this gallery's order."""
        return ImageFiles(self.names[keep], self.base, self.files[keep] if self.files is not None else None)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} images under {self.base})"


class _Files(ValuesView):
    def __iter__(self) -> Iterator[Path]:
        files: ImageFiles = self._mapping
        return (Path(os.path.join(files.base, path)) for path in files.paths())


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, Path]]:
        files: ImageFiles = self._mapping
        return ((name, Path(os.path.join(files.base, path))) for name, path in zip(files, files.paths()))
