"""CLIP features, computed once.

Frozen towers give the same features every time, so image (and text) features are cached on
disk, keyed by a hash of the tower's weights, the preprocessing and the exact list of inputs.
Evaluating the same CLIP twice, or training stage 2 for 300 epochs, encodes each image once.
Features are stored raw (un-normalised): the method sums raw image and text features.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clip_cir.checkpoints import atomic_write
from clip_cir.models import LoadedCLIP, encode_text, tower_fingerprint
from clip_cir.pixels import PixelCache, pixel_source
from clip_cir.transforms import ImageTransform

log = logging.getLogger(__name__)

encode_counts: Counter = Counter()
"""How many images and texts went through CLIP in this process (tests and logs read it)."""


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside, and afterwards each submodule's own mode back: `train(was_training)` on
    the whole model would put a frozen tower back in train mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIP_CIR_CACHE", Path.home() / ".cache" / "clip_cir")) / "features"


class FeatureCache:
    """Feature tensors on disk, one safetensors file per (weights, preprocessing, inputs) key."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def key(self, *parts: str) -> str:
        digest = hashlib.blake2b(digest_size=20)
        for part in parts:
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def load(self, key: str) -> torch.Tensor | None:
        if self.root is None or not (self.root / f"{key}.safetensors").is_file():
            return None
        try:
            return load_file(str(self.root / f"{key}.safetensors"))["features"]
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
            log.warning("ignoring unreadable feature cache entry %s (%s)", key, e)
            return None

    def save(self, key: str, features: torch.Tensor) -> None:
        if self.root is None:
            return
        tensors = {"features": features.detach().cpu().contiguous()}
        atomic_write(self.root / f"{key}.safetensors", lambda tmp: save_file(tensors, tmp))


def _list_digest(items: Sequence[str]) -> str:
    return hashlib.blake2b("\n".join(items).encode(), digest_size=20).hexdigest()


def _files_digest(paths: Sequence[Path]) -> str:
    """Which files, by absolute path, size and modification time: a replaced image changes the key."""
    entries = []
    for path in paths:
        try:
            stat = os.stat(path)
            entries.append(f"{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}")
        except OSError:
            entries.append(f"{os.path.abspath(path)}\tmissing")  # the encode itself reports it
    return _list_digest(entries)


@torch.no_grad()
def encode_images(clip: LoadedCLIP, paths: Sequence[Path], transform: ImageTransform, *,
                  device: torch.device | str = "cpu", batch_size: int = 64, num_workers: int = 0,
                  cache: FeatureCache | None = None, autocast=None, precision: str = "no",
                  desc: str = "image features", progress: bool = True,
                  pixel_cache: PixelCache | None = None) -> torch.Tensor:
    """Raw CLIP image features [N, D] (float32, CPU) for `paths`, from the cache when possible."""
    cache = cache or FeatureCache(None)
    key = cache.key("image", tower_fingerprint(clip.model, "image"), clip.signature, transform.signature, precision,
                    _files_digest(paths)) if cache.root is not None else ""
    cached = cache.load(key)
    if cached is not None and cached.shape[0] == len(paths):
        log.info("%s: %d images from cache", desc, len(paths))
        return cached
    # Its own generator: encoding (which a warm cache skips) must not advance the global RNG
    # that training draws from.
    pixels = pixel_cache.get(paths, transform, num_workers=num_workers, progress=progress,
                             desc=f"{desc} (pixels)") if pixel_cache is not None else None
    loader = DataLoader(pixel_source(paths, transform, pixels), batch_size=batch_size,
                        num_workers=0 if pixels is not None else num_workers,
                        shuffle=False, pin_memory=str(device).startswith("cuda"), generator=torch.Generator())
    chunks = []
    with eval_mode(clip.model):
        for images in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True, leave=False):
            with (autocast or nullcontext)():
                chunks.append(clip.model.encode_image(transform.normalize(images.to(device))).float().cpu())
            encode_counts["image"] += len(images)
    features = torch.cat(chunks) if chunks else torch.empty(0, clip.embed_dim)
    cache.save(key, features)
    return features


@torch.no_grad()
def encode_texts(clip: LoadedCLIP, texts: Sequence[str], *, device: torch.device | str = "cpu",
                 batch_size: int = 256, cache: FeatureCache | None = None, autocast=None, precision: str = "no",
                 desc: str = "text features", progress: bool = True) -> torch.Tensor:
    """Raw CLIP text features [N, D] (float32, CPU), from the cache when possible."""
    cache = cache or FeatureCache(None)
    key = cache.key("text", tower_fingerprint(clip.model, "text"), clip.signature, precision,
                    _list_digest(list(texts))) if cache.root is not None else ""
    cached = cache.load(key)
    if cached is not None and cached.shape[0] == len(texts):
        return cached
    chunks = []
    with eval_mode(clip.model):
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=None if progress else True,
                          leave=False):
            tokens = clip.tokenize(texts[start:start + batch_size]).to(device)
            with (autocast or nullcontext)():
                chunks.append(encode_text(clip.model, tokens).float().cpu())
            encode_counts["text"] += tokens.shape[0]
    features = torch.cat(chunks) if chunks else torch.empty(0, clip.embed_dim)
    cache.save(key, features)
    return features
