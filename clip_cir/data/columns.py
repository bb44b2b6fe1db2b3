"""A split file's columns, read without a Python object per row where the file allows it.

A CSV or TSV goes through numpy's C reader into numpy string arrays (`csv_columns.py`); a JSONL
file, and any CSV the C reader could read differently from Python's `csv` module (a ragged row, a
lone carriage return, a NUL byte, an over-long field), goes row by row through the same
`read_rows` as always. Both give the same `Columns`; `check` then applies every rule to all rows
at once and names the first offending row by its line, exactly as a row-by-row check would.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from clip_cir.data.table import QueryTable, Ragged, strings, text_dtype
from clip_cir.data.types import TripletFormat
from clip_cir.errors import CIRError

# The order in which one row's rules are checked: of two faults on one row, the first is reported.
(EMPTY_REFERENCE, EMPTY_CAPTION, TARGET_TYPE, ONLY_TARGET, DUPLICATE_ID, MIXED, ASPECTS, TRAIN_CAPTIONS,
 EXCLUDED_TYPE, TARGET_LABEL_TYPE, MIXED_LABELS) = range(11)
ASPECTS_MESSAGE = "'aspects' should be a list of names"
TRAIN_CAPTIONS_MESSAGE = "'train_captions' should be a list of captions"
EXCLUDED_MESSAGE = "'excluded' should be an image path or a gallery entry's name"
TARGET_LABEL_MESSAGE = "'target_label' should be a label (a string)"


@dataclass
class Columns:
    """Every row of a split file, column by column, strings stripped, before any rule is checked."""

    lines: np.ndarray
    reference: np.ndarray
    caption: np.ndarray
    targets: Ragged
    """Target paths as written (stripped, none empty)."""
    ids: np.ndarray | None = None
    """As written, '' where a row has none (its line number is its id); None: no row has one."""
    groups: np.ndarray | None = None
    train_captions: Ragged | None = None
    aspects: Ragged | None = None
    excluded: np.ndarray | None = None
    """The entry each row leaves out of its ranking (stripped), '' where none; None: no row names one."""
    target_labels: np.ndarray | None = None
    """Each row's target label as written, '' where none (or blank); None: no row has one."""
    problems: list[tuple[int, int, str]] = field(default_factory=list)
    """(row, rule, message) of values of the wrong type, found while reading."""
    plain: bool = True
    """False when a value holds a NUL character, which numpy's string functions treat as padding."""
    pending: CIRError | None = None
    """The error that stopped reading (a malformed line): reported after the rows before it."""


def split_targets(value: Any, fmt: TripletFormat) -> tuple[str, ...] | str:
    """The target paths of one cell or JSON value, or the message saying why it is none."""
    if value is None:
        return ()
    if isinstance(value, list):
        if not all(isinstance(v, str) and v.strip() for v in value):
            return f"'{fmt.target_key}' should be image paths"
        return tuple(v.strip() for v in value)
    if not isinstance(value, str):
        return f"'{fmt.target_key}' should be an image path or a list of them"
    return tuple(v.strip() for v in value.split(fmt.target_separator) if v.strip())


