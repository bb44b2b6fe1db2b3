"""Reading annotation files and images with errors that name the file and the problem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from PIL import Image, UnidentifiedImageError

from clip_cir.errors import CIRError


def json_object_lines(lines: IO[str], path: Path, what: str = "a row") -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file; a line that is not a JSON
    object is an error naming file:line (`what` names a line's object in the message)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise CIRError(f"{path}:{number}: malformed JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise CIRError(f"{path}:{number}: {what} should be a JSON object")
        yield number, value


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON annotation file; `what` says what the file is for in the error message."""
    if not path.is_file():
        raise CIRError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CIRError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: cannot read {what} ({e})") from None


def require_type(path: Path, value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise CIRError(f"{path}: {where} should be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def require_fields(path: Path, entry: Any, index: int, fields: Iterable[str]) -> dict:
    """Check an annotation entry is an object holding every field the reader will use."""
    if not isinstance(entry, dict):
        raise CIRError(f"{path}: entry {index} should be a JSON object, got {type(entry).__name__}")
    for name in fields:
        if name not in entry:
            raise CIRError(f"{path}: entry {index} has no field '{name}'")
    return entry


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image in its file's own mode (the transforms convert to RGB after
    the crop, as the published code does); a corrupt or unreadable file is a CIRError."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise CIRError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CIRError(f"{path}: corrupt or unreadable image ({e})") from None
