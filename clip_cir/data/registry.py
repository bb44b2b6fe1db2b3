"""Dataset name -> reader, so commands take `--dataset` without knowing the readers.

A reader is `(data_root, split, images, options) -> list[CIRSplit]`: the absolute data root, the
split's name, what to do with absent images (`ImageCheck`) and the dataset-specific options
(`ReaderOptions`), of which it reads its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from clip_cir.constants import CSS_SPLITS
from clip_cir.data import birdstowords, cfq, circo, cirr, fashion200k, fashioniq, mitstates, shoes, spotthediff
from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit, ReaderOptions, TripletFormat
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    from clip_cir.config import DataConfig

Reader = Callable[[Path, str, ImageCheck, ReaderOptions], list[CIRSplit]]


def _read_cirr(root: Path, split: str, images: ImageCheck, options: ReaderOptions) -> list[CIRSplit]:
    return cirr.load_cirr(root, split, images)


def _read_fashioniq(root: Path, split: str, images: ImageCheck, options: ReaderOptions) -> list[CIRSplit]:
    return fashioniq.load_fashioniq(root, split, options.fashioniq_categories, images, options.fashioniq_protocol)


def _read_circo(root: Path, split: str, images: ImageCheck, options: ReaderOptions) -> list[CIRSplit]:
    return circo.load_circo(root, split, options.circo_query_text, images)


def _read_triplets(root: Path, split: str, images: ImageCheck, options: ReaderOptions) -> list[CIRSplit]:
    from clip_cir.data.triplets import load_triplets  # numpy and pandas: only when this layout is read

    return load_triplets(root, split, options.triplet_format, images)


def _read_css(root: Path, split: str, images: ImageCheck, options: ReaderOptions) -> list[CIRSplit]:
    from clip_cir.data import css  # numpy: only when CSS is read (`--help` stays light)

    return css.load_css(root, split, images, options)


READERS: dict[str, Reader] = {
    "cirr": _read_cirr,
    "fashioniq": _read_fashioniq,
    "circo": _read_circo,
    "triplets": _read_triplets,
    "css": _read_css,
    "birdstowords": birdstowords.load_birdstowords,
    "spotthediff": spotthediff.load_spotthediff,
    "shoes": shoes.load_shoes,
    "cfq": cfq.load_cfq,
    "fashion200k": fashion200k.load_fashion200k,
    "mitstates": mitstates.load_mitstates,
}
SPLITS: dict[str, tuple[str, ...]] = {
    "cirr": cirr.SPLITS,
    "fashioniq": fashioniq.SPLITS,
    "circo": circo.SPLITS,
    "css": CSS_SPLITS,
    "birdstowords": birdstowords.SPLITS,
    "spotthediff": spotthediff.SPLITS,
    "shoes": shoes.SPLITS,
    "cfq": cfq.SPLITS,
    "fashion200k": fashion200k.SPLITS,
    "mitstates": mitstates.SPLITS,
}
"""Each benchmark's split names; the generic layout has any split its files name."""
VALIDATION_SPLITS: dict[str, str] = {"css": "test", "shoes": "test", "cfq": "test", "fashion200k": "test",
                                     "mitstates": "test"}
"""The split a benchmark validates and evaluates on by default where it is not `val` (tirg's
benchmarks have train and test only, and their papers select on test)."""
DATASETS = tuple(READERS)


def validation_split(dataset: str | None) -> str:
    """The split training validates on and `eval` reads by default: `val`, or the benchmark's own."""
    return VALIDATION_SPLITS.get(dataset or "", "val")


def dataset_splits(dataset: str) -> tuple[str, ...]:
    """The benchmark's split names; the generic layout has any split its files name."""
    return SPLITS.get(dataset, ())


def load_splits(dataset: str, data_root: str | Path, split: str, categories: Sequence[str] | None = None,
                images: ImageCheck | None = None, options: ReaderOptions | None = None) -> list[CIRSplit]:
    """Read one split of a dataset; FashionIQ gives one CIRSplit per category.

    Image paths are absolute, so a split means the same files from any working directory (the
    demo's web server and the feature cache rely on it). `images` says what to do with listed
    images that are absent or unreadable (default: stop with one line naming the first).
    `categories` (FashionIQ's, when given) overrides `options.fashioniq_categories`.
    """
    if dataset not in READERS:
        raise CIRError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise CIRError(f"{data_root}: data root not found")
    options = options or ReaderOptions()
    if categories is not None:
        options = ReaderOptions(**{**options.__dict__, "fashioniq_categories": tuple(categories)})
    return READERS[dataset](data_root.absolute(), split, images or ImageCheck(), options)


def triplet_format(data: DataConfig) -> TripletFormat:
    """The generic layout's columns and protocol (`--dataset triplets`) from the data settings."""
    return TripletFormat(reference_key=data.csv_reference_key, caption_key=data.csv_caption_key,
                         target_key=data.csv_target_key, separator=data.csv_separator,
                         exclude_reference=False if data.keep_reference else None)


def reader_options(data: DataConfig) -> ReaderOptions:
    """The dataset-specific reading options from the data settings."""
    return ReaderOptions(fashioniq_categories=data.fashioniq_categories, circo_query_text=data.circo_query_text,
                         css_query_images=data.css_query_images,
                         triplet_format=triplet_format(data) if data.dataset == "triplets" else None,
                         fashioniq_protocol=data.fashioniq_protocol, shoes_protocol=data.shoes_protocol)


def load_data(data: DataConfig, split: str | None, images: ImageCheck) -> list[CIRSplit]:
    """One split of the benchmark `data` names, read with its options (None: its validation split)."""
    missing = [flag for flag, value in (("--dataset", data.dataset), ("--data-root", data.data_root)) if value is None]
    if missing:
        raise CIRError(f"the following arguments are required: {', '.join(missing)}")
    split = split or validation_split(data.dataset)
    return load_splits(data.dataset, data.data_root, split, images=images, options=reader_options(data))