def row_columns(rows: Iterable[tuple[int, dict[str, Any]]], fmt: TripletFormat) -> Columns:
    """Columns of (line number, row) pairs, as `read_rows` yields them."""
    lines, references, captions, targets, target_counts, ids, groups = [], [], [], [], [], [], []
    forms, form_counts, aspects, aspect_counts, problems, excluded, labels = [], [], [], [], [], [], []
    plain, pending = True, None
    try:
        for line, row in rows:
            i = len(lines)
            lines.append(line)
            reference, caption = row.get(fmt.reference_key), row.get(fmt.caption_key)
            references.append(reference.strip() if isinstance(reference, str) else "")
            captions.append(caption.strip() if isinstance(caption, str) else "")
            found = split_targets(row.get(fmt.target_key), fmt)
            if isinstance(found, str):
                problems.append((i, TARGET_TYPE, found))
                found = ()
            targets += found
            target_counts.append(len(found))
            qid = row.get(fmt.id_key)
            ids.append("" if qid is None or qid == "" else str(qid))
            groups.append(str(row.get(fmt.group_key) or "triplets"))
            given = row.get("aspects") or []
            if not (isinstance(given, list) and all(isinstance(a, str) for a in given)):
                problems.append((i, ASPECTS, ASPECTS_MESSAGE))
                given = []
            aspects += given
            aspect_counts.append(len(given))
            given = row.get("train_captions") or []
            if not (isinstance(given, list) and all(isinstance(c, str) and c for c in given)):
                problems.append((i, TRAIN_CAPTIONS, TRAIN_CAPTIONS_MESSAGE))
                given = []
            forms += given
            form_counts.append(len(given))
            given = row.get("excluded")
            if given is not None and not isinstance(given, str):
                problems.append((i, EXCLUDED_TYPE, EXCLUDED_MESSAGE))
            excluded.append(given.strip() if isinstance(given, str) else "")
            given = row.get("target_label")
            if given is not None and not isinstance(given, str):
                problems.append((i, TARGET_LABEL_TYPE, TARGET_LABEL_MESSAGE))
            labels.append(given if isinstance(given, str) and given.strip() else "")
            plain = plain and not any("\x00" in v for v in (references[-1], captions[-1], *found, ids[-1],
                                                              excluded[-1]))
    except CIRError as e:
        pending = e
    return Columns(lines=np.asarray(lines, dtype=np.int64), reference=strings(references), caption=strings(captions),
                   targets=Ragged.from_lengths(np.asarray(target_counts, dtype=np.int64), strings(targets)),
                   ids=strings(ids) if any(ids) else None,
                   groups=strings(groups) if any(g != "triplets" for g in groups) else None,
                   train_captions=Ragged.from_lengths(np.asarray(form_counts, dtype=np.int64), strings(forms))
                   if forms else None,
                   aspects=Ragged.from_lengths(np.asarray(aspect_counts, dtype=np.int64), strings(aspects))
                   if aspects else None,
                   excluded=strings(excluded) if any(excluded) else None,
                   target_labels=strings(labels) if any(labels) else None,
                   problems=problems, plain=plain, pending=pending)


def normalise_paths(paths: np.ndarray, plain: bool = True) -> np.ndarray:
    """`os.path.normpath` of each path. A POSIX path changes only if it has an empty, '.' or '..'
    part or ends with '/': only those (rarely many) go through Python."""
    if plain and os.path is posixpath:
        suspect = ((np.strings.find(paths, "//") >= 0) | (np.strings.find(paths, "/.") >= 0)
                   | np.strings.startswith(paths, ".") | np.strings.endswith(paths, "/") | (paths == ""))
        suspect = np.flatnonzero(suspect)
    else:
        suspect = np.arange(len(paths))
    if not len(suspect):
        return paths
    paths = paths.copy()
    paths[suspect] = strings([os.path.normpath(p) for p in paths[suspect].tolist()])
    return paths


def first_seen(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values in order of first appearance), codes as int32."""
    codes, distinct = pd.factorize(values)
    return codes.astype(np.int32), strings(distinct)


@dataclass
class Checked:
    """The rows of a split file that passed every rule, as one table, and what galleries need."""

    table: QueryTable
    lines: np.ndarray
    group_names: list[str]
    group_codes: np.ndarray | None
    """Each row's group (an index into `group_names`); None: one group."""
    image_codes: np.ndarray
    """The image code of each image a row names, row by row (its reference, its targets, then the
    entry it leaves out of its ranking): the order in which a group's images first appear is its
    default gallery order."""
    mention_counts: np.ndarray
    """How many of `image_codes` each row has."""


