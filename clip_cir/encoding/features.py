"""CLIP features, computed once.

Frozen towers give the same features every time, so image (and text) features are cached on
disk, keyed by a hash of the tower's weights, the preprocessing and the exact list of inputs.
Evaluating the same CLIP twice, or training stage 2 for 300 epochs, encodes each image once.
Features are stored raw (un-normalised): the method sums raw image and text features.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, deque
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from clip_cir.encoding.pixels import PixelCache, files_digest, image_batches
from clip_cir.errors import CIRError
from clip_cir.models.checkpoints import atomic_write
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.towers import encode_text, is_channels_last, tower_fingerprint, tower_input
from clip_cir.models.transforms import ImageTransform

log = logging.getLogger(__name__)

INFERENCE_BATCH_SIZE = 256
"""Images per forward pass when extracting features (`--batch-size` of the encoding commands).
Large enough that a GPU's per-batch costs (launches, the copy in, the tail of each layer) are a
small share of the tower's work, small enough for the largest CLIP towers in float32 on a
common GPU; extraction keeps no activations for backward."""

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


class InFlight:
    """Keeps the host at most `depth` batches ahead of a CUDA device (elsewhere: nothing to do).

    Copies and kernels are queued asynchronously, so the host reads the next batch while the
    device computes; unbounded, a host that reads faster than the device computes would queue
    the whole gallery, each batch holding its page-locked buffer. Waiting on the batch `depth`
    back keeps the device busy and the buffers few, and no batch waits for its own result.
    """

    def __init__(self, device: torch.device | str, depth: int = 2):
        self.device = torch.device(device)
        self.depth = depth
        self.events: deque = deque()

    def push(self) -> None:
        """Mark the end of one batch's queued work; wait if `depth` batches are still running."""
        if self.device.type != "cuda":
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self.events.append(event)
        if len(self.events) > self.depth:
            self.events.popleft().synchronize()


