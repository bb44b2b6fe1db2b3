"""CLIP features, computed once.

Frozen towers give the same features every time, so image (and text) features are cached on
disk, keyed by a hash of the tower's weights, the preprocessing and the exact list of inputs.
Evaluating the same CLIP twice, or training stage 2 for 300 epochs, encodes each image once.
Features are stored raw (un-normalised): the method sums raw image and text features.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from clip_cir.checkpoints import atomic_write
from clip_cir.data.io import load_image
from clip_cir.models import LoadedCLIP, tower_fingerprint
from clip_cir.transforms import ImageTransform

log = logging.getLogger(__name__)

encode_counts: Counter = Counter()
"""How many images and texts went through CLIP in this process (tests and logs read it)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CLIP_CIR_CACHE", Path.home() / ".cache" / "clip_cir")) / "features"


class ImageFiles(Dataset):
    """Preprocessed images in a fixed order; an unreadable image stops the run with its path."""

    def __init__(self, paths: Sequence[Path], transform: ImageTransform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]))


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
                  desc: str = "image features", progress: bool = True) -> torch.Tensor:
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
    loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size, num_workers=num_workers,
                        shuffle=False, pin_memory=str(device).startswith("cuda"), generator=torch.Generator())
    was_training = clip.model.training
    clip.model.eval()
    # Filled in place: a list of batches plus their concatenation would hold a large gallery
    # (CIRCO: 123k x 640 floats, 315 MB) twice at the end.
    features = torch.empty(len(paths), clip.embed_dim)
    filled = 0
    for images in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True, leave=False):
        with (autocast or nullcontext)():
            batch = clip.model.encode_image(images.to(device)).float().cpu()
        features[filled:filled + len(batch)] = batch
        filled += len(batch)
        encode_counts["image"] += len(images)
    clip.model.train(was_training)
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
    was_training = clip.model.training
    clip.model.eval()
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=None if progress else True, leave=False):
        tokens = clip.tokenizer(list(texts[start:start + batch_size])).to(device)
        with (autocast or nullcontext)():
            chunks.append(clip.model.encode_text(tokens).float().cpu())
        encode_counts["text"] += tokens.shape[0]
    clip.model.train(was_training)
    features = torch.cat(chunks) if chunks else torch.empty(0, clip.embed_dim)
    cache.save(key, features)
    return features