def check(columns: Columns, path: Path, fmt: TripletFormat, allow_repeats: bool = False) -> Checked:
    """The columns as a `QueryTable`, or a `CIRError` naming the first offending row by its line.

    A query listed more than once (same group, reference, caption and targets, no id of its own)
    is an error too, naming its lines, unless `allow_repeats` (a split trained on, where a repeat
    only weighs its triplet more): evaluated, every listing would count in the metrics."""
    lines, targets, n = columns.lines, columns.targets, len(columns.lines)
    lengths = targets.lengths
    faults = list(columns.problems)

    def fault(rows: np.ndarray, rule: int, message) -> None:
        if len(rows) and rows.any():
            row = int(np.argmax(rows))
            faults.append((row, rule, message(row) if callable(message) else message))

    fault(columns.reference == "", EMPTY_REFERENCE, "empty reference")
    fault(columns.caption == "", EMPTY_CAPTION, "empty caption")
    starts = targets.offsets[:-1]
    has_excluded = columns.excluded != "" if columns.excluded is not None else np.zeros(n, dtype=bool)
    mention_counts = 1 + lengths + has_excluded
    events = np.empty(n + len(targets.values) + int(has_excluded.sum()), dtype=object)  # what pandas hashes
    is_reference = np.zeros(len(events), dtype=bool)  # (one str per mention, freed after)
    row_starts = np.arange(n) + starts if columns.excluded is None else np.cumsum(mention_counts) - mention_counts
    is_reference[row_starts] = True
    is_excluded = np.zeros(len(events), dtype=bool)
    is_excluded[(row_starts + 1 + lengths)[has_excluded]] = True
    is_target = ~(is_reference | is_excluded)
    events[is_reference] = columns.reference.astype(object)
    events[is_target] = targets.values.astype(object)
    if columns.excluded is not None:
        events[is_excluded] = columns.excluded[has_excluded].astype(object)
    codes, names = first_seen(events)
    del events
    normalised = normalise_paths(names, columns.plain)
    if normalised is not names:  # two ways of writing one path are one image
        renamed, names = first_seen(normalised)
        codes = renamed[codes]
    reference, target_codes = codes[is_reference], codes[is_target]
    excluded = None
    if columns.excluded is not None:
        excluded = np.full(n, -1, dtype=np.int32)
        excluded[has_excluded] = codes[is_excluded]
    single = lengths == 1
    only = np.zeros(n, dtype=bool)
    only[single] = target_codes[starts[single]] == reference[single]
    if columns.target_labels is not None:  # a hit is any entry with the label: the target is only training's positive
        only &= columns.target_labels == ""
    fault(only, ONLY_TARGET, lambda row: f"the reference '{names[reference[row]]}' is also its only target")
    ids = lines.astype(np.int32) if n and lines.max() < 2 ** 31 else lines
    if columns.ids is not None:
        ids = columns.ids.copy()
        unnamed = ids == ""
        ids[unnamed] = lines[unnamed].astype(text_dtype())
        id_codes, distinct = first_seen(ids)
        if len(distinct) < n:  # a row is a repeat when its code is not larger than every earlier one
            before = np.concatenate([[-1], np.maximum.accumulate(id_codes)[:-1]])
            fault(id_codes <= before, DUPLICATE_ID, lambda row: f"duplicate query id '{ids[row]}' (first at line "
                  f"{lines[int(np.argmax(id_codes == id_codes[row]))]})")
    has = lengths > 0
    if has.any() and not has.all():
        row = max(int(np.argmax(has)), int(np.argmax(~has)))
        faults.append((row, MIXED, f"some rows have a {fmt.target_key} and others none; "
                                   f"a split has targets for every query or for none"))
    if columns.target_labels is not None:
        has = columns.target_labels != ""
        if not has.all():
            row = max(int(np.argmax(has)), int(np.argmax(~has)))
            faults.append((row, MIXED_LABELS, "some rows have a target_label and others none; "
                                              "a split has target labels for every query or for none"))
    if faults:
        row, _, message = min(faults, key=lambda f: (f[0], f[1]))
        raise CIRError(f"{path}:{lines[row]}: {message}")
    if columns.pending is not None:
        raise columns.pending
    if not n:
        raise CIRError(f"{path}: no queries")
    if not allow_repeats:
        _refuse_repeats(columns, reference, Ragged(targets.offsets, target_codes), excluded, path, fmt)
    table = QueryTable(ids=ids, names=names, reference=reference, targets=Ragged(targets.offsets, target_codes),
                       captions=columns.caption, train_captions=columns.train_captions, aspects=columns.aspects,
                       all_ground_truths=bool((lengths > 1).any()), excluded=excluded,
                       target_labels=columns.target_labels)
    group_names, group_codes = ["triplets"], None
    if columns.groups is not None:
        group_codes, distinct = first_seen(columns.groups)
        group_names = distinct.tolist()
    return Checked(table=table, lines=lines, group_names=group_names, group_codes=group_codes,
                   image_codes=codes, mention_counts=mention_counts)


