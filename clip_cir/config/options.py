"""The machinery of the typed settings: flat option names in and out (`Options.from_options`,
`to_options`), each value checked against its field's type and choices, and what a resumed run
reads and may change."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from clip_cir.constants import (
    COMBINING,
    COMPOSITORS,
    CSS_QUERY_IMAGES,
    ENCODERS,
    FAISS_INDEXES,
    LR_SCHEDULERS,
    SEARCH_BACKENDS,
    STAGE2_LOSSES,
    TRACKERS,
    TRANSFORMS,
    VALIDATION_SCHEDULES,
    ZERO_SHOT_METHODS,
)
from clip_cir.errors import CIRError

C = TypeVar("C", bound="Options")


class Options:
    """A settings dataclass whose fields (and its sections' fields) have unique flat names: the
    command line's option names with `_` for `-`, and the keys of a run's `config.json`."""

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any], base: C | None = None) -> C:
        """Settings from flat options; `base` (default: this class's defaults) supplies the rest.
        An unknown name is refused, so a misspelt option cannot be silently ignored."""
        remaining = dict(options)
        built = _build(cls, remaining, base if base is not None else cls())
        if remaining:
            raise CIRError(f"unknown option{'s' if len(remaining) > 1 else ''} for {cls.__name__}: "
                           f"{', '.join(sorted(remaining))} (known: {', '.join(sorted(cls.option_names()))})")
        return built

    @classmethod
    def option_names(cls) -> list[str]:
        names = []
        for f in dataclasses.fields(cls):
            kind = _section_type(cls, f)
            names += kind.option_names() if kind else [f.name]
        return names

    def to_options(self) -> dict[str, Any]:
        """The flat options (what `config.json` records; `from_options` reads them back)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out.update(value.to_options() if isinstance(value, Options) else {f.name: value})
        return out


def portable_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options as JSON, with local paths made absolute so the config means the same from any
    working directory (a later stage, the report or a resumed run reads it)."""
    def value(v: Any) -> Any:
        if isinstance(v, Path) or (isinstance(v, str) and os.path.sep in v and os.path.exists(v)):
            return str(Path(v).resolve())
        if isinstance(v, tuple):
            return list(v)
        return v
    return {k: value(v) for k, v in options.items()}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(cls: type, f: dataclasses.Field) -> type[Options] | None:
    hint = _hints(cls)[f.name]
    return hint if isinstance(hint, type) and issubclass(hint, Options) else None


CHOICES = {"lr_scheduler": LR_SCHEDULERS, "validation_schedule": VALIDATION_SCHEDULES, "encoder": ENCODERS,
           "mixed_precision": (None, "no", "fp16", "bf16"), "channels_last": ("auto", "on", "off"),
           "pixel_cache": ("auto", "on", "off"), "transform": TRANSFORMS, "tracker": TRACKERS,
           "combining": COMBINING, "search": SEARCH_BACKENDS, "faiss_index": FAISS_INDEXES,
           "compositor": COMPOSITORS, "loss": STAGE2_LOSSES,
           "css_query_images": CSS_QUERY_IMAGES, "catalogue_layout": (None, "adde", "csv"),
           "method": ZERO_SHOT_METHODS}
"""The settings that take one of a few values (the command lines' `choices`)."""


KINDS = {int: "an integer", float: "a number", str: "a string", bool: "True or False", Path: "a path"}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A value from JSON, a command line or Python as the field's type (paths from strings, a
    list or one string as a tuple of strings, an int where a float goes), or a one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        hint, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    coerced = value
    if hint is Path and isinstance(value, (str, os.PathLike)):
        coerced = Path(value)
    elif hint is str and isinstance(value, os.PathLike):  # a checkpoint path as `pretrained`
        coerced = os.fspath(value)
    elif hint is float and isinstance(value, int) and not isinstance(value, bool):
        coerced = float(value)
    elif origin is tuple:
        items = [value] if isinstance(value, str) else value
        coerced = tuple(items) if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items) else None
    expected = tuple if origin is tuple else hint
    if coerced is None or not isinstance(coerced, expected) or (expected is int and isinstance(coerced, bool)):
        kind = "a list of strings" if origin is tuple else KINDS.get(expected, expected.__name__)
        raise CIRError(f"{option_flag(name)} takes {kind}, got {value!r}")
    if name in CHOICES and coerced not in CHOICES[name]:
        raise CIRError(f"{option_flag(name)} must be one of {', '.join(str(c) for c in CHOICES[name] if c)}, "
                       f"got {value!r}")
    return coerced


def _build(cls: type[C], options: dict[str, Any], base: C) -> C:
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = _section_type(cls, f)
        if kind is not None:
            # A section may share its name with one of its options (`model`): only a section instance
            # given whole is taken as the section.
            if isinstance(options.get(f.name), kind):
                values[f.name] = options.pop(f.name)
            else:
                values[f.name] = _build(kind, options, getattr(base, f.name))
        elif f.name in options:
            values[f.name] = _coerce(f.name, options.pop(f.name), hints[f.name])
    return dataclasses.replace(base, **values)


RESUME_OVERRIDABLE = ("epochs", "num_workers", "no_progress", "cpu", "cache_dir", "no_cache", "pixel_cache",
                      "pixel_cache_dir", "accum_steps", "log_every", "channels_last", "compile", "deterministic")
"""What a resumed run may change: how long and how it runs, not what it trains."""


def option_flag(name: str) -> str:
    """An option's command-line spelling: `accum_steps` -> `--accum-steps`."""
    return "--" + name.replace("_", "-")


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CIRError(f"{path}: not found; --resume takes a run directory")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(saved, dict):
        raise CIRError(f"{path}: a run config is a JSON object, got {type(saved).__name__}")
    return saved


SAVED_BEFORE = {"validation_schedule": "every-nth-and-last"}
"""What a run whose config.json predates an option ran with (not that option's default today)."""


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run's `config.json`: the flat settings it was started with (see `SAVED_BEFORE`)."""
    return {**SAVED_BEFORE, **_read_json_object(Path(run_dir) / "config.json")}


def check_resumed_options(saved: Mapping[str, Any], given: Mapping[str, Any], known: list[str]) -> None:
    """A resumed run keeps its settings: each option `given` must agree with the run's `saved`
    value or be one of `RESUME_OVERRIDABLE` (how long and how it runs). `known`: the program's
    option names, for the message."""
    for key, value in given.items():
        changed = key in saved and portable_config({key: value})[key] != saved[key]
        if changed and key not in RESUME_OVERRIDABLE and key != "resume":
            may_change = ", ".join(option_flag(k) for k in RESUME_OVERRIDABLE if k in known)
            raise CIRError(f"{option_flag(key)} {value} differs from the resumed run's {saved[key]!r} (a resumed "
                           f"run keeps its settings; only {may_change} may change)")
