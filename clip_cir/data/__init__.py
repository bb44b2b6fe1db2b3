"""Dataset readers. Each returns `CIRSplit`s, the one representation everything downstream uses."""

from clip_cir.data.types import CIRSplit, Query
from clip_cir.data.registry import DATASETS, load_splits, dataset_splits

__all__ = ["CIRSplit", "Query", "DATASETS", "load_splits", "dataset_splits"]
