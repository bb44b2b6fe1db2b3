"""Features -> query vectors -> rankings -> metrics, the same for every dataset and caller.

The reference image of every query is a gallery member, so its features come from the
gallery features: evaluating a split encodes each gallery image once and each caption once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from clip_cir.combiner import CombiningFunction
from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError
from clip_cir.features import FeatureCache, encode_images, encode_texts
from clip_cir.metrics import combine_benchmarks, split_metrics
from clip_cir.models import LoadedCLIP
from clip_cir.pixels import PixelCache
from clip_cir.ranking import GallerySearch, Ranking, rank_split
from clip_cir.transforms import ImageTransform


@dataclass
class SplitFeatures:
    """Raw CLIP features of one split: its gallery, and per query its reference and caption."""

    split: CIRSplit
    gallery: torch.Tensor
    reference: torch.Tensor
    text: torch.Tensor


@dataclass(frozen=True)
class EncodeOptions:
    """How to run CLIP over images and captions (device, batching, caches); shared by every command."""

    transform: ImageTransform
    device: torch.device | str = "cpu"
    batch_size: int = 64
    num_workers: int = 0
    image_cache: FeatureCache | None = None
    text_cache: FeatureCache | None = None
    pixel_cache: PixelCache | None = None
    """Where uint8 pixels are read from instead of decoding (None: decode)."""
    autocast: Callable | None = None
    precision: str = "no"
    """The autocast precision, part of the cache key: fp16 features are not fp32 features."""
    progress: bool = True
    sharded: bool = False
    """Every DDP rank encodes the same inputs here: split the work (see features.Shard)."""

    @classmethod
    def for_accelerator(cls, accelerator, transform: ImageTransform, cache: FeatureCache | None, *,
                        batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                        pixel_cache: PixelCache | None = None) -> "EncodeOptions":
        """Device and autocast from Accelerate. The precision in cache keys is the one autocast
        really applies (Accelerate does not autocast fp16 on a CPU)."""
        precision = accelerator.mixed_precision if accelerator.native_amp else "no"
        return cls(transform=transform, device=accelerator.device, batch_size=batch_size, num_workers=num_workers,
                   image_cache=cache, text_cache=cache, pixel_cache=pixel_cache,
                   sharded=accelerator.num_processes > 1, autocast=accelerator.autocast, precision=precision,
                   progress=progress)

    def full_precision(self) -> "EncodeOptions":
        """The same options in float32: validation (as in the published code) and `clip-cir eval`
        by default, so the numbers that select a checkpoint are the ones eval reports for it."""
        return replace(self, autocast=None, precision="no")

    def on_this_process(self) -> "EncodeOptions":
        """For work only the main process does (validation): no collective sharding."""
        return replace(self, sharded=False)

    def without_cache(self, images: bool, texts: bool) -> "EncodeOptions":
        """The same options minus the caches of towers that train (their features change every step)."""
        return replace(self, image_cache=None if images else self.image_cache,
                       text_cache=None if texts else self.text_cache)


def encode_image_files(clip: LoadedCLIP, paths: Sequence[Path], options: EncodeOptions, desc: str) -> torch.Tensor:
    return encode_images(clip, paths, options.transform, device=options.device, batch_size=options.batch_size,
                         num_workers=options.num_workers, cache=options.image_cache, autocast=options.autocast,
                         pixel_cache=options.pixel_cache, sharded=options.sharded,
                         precision=options.precision, desc=desc, progress=options.progress)


def encode_captions(clip: LoadedCLIP, texts: Sequence[str], options: EncodeOptions, desc: str) -> torch.Tensor:
    return encode_texts(clip, texts, device=options.device, batch_size=max(options.batch_size, 256),
                        cache=options.text_cache, autocast=options.autocast, precision=options.precision,
                        desc=desc, progress=options.progress, sharded=options.sharded)


def split_features(clip: LoadedCLIP, split: CIRSplit, options: EncodeOptions) -> SplitFeatures:
    gallery = encode_image_files(clip, list(split.gallery.values()), options, f"{split.name} {split.split} gallery")
    index = {name: i for i, name in enumerate(split.gallery)}
    reference = gallery[torch.tensor([index[q.reference] for q in split.queries], dtype=torch.long)]
    text = encode_captions(clip, [q.eval_caption for q in split.queries], options,
                         f"{split.name} {split.split} captions")
    return SplitFeatures(split=split, gallery=gallery, reference=reference, text=text)


@torch.no_grad()
def predict_queries(features: SplitFeatures, combine: CombiningFunction, batch_size: int = 4096) -> torch.Tensor:
    """Normalised query vectors; `combine` runs on the device its parameters live on."""
    params = list(combine.parameters()) if isinstance(combine, torch.nn.Module) else []
    device = params[0].device if params else torch.device("cpu")
    parts = [combine(features.reference[i:i + batch_size].to(device), features.text[i:i + batch_size].to(device))
             .float().cpu() for i in range(0, len(features.reference), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, features.gallery.shape[1])


IndexFactory = Callable[[torch.Tensor], GallerySearch]
"""Builds a search index over normalised gallery features (`options.search_index_factory`)."""


def rank_features(features: SplitFeatures, combine: CombiningFunction, k: int = 50,
                  index_factory: IndexFactory | None = None) -> Ranking:
    """Rank one split: exact chunked top-k by default, or through the index `index_factory` builds."""
    queries = predict_queries(features, combine)
    gallery = torch.nn.functional.normalize(features.gallery, dim=-1)
    index = index_factory(gallery) if index_factory is not None else None
    return rank_split(features.split, queries, gallery, k, index)


def no_targets_message(split: CIRSplit) -> str:
    """What to do instead of scoring a split without ground truth (a test split)."""
    return (f"{split.dataset} split '{split.split}' has no targets to score (use `clip-cir rank`, or "
            f"`clip-cir submit-cirr` / `submit-circo` to write a test-server file)")


def metrics_from_features(all_features: Sequence[SplitFeatures], combine: CombiningFunction,
                          index_factory: IndexFactory | None = None) -> dict[str, float]:
    """The dataset's metric dictionary (see metrics.combine_benchmarks for the key names)."""
    per_split = []
    for features in all_features:
        if not features.split.has_targets:
            raise CIRError(no_targets_message(features.split))
        ranking = rank_features(features, combine, k=features.split.rank_depth, index_factory=index_factory)
        per_split.append((features.split, split_metrics(features.split, ranking)))
    return combine_benchmarks(per_split)


def evaluate(clip: LoadedCLIP, splits: Sequence[CIRSplit], combine: CombiningFunction,
             options: EncodeOptions, index_factory: IndexFactory | None = None) -> dict[str, float]:
    return metrics_from_features([split_features(clip, s, options) for s in splits], combine, index_factory)


def image_only(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Baseline that ignores the caption: the reference image alone is the query."""
    return torch.nn.functional.normalize(image_features, dim=-1)
