"""The classic benchmarks' stand-ins by registry name, so `generate(..., classic=...)` writes them
beside CIRR, FashionIQ and CIRCO, each in its own published layout and small (a few dozen images).

The stand-in of benchmark `<name>` is `clip_cir.data.synthetic.<name>.write_<name>(root, seed=...,
size=...)`, imported when written: the command line lists the names without loading numpy.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

from clip_cir.constants import CSS_FOLDER
from clip_cir.data import birdstowords, cfq, fashion200k, mitstates, spotthediff

CLASSIC: dict[str, str] = {
    "fashion200k": fashion200k.FOLDER,
    "mitstates": mitstates.FOLDER,
    "css": CSS_FOLDER,  # clip_cir.data.css.FOLDER, without importing numpy
    "shoes": "shoes",
    "birdstowords": birdstowords.FOLDER,
    "spotthediff": spotthediff.FOLDER.parts[0],
    "cfq": cfq.FOLDER,
}
"""Benchmark -> the top folder its stand-in writes under the root (what a regeneration refuses or
replaces), in the order `clip-cir synth --classic all` writes them."""


def check_classic(names: Sequence[str]) -> tuple[str, ...]:
    """The benchmarks named, each once, in `CLASSIC`'s order; a ValueError names an unknown one."""
    unknown = [name for name in names if name not in CLASSIC]
    if unknown:
        raise ValueError(f"no synthetic stand-in for {', '.join(unknown)} (choose from {', '.join(CLASSIC)})")
    return tuple(name for name in CLASSIC if name in names)


def write_classic(root: Path, names: Sequence[str], seed: int, size: int) -> dict[str, dict]:
    """Write each named stand-in under `root` with its writer's default counts; returns name -> the
    writer's summary, less the absolute root some writers add (the summary goes in synth_info.json)."""
    written = {}
    for name in check_classic(names):
        write = getattr(importlib.import_module(f"clip_cir.data.synthetic.{name}"), f"write_{name}")
        summary = write(root, seed=seed, size=size)
        written[name] = {key: value for key, value in summary.items() if key != "root"}
    return written
