"""The dataset-agnostic representation of a CIR split.

CIRR and FashionIQ differ only in how their files are laid out and in a few protocol details
(is the reference removed from its own ranking? which caption forms?). Those differences are
resolved here, as data, so training, features, ranking and metrics never branch on the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class Query:
    """One composed query: a reference image, a relative caption and (if known) its target."""

    qid: str
    """Stable id: the CIRR pairid, or `<category>/<index>` for FashionIQ."""
    reference: str
    captions: tuple[str, ...]
    """The raw caption(s) as written in the annotation file."""
    train_captions: tuple[str, ...]
    """Caption forms training draws from uniformly (FashionIQ: four forms; CIRR: one)."""
    eval_caption: str
    """The deterministic caption evaluation uses."""
    target: str | None = None
    target_soft: Mapping[str, float] | None = None
    members: tuple[str, ...] | None = None
    """CIRR's image set (6 names including the reference); None when the dataset has none."""


@dataclass
class CIRSplit:
    """Queries plus the gallery they are ranked against, for one benchmark and split."""

    dataset: str
    name: str
    """The benchmark's name in reports: `cirr`, or the FashionIQ category."""
    split: str
    queries: list[Query]
    gallery: dict[str, Path]
    """Image name -> file, in the split file's order (the gallery's index order)."""
    exclude_reference: bool
    """Remove each query's reference image from its own ranking (CIRR protocol)."""
    recall_ks: tuple[int, ...]
    subset_ks: tuple[int, ...] = ()

    @property
    def has_targets(self) -> bool:
        return all(q.target is not None for q in self.queries)

    def __repr__(self) -> str:
        return (f"CIRSplit({self.dataset}/{self.name}/{self.split}: {len(self.queries)} queries, "
                f"{len(self.gallery)} gallery images)")
