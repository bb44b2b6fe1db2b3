"""A CSV or TSV split file's columns through numpy's C reader, with no Python object per row.

Apart from `columns.py` (the row-by-row reader, and the checks both readers' columns go through)
because only this reader looks at the file's bytes itself: it returns None for any file the C
reader could read differently from Python's `csv` module, and the row-by-row reader reads that.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from clip_cir.data.columns import ASPECTS, ASPECTS_MESSAGE, TRAIN_CAPTIONS, TRAIN_CAPTIONS_MESSAGE, Columns
from clip_cir.data.table import Ragged, strings, text_dtype
from clip_cir.data.types import TripletFormat


def csv_columns(path: Path, fmt: TripletFormat) -> Columns | None:
    """The columns of a CSV/TSV file through numpy's C reader; None where the file needs the
    row-by-row reader (which then reads it, or names what is wrong with it, as it always has)."""
    separator = fmt.separator or ("\t" if path.suffix == ".tsv" else ",")
    if len(separator) != 1 or separator in '"\r\n\x00' or not fmt.target_separator:
        return None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=separator)
            header = next(reader, None)
            if header is None or reader.line_num != 1:
                return None
    except (UnicodeDecodeError, csv.Error):
        return None
    if fmt.reference_key not in header or fmt.caption_key not in header or len(set(header)) < len(header):
        return None
    layout = _physical_lines(path)
    if layout is None or layout[1] > csv.field_size_limit():  # `csv` refuses a field that long
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data": the row-by-row reader says so
        try:
            table = np.loadtxt(path, dtype=text_dtype(), delimiter=separator, quotechar='"', skiprows=1, comments=None,
                               encoding="utf-8", ndmin=2)
        except (ValueError, UnicodeDecodeError):  # a row with another number of fields
            return None
    if table.shape[0] == 0 or table.shape[1] != len(header):
        return None
    if layout[0] != len(table) + 1 and layout[2]:  # numpy reads a quoted "\r\n" as "\n"
        return None
    try:  # one record per line after the header, or (a quoted line break, a blank line) ask `csv`
        lines = np.arange(2, len(table) + 2) if layout[0] == len(table) + 1 else _record_lines(path, separator)
    except csv.Error:
        return None
    if len(lines) != len(table):
        return None

    def column(key: str) -> np.ndarray | None:
        return table[:, header.index(key)] if key in header else None  # a view: copied, stripped or split below

    targets = column(fmt.target_key)
    columns = Columns(lines=lines, reference=np.strings.strip(column(fmt.reference_key)),
                      caption=np.strings.strip(column(fmt.caption_key)),
                      targets=_split_cells(targets, fmt.target_separator) if targets is not None else
                      Ragged.from_lengths(np.zeros(len(table), dtype=np.int64), strings([])))
    ids, groups = column(fmt.id_key), column(fmt.group_key)
    columns.ids = ids.copy() if ids is not None and (ids != "").any() else None
    if groups is not None:
        columns.groups = np.where(groups == "", strings(["triplets"]), groups).astype(text_dtype())
    excluded, labels = column("excluded"), column("target_label")
    excluded = np.strings.strip(excluded) if excluded is not None else None
    if excluded is not None and (excluded != "").any():
        columns.excluded = excluded
    if labels is not None:  # a blank cell is no label; any other is kept as written
        labels = np.where(np.strings.strip(labels) == "", strings([""]), labels).astype(text_dtype())
        columns.target_labels = labels if (labels != "").any() else None
    for key, rule, message in (("aspects", ASPECTS, ASPECTS_MESSAGE),
                               ("train_captions", TRAIN_CAPTIONS, TRAIN_CAPTIONS_MESSAGE)):
        given = column(key)  # a CSV cell is never a list: any value is a fault
        if given is not None and (given != "").any():
            columns.problems.append((int(np.argmax(given != "")), rule, message))
    return columns


def _physical_lines(path: Path) -> tuple[int, int, bool] | None:
    """(lines in the file, bytes in its longest line, whether a line ends in "\r\n"); None if it
    holds a NUL byte or a lone carriage return, which numpy's reader and `csv` read differently."""
    lines = longest = returns = pairs = offset = line_start = 0
    previous = -1  # the last byte of the previous block
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            data = np.frombuffer(block, dtype=np.uint8)
            if (data == 0).any():
                return None
            ends = np.flatnonzero(data == 10)
            returns += int((data == 13).sum())
            pairs += int((data[ends[ends > 0] - 1] == 13).sum())
            pairs += int(len(ends) > 0 and ends[0] == 0 and previous == 13)  # "\r" ended the previous block
            if len(ends):
                ends += offset
                longest = max(longest, int((ends - np.concatenate([[line_start], ends[:-1] + 1])).max()))
                line_start = int(ends[-1]) + 1
            lines += len(ends)
            previous, offset = int(data[-1]), offset + len(data)
    if returns != pairs:
        return None
    return lines + (offset > line_start), max(longest, offset - line_start), pairs > 0


def _record_lines(path: Path, separator: str) -> np.ndarray:
    """The line number `csv` gives each record (a quoted field may span lines; blank lines are no record)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=separator)
        next(reader)
        return np.fromiter((reader.line_num for row in reader if row), dtype=np.int64)


def _split_cells(cells: np.ndarray, separator: str) -> Ragged:
    """Each cell's `separator`-separated paths, stripped, empty ones left out."""
    whole = np.strings.strip(cells)
    lengths = (whole != "").astype(np.int64)
    several = np.flatnonzero(np.strings.find(cells, separator) >= 0)
    if not len(several):
        return Ragged.from_lengths(lengths, whole[lengths.astype(bool)])
    parts = [[p.strip() for p in cell.split(separator) if p.strip()] for cell in cells[several].tolist()]
    lengths[several] = [len(p) for p in parts]
    ragged = Ragged.from_lengths(lengths, np.empty(int(lengths.sum()), dtype=text_dtype()))
    single = np.flatnonzero(lengths == 1)
    single = np.setdiff1d(single, several, assume_unique=True)
    ragged.values[ragged.offsets[single]] = whole[single]
    at = np.concatenate([np.arange(ragged.offsets[i], ragged.offsets[i + 1]) for i in several])
    ragged.values[at] = strings([p for row in parts for p in row])
    return ragged
