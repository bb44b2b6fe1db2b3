"""Dataset name -> reader, so commands take `--dataset` without knowing the readers."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from clip_cir.data import cirr, fashioniq
from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError

DATASETS = ("cirr", "fashioniq")


def dataset_splits(dataset: str) -> tuple[str, ...]:
    return {"cirr": cirr.SPLITS, "fashioniq": fashioniq.SPLITS}[dataset]


def load_splits(dataset: str, data_root: str | Path, split: str,
                categories: Sequence[str] | None = None) -> list[CIRSplit]:
    """Read one split of a dataset; FashionIQ gives one CIRSplit per category."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise CIRError(f"{data_root}: data root not found")
    if dataset == "cirr":
        return cirr.load_cirr(data_root, split)
    if dataset == "fashioniq":
        return fashioniq.load_fashioniq(data_root, split, categories)
    raise CIRError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
