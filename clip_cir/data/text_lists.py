"""Plain lists a user writes by hand or exports from elsewhere, for the programs that train on
images or on captions alone (`clip-cir zero-shot`): a file of image paths, a file of captions
(one a line, or a column of a CSV/TSV), a file of words.

Blank lines are skipped in the one-a-line files; every other problem is one line that names the
file (and its line where one line is at fault).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from clip_cir.data.images import ImageCheck
from clip_cir.errors import CIRError

TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t"}
"""Caption files read as tables, by suffix, and their column separators."""


def _lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of every non-blank line of a UTF-8 text file."""
    if not path.is_file():
        raise CIRError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CIRError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_image_list(path: str | Path, images: ImageCheck | None = None) -> list[Path]:
    """The images a file lists, one path a line (relative to the file's folder, or absolute), in
    order and each once; absent or unreadable ones as `images` says (default: an error)."""
    path = Path(path)
    entries = _lines(path, "image list")
    if not entries:
        raise CIRError(f"{path}: no image paths (one path a line)")
    candidates: dict[str, list[Path]] = {}
    for _, entry in entries:
        file = Path(entry)
        candidates.setdefault(entry, [Path(os.path.normpath(path.parent.absolute() / file))])
    found = (images or ImageCheck()).locate(candidates, path)
    if not found:
        raise CIRError(f"{path}: none of the listed images can be used")
    return list(found.values())


def read_caption_file(path: str | Path, column: str | None = None) -> list[str]:
    """Captions, each once in file order: a `.csv`/`.tsv` file's `column`, or one caption a line
    of any other file."""
    path = Path(path)
    separator = TABLE_SEPARATORS.get(path.suffix.lower())
    if separator is None:
        if column is not None:
            raise CIRError(f"{path}: --caption-column reads a .csv or .tsv file; this file has one caption a line")
        captions = [text for _, text in _lines(path, "caption file")]
    else:
        captions = _read_column(path, column, separator)
    if not captions:
        raise CIRError(f"{path}: no captions")
    return list(dict.fromkeys(captions))


def _read_column(path: Path, column: str | None, separator: str) -> list[str]:
    if not path.is_file():
        raise CIRError(f"{path}: caption file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=separator)
            names = reader.fieldnames or []
            if column is None:
                raise CIRError(f"{path}: a table of captions needs --caption-column NAME (columns: {', '.join(names)})")
            if column not in names:
                raise CIRError(f"{path}: no column '{column}' (columns: {', '.join(names)})")
            captions = []
            for row in reader:
                caption = (row.get(column) or "").strip()
                if not caption:
                    raise CIRError(f"{path}:{reader.line_num}: empty caption in column '{column}'")
                captions.append(caption)
    except (csv.Error, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: not a readable {'TSV' if separator == chr(9) else 'CSV'} file ({e})") from None
    return captions


def read_word_list(path: str | Path, what: str = "word list") -> list[str]:
    """Words or short phrases, one a line, each once in file order."""
    path = Path(path)
    words = list(dict.fromkeys(text for _, text in _lines(path, what)))
    if not words:
        raise CIRError(f"{path}: no words (one a line)")
    return words
