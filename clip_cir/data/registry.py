"""Dataset name -> reader, so commands take `--dataset` without knowing the readers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from clip_cir.data import circo, cirr, fashioniq
from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, TripletFormat
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    from clip_cir.config import DataConfig

DATASETS = ("cirr", "fashioniq", "circo", "triplets")


def dataset_splits(dataset: str) -> tuple[str, ...]:
    """The benchmark's split names; the generic layout has any split its files name."""
    return {"cirr": cirr.SPLITS, "fashioniq": fashioniq.SPLITS, "circo": circo.SPLITS}.get(dataset, ())


def load_splits(dataset: str, data_root: str | Path, split: str, categories: Sequence[str] | None = None,
                images: ImageCheck | None = None, circo_query_text: str = "caption",
                triplet_format: TripletFormat | None = None) -> list[CIRSplit]:
    """Read one split of a dataset; FashionIQ gives one CIRSplit per category.

    Image paths are absolute, so a split means the same files from any working directory (the
    demo's web server and the feature cache rely on it). `images` says what to do with listed
    images that are absent or unreadable (default: stop with one line naming the first).
    `categories` applies to FashionIQ only and `circo_query_text` (see circo.QUERY_TEXTS) to
    CIRCO only, `triplet_format` to the generic layout only: each reader takes the options that
    mean something for its data.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise CIRError(f"{data_root}: data root not found")
    data_root = data_root.absolute()
    if dataset == "cirr":
        return cirr.load_cirr(data_root, split, images)
    if dataset == "fashioniq":
        return fashioniq.load_fashioniq(data_root, split, categories, images)
    if dataset == "circo":
        return circo.load_circo(data_root, split, circo_query_text, images)
    if dataset == "triplets":
        from clip_cir.data.triplets import load_triplets

        return load_triplets(data_root, split, triplet_format, images)
    raise CIRError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")


def triplet_format(data: DataConfig) -> TripletFormat:
    """The generic layout's columns and protocol (`--dataset triplets`) from the data settings."""
    return TripletFormat(reference_key=data.csv_reference_key, caption_key=data.csv_caption_key,
                         target_key=data.csv_target_key, separator=data.csv_separator,
                         exclude_reference=False if data.keep_reference else None)


def load_data(data: DataConfig, split: str, images: ImageCheck) -> list[CIRSplit]:
    """One split of the benchmark `data` names, read with its options."""
    missing = [flag for flag, value in (("--dataset", data.dataset), ("--data-root", data.data_root)) if value is None]
    if missing:
        raise CIRError(f"the following arguments are required: {', '.join(missing)}")
    return load_splits(data.dataset, data.data_root, split, data.fashioniq_categories, images,
                       data.circo_query_text, triplet_format(data) if data.dataset == "triplets" else None)
