"""Dataset readers. Each returns `CIRSplit`s, the one representation everything downstream uses."""

from clip_cir.data.registry import DATASETS, dataset_splits, load_splits
from clip_cir.data.types import CIRSplit, Query

__all__ = ["CIRSplit", "Query", "DATASETS", "load_splits", "dataset_splits"]
