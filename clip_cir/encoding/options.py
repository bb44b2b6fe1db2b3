"""How to run CLIP over images and captions: device, batching, caches and autocast, shared by
every command and by the global and token feature extraction."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from clip_cir.encoding.extraction import INFERENCE_BATCH_SIZE, FeatureCache
from clip_cir.encoding.pixels import PixelCache
from clip_cir.models.transforms import ImageTransform


@dataclass(frozen=True)
class EncodeOptions:
    """How to run CLIP over images and captions (device, batching, caches); shared by every command."""

    transform: ImageTransform
    device: torch.device | str = "cpu"
    batch_size: int = INFERENCE_BATCH_SIZE
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
    """Every DDP rank encodes the same inputs here: split the work (see extraction.Shard)."""

    @classmethod
    def for_accelerator(cls, accelerator, transform: ImageTransform, cache: FeatureCache | None, *,
                        batch_size: int = INFERENCE_BATCH_SIZE, num_workers: int = 0, progress: bool = True,
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