def _refuse_repeats(columns: Columns, reference: np.ndarray, targets: Ragged, excluded: np.ndarray | None,
                    path: Path, fmt: TripletFormat) -> None:
    """A `CIRError` naming the lines of the first query listed more than once, if any.

    Rows with an id of their own are distinct queries whatever they hold (a benchmark may ask one
    question twice); the others are compared on (group, reference, caption, targets, and the
    target label and excluded entry where rows have them) in a few
    vectorised passes: image codes and caption lengths first, then the captions themselves (the
    costly part) of only the rows that share those."""
    every = columns.ids is None
    rows = np.arange(len(reference)) if every else np.flatnonzero(columns.ids == "")
    if len(rows) < 2:
        return

    def of(values: np.ndarray) -> np.ndarray:
        return values if every else values[rows]

    lengths = of(targets.lengths)
    target_key = np.full(len(rows), -1, dtype=np.int64)  # no target
    single = lengths == 1
    target_key[single] = targets.values[targets.offsets[rows[single]]]
    several = np.flatnonzero(lengths > 1)
    if len(several):  # rare: each list of targets as one code, after the image codes
        lists = [tuple(targets.values[targets.offsets[r]:targets.offsets[r + 1]].tolist())
                 for r in rows[several].tolist()]
        target_key[several] = len(reference) + pd.factorize(pd.Series(lists, dtype=object))[0]
    captions = of(columns.caption)
    keys = pd.DataFrame({"reference": of(reference), "target": target_key, "length": np.strings.str_len(captions)})
    if columns.groups is not None:
        keys["group"] = pd.factorize(of(columns.groups).astype(object))[0]
    if excluded is not None:
        keys["excluded"] = of(excluded)
    if columns.target_labels is not None:
        keys["target_label"] = pd.factorize(of(columns.target_labels).astype(object))[0]
    candidates = np.flatnonzero(keys.duplicated(keep=False).to_numpy())
    if not len(candidates):
        return
    keys = keys.iloc[candidates].assign(caption=pd.factorize(captions[candidates].astype(object))[0])
    query = keys.groupby(list(keys.columns), sort=False).ngroup().to_numpy()
    counts = np.bincount(query)
    repeated = counts[query] > 1
    if not repeated.any():
        return
    first = int(np.argmax(repeated))  # rows are in file order: the first repeated query
    lines = columns.lines[rows[candidates[query == query[first]]]].tolist()
    shown = ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else "")
    what = ", ".join([fmt.reference_key, fmt.caption_key] + ([fmt.target_key] if targets.offsets[-1] else []))
    others = int((counts > 1).sum()) - 1
    more = f" ({others} other quer{'y is' if others == 1 else 'ies are'} repeated too)" if others else ""
    raise CIRError(f"{path}: lines {shown}: the same query ({what}) listed {len(lines)} times{more}; "
                   f"an evaluation would count each listing: list it once")