class Shard:
    """This process's share of a frozen-feature extraction under DDP.

    Every rank would otherwise encode every image, so N GPUs would extract no faster than one:
    rank r encodes the r-th contiguous 1/N of the inputs, and the rows are gathered back in
    order. Only where every rank makes the same call (the extraction before training), never in
    main-process-only work such as validation.
    """

    def __init__(self, n: int, enabled: bool, device: torch.device | str):
        import torch.distributed as dist

        self.n, self.device = n, torch.device(device)
        on = enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world = dist.get_world_size() if on else 1
        self.rank = dist.get_rank() if on else 0
        self.per = -(-n // self.world)
        self.start, self.stop = min(self.rank * self.per, n), min((self.rank + 1) * self.per, n)

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_hit(self, hit: bool) -> bool:
        """True only if every rank found the features in the cache (else all encode)."""
        if not self.active:
            return hit
        import torch.distributed as dist

        flag = torch.tensor([int(hit)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def collect(self, encode: Callable[[], torch.Tensor], dim: int) -> torch.Tensor:
        """Run this rank's `encode`, then gather every rank's rows. A rank that fails (an image
        only its share holds) tells the others, and all raise, instead of leaving them waiting
        in the gather until the collective times out."""
        if not self.active:
            return encode()
        import torch.distributed as dist

        try:
            local, error = encode(), None
        except Exception as e:  # noqa: BLE001 -- re-raised below, on this rank and the others
            local, error = torch.zeros(0, dim), e
        failed = torch.tensor([int(error is not None)], device=self.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if failed.item():
            raise CIRError("another process failed while encoding its share of the features (see its error)")
        return self.gather(local, dim)

    def gather(self, local: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's rows, in input order (float32, CPU)."""
        if not self.active:
            return local
        import torch.distributed as dist

        padded = torch.zeros(self.per, dim, dtype=torch.float32, device=self.device)
        padded[: len(local)] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat(parts)[: self.n].cpu()


@torch.no_grad()
def encode_images(clip: LoadedCLIP, paths: Sequence[Path], transform: ImageTransform, *,
                  device: torch.device | str = "cpu", batch_size: int = INFERENCE_BATCH_SIZE, num_workers: int = 0,
                  cache: FeatureCache | None = None, autocast=None, precision: str = "no",
                  desc: str = "image features", progress: bool = True,
                  pixel_cache: PixelCache | None = None, sharded: bool = False) -> torch.Tensor:
    """Raw CLIP image features [N, D] (float32, CPU) for `paths`, from the cache when possible.
    `sharded`: every DDP rank calls this, each encodes 1/N and all get every row."""
    cache = cache or FeatureCache(None)
    key = cache.key("image", tower_fingerprint(clip.model, "image"), clip.signature, transform.signature, precision,
                    files_digest(paths)) if cache.root is not None else ""
    shard = Shard(len(paths), sharded, device)
    cached = cache.load(key)
    if shard.all_hit(cached is not None and cached.shape[0] == len(paths)):
        log.info("%s: %d images from cache", desc, len(paths))
        return cached
    mine = list(paths)[shard.start:shard.stop]

    def encode_mine() -> torch.Tensor:
        # Keyed by the files: each DDP rank's share is its own cache file (written atomically).
        pixels = pixel_cache.get(mine, transform, num_workers=num_workers, progress=progress,
                                 desc=f"{desc} (pixels)") if pixel_cache else None
        batches = image_batches(mine, transform, pixels, batch_size=batch_size, num_workers=num_workers,
                                pin_memory=torch.device(device).type == "cuda")
        channels_last = is_channels_last(clip.model.visual)
        # Filled in place where the features are computed, and copied back once: no batch waits for
        # its own result, and a large gallery (CIRCO: 123k x 640 floats, 315 MB) is never held
        # twice as a list of batches plus their concatenation.
        local = torch.empty(len(mine), clip.embed_dim, device=device)
        filled = 0
        in_flight = InFlight(device)
        with eval_mode(clip.model):
            for images in tqdm(batches, desc=desc, unit="batch", disable=None if progress else True, leave=False):
                # uint8 to the device (asynchronously from pinned memory), normalised there.
                images = tower_input(images.to(device, non_blocking=True), channels_last)
                with (autocast or nullcontext)():
                    batch = clip.model.encode_image(transform.normalize(images))
                local[filled:filled + len(batch)] = batch
                filled += len(batch)
                encode_counts["image"] += len(images)
                in_flight.push()
        return local.cpu()

    features = shard.collect(encode_mine, clip.embed_dim)
    if shard.rank == 0:
        cache.save(key, features)
    return features


@torch.no_grad()
def encode_texts(clip: LoadedCLIP, texts: Sequence[str], *, device: torch.device | str = "cpu",
                 batch_size: int = 256, cache: FeatureCache | None = None, autocast=None, precision: str = "no",
                 desc: str = "text features", progress: bool = True, sharded: bool = False) -> torch.Tensor:
    """Raw CLIP text features [N, D] (float32, CPU), from the cache when possible (`sharded`: as
    for `encode_images`)."""
    cache = cache or FeatureCache(None)
    key = cache.key("text", tower_fingerprint(clip.model, "text"), clip.signature, precision,
                    _list_digest(list(texts))) if cache.root is not None else ""
    shard = Shard(len(texts), sharded, device)
    cached = cache.load(key)
    if shard.all_hit(cached is not None and cached.shape[0] == len(texts)):
        return cached
    mine = list(texts)[shard.start:shard.stop]

    def encode_mine() -> torch.Tensor:
        local = torch.empty(len(mine), clip.embed_dim, device=device)  # as in encode_images: copied back once
        in_flight = InFlight(device)
        with eval_mode(clip.model):
            for start in tqdm(range(0, len(mine), batch_size), desc=desc, unit="batch",
                              disable=None if progress else True, leave=False):
                tokens = clip.tokenize(mine[start:start + batch_size]).to(device, non_blocking=True)
                with (autocast or nullcontext)():
                    batch = encode_text(clip.model, tokens)
                local[start:start + len(batch)] = batch
                encode_counts["text"] += tokens.shape[0]
                in_flight.push()
        return local.cpu()

    features = shard.collect(encode_mine, clip.embed_dim)
    if shard.rank == 0:
        cache.save(key, features)
    return features
