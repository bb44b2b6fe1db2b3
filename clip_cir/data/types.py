"""The dataset-agnostic representation of a CIR split.

CIRR, FashionIQ and CIRCO differ only in how their files are laid out and in a few protocol
details (is the reference removed from its own ranking? which caption forms? one target or
several ground truths? names or integer ids on the test server?). Those differences are resolved
here, as data, so training, features, ranking and metrics never branch on the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from clip_cir.errors import CIRError


@dataclass(frozen=True)
class Query:
    """One composed query: a reference image, a relative caption and (if known) its target."""

    qid: str
    """Stable id: the CIRR pairid, `<category>/<index>` for FashionIQ, the annotation's `id` for CIRCO."""
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
    ground_truths: tuple[str, ...] | None = None
    """Every correct gallery image, as the annotation lists them (CIRCO's `gt_img_ids`, target
    first); None when only `target` is marked. Kept as listed, repeats included: mAP@K divides by
    min(K, len(ground_truths)) exactly as the official evaluation does."""
    aspects: tuple[str, ...] = ()
    """Semantic aspects of the query (CIRCO's `semantic_aspects`): mAP@10 is also reported per aspect."""
    target_label: str | None = None
    """The label a hit must carry where the split has `gallery_labels` (Fashion200k, MIT-States: the
    target caption; CSS: the target scene's label): any ranked image with this label is a hit, as
    tirg's evaluation counts. `target`, if set, is then the positive training uses."""
    excluded: str | None = None
    """The gallery entry left out of this query's ranking when the protocol removes the reference;
    None: the reference itself (a CSS 2D query masks its scene's 3D image)."""


@dataclass
class CIRSplit:
    """Queries plus the gallery they are ranked against, for one benchmark and split."""

    dataset: str
    name: str
    """The benchmark's name in reports: `cirr`, or the FashionIQ category."""
    split: str
    queries: Sequence[Query]
    """A list, or for `--dataset triplets` a `QueryTable` (columns; a Query made per access)."""
    gallery: Mapping[str, Path]
    """Image name -> file, in the split file's order (the gallery's index order)."""
    exclude_reference: bool
    """Remove each query's reference image from its own ranking (CIRR protocol)."""
    recall_ks: tuple[int, ...]
    subset_ks: tuple[int, ...] = ()
    map_ks: tuple[int, ...] = ()
    """mAP@K cut-offs over `Query.ground_truths` (CIRCO: 5, 10, 25, 50); () when there are none."""
    image_ids: Mapping[str, int] | None = None
    """Gallery name -> the integer id a test server knows the image by (CIRCO's COCO ids);
    None where images are known by their names (CIRR)."""
    gallery_labels: Mapping[str, str] | None = None
    """Gallery name -> label, where a hit is label equality (`Query.target_label`); None: a hit is
    the target image itself (or, for mAP@K, one of `Query.ground_truths`)."""
    label_views: tuple[tuple[str, int], ...] = ()
    """Diagnostics scored on one whitespace-separated word of the labels, as `(name, word index)`:
    MIT-States' adjective-only and noun-only recalls are `(("adjective", 0), ("noun", 1))`."""
    query_images: Mapping[str, Path] | None = None
    """Reference images that are not gallery entries (CSS's 2D queries), encoded apart."""
    judgments: Mapping[str, Mapping[str, tuple[float, float]]] | None = None
    """Graded judgements instead of targets (CFQ): qid -> judged gallery name -> (accurate, similar),
    each the mean of the judges' votes in [-1, 1]. Only these pairs are scored (`evaluation.graded`)."""

    def image_file(self, name: str) -> Path:
        """The file of a gallery entry or of a reference kept apart from the gallery."""
        if name in self.gallery:
            return self.gallery[name]
        if self.query_images is not None and name in self.query_images:
            return self.query_images[name]
        raise CIRError(f"{self.dataset} {self.name} {self.split}: image '{name}' is neither in the gallery "
                       f"nor among the query images")

    @property
    def rank_depth(self) -> int:
        """How much of each query's ranking the metrics look at: the largest K of any metric."""
        return max(self.recall_ks + self.map_ks)

    @property
    def has_targets(self) -> bool:
        if self.judgments is not None:
            return True
        if self.gallery_labels is not None:
            return all(q.target_label is not None for q in self.queries)
        return all(q.target is not None for q in self.queries)

    def __repr__(self) -> str:
        return (f"CIRSplit({self.dataset}/{self.name}/{self.split}: {len(self.queries)} queries, "
                f"{len(self.gallery)} gallery images)")


@dataclass(frozen=True)
class TripletFormat:
    """How the split files of `--dataset triplets` (`clip_cir.data.triplets`) name their columns
    (open_clip's `--csv-*-key` convention), and the protocol choices the command line may override.
    Here rather than in `triplets.py` because `columns.py`, which `triplets.py` imports, needs it too."""

    reference_key: str = "reference"
    caption_key: str = "caption"
    target_key: str = "target"
    id_key: str = "id"
    group_key: str = "benchmark"
    separator: str | None = None
    """CSV separator; default by suffix: ',' for .csv, tab for .tsv."""
    target_separator: str = "|"
    """Between several targets in one CSV cell."""
    exclude_reference: bool | None = None
    """Remove each reference from its own ranking; None: the protocol file's choice, else True."""


@dataclass(frozen=True)
class ReaderOptions:
    """Options that mean something for one dataset's reader only; each reader reads its own and
    ignores the rest, so the commands pass one object whatever `--dataset` is."""

    fashioniq_categories: tuple[str, ...] | None = None
    """FashionIQ categories to read (None: all three)."""
    fashioniq_protocol: str = "clip4cir"
    circo_query_text: str = "caption"
    triplet_format: TripletFormat | None = None
    shoes_protocol: str | None = None
    """None: the Shoes reader's default protocol."""
    css_query_images: str = "3d"
