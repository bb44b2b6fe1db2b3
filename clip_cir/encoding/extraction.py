"""CLIP features, computed once.

Frozen towers give the same features every time, so image (and text) features are cached on
disk, keyed by a hash of the tower's weights, the preprocessing and the exact list of inputs.
Evaluating the same CLIP twice, or training stage 2 for 300 epochs, encodes each image once.
Features are stored raw (un-normalised): the method sums raw image and text features. They are
written chunk by chunk as they are encoded (`feature_store.FeatureCache`), so an interrupted extraction of a
large gallery resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, deque
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

from clip_cir.config import EncodeConfig
from clip_cir.encoding.feature_store import (  # noqa: F401 - CHUNK_ROWS, default_cache_dir: imported from here too
    CHUNK_ROWS,
    FeatureCache,
    Piece,
    chunk_plan,
    default_cache_dir,
)
from clip_cir.encoding.pixels import PixelCache, files_digest, image_batches
from clip_cir.errors import CIRError
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.towers import encode_text, is_channels_last, tower_fingerprint, tower_input
from clip_cir.models.transforms import ImageTransform

log = logging.getLogger(__name__)

INFERENCE_BATCH_SIZE = EncodeConfig.batch_size
"""Images per forward pass when extracting features (`--batch-size` of the encoding commands).
Large enough that a GPU's per-batch costs (launches, the copy in, the tail of each layer) are a
small share of the tower's work, small enough for the largest CLIP towers in float32 on a
common GPU; extraction keeps no activations for backward."""

T = TypeVar("T")
B = TypeVar("B")

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


def list_digest(items: Sequence[str]) -> str:
    """A key for an exact list of texts: each one's length goes in before it, so no two lists
    share a key (joined by a separator, ["a\nb"] and ["a", "b"] would)."""
    digest = hashlib.blake2b(digest_size=20)
    for item in items:
        data = item.encode()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


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
    rank r encodes the r-th contiguous run of the cache's chunks (`chunk_plan`), writes them, and
    the rows are gathered back in order. Only where every rank makes the same call (the
    extraction before training), never in main-process-only work such as validation.
    """

    def __init__(self, n: int, enabled: bool, device: torch.device | str, chunk_rows: int):
        import torch.distributed as dist

        self.n, self.device = n, torch.device(device)
        on = enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world = dist.get_world_size() if on else 1
        self.rank = dist.get_rank() if on else 0
        plan = chunk_plan(n, self.world, chunk_rows)
        self.spans = [(pieces[0][0], pieces[-1][1]) if pieces else (n, n) for pieces in plan]
        self.pieces: list[Piece] = plan[self.rank]
        self.start, self.stop = self.spans[self.rank]

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_hit(self, hit: bool) -> bool:
        """True only if every rank found the features in the cache (else all take part in encoding)."""
        if not self.active:
            return hit
        import torch.distributed as dist

        flag = torch.tensor([int(hit)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def run(self, work: Callable[[], T]) -> T:
        """This rank's `work`, then a barrier every rank reaches even when one fails: a rank that
        fails (an image only its share holds) tells the others, and all raise, instead of leaving
        them waiting in the next collective until it times out."""
        if not self.active:
            return work()
        import torch.distributed as dist

        try:
            result, error = work(), None
        except Exception as e:  # noqa: BLE001 -- re-raised below, on this rank and the others
            result, error = None, e
        failed = torch.tensor([int(error is not None)], device=self.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if failed.item():
            raise CIRError("another process failed while encoding its share of the features (see its error)")
        return result

    def collect(self, encode: Callable[[], torch.Tensor], dim: int) -> torch.Tensor:
        """Run this rank's `encode` (through `run`), then gather every rank's rows."""
        return self.gather(self.run(encode), dim)

    def gather(self, local: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's rows, in input order (float32, CPU)."""
        if not self.active:
            return local
        import torch.distributed as dist

        per = max(stop - start for start, stop in self.spans)
        padded = torch.zeros(per, dim, dtype=torch.float32, device=self.device)
        padded[: len(local)] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:stop - start] for part, (start, stop) in zip(parts, self.spans)]).cpu()


def fill_pieces(todo: list[Piece], batches: Iterable[B], *, device: torch.device | str, desc: str, unit: str,
                progress: bool) -> Iterator[tuple[Piece, int, B]]:
    """Each batch of `batches` (in row order, none straddling two pieces of `todo`) with its piece
    and the row it starts at; a piece is complete when a batch ends at its stop. Shows progress,
    and keeps the host at most a few batches ahead of a CUDA device (`InFlight`)."""
    batches = iter(batches)
    in_flight = InFlight(device)
    with tqdm(total=sum(stop - start for start, stop in todo), desc=desc, unit=unit,
              disable=None if progress else True, leave=False) as bar:
        for start, stop in todo:
            at = start
            while at < stop:
                batch = next(batches)
                yield (start, stop), at, batch
                at += len(batch)
                in_flight.push()
                bar.update(len(batch))


def image_input_batches(clip: LoadedCLIP, paths: Sequence[Path], pieces: list[Piece], transform: ImageTransform, *,
                        device: torch.device | str, batch_size: int, num_workers: int = 0,
                        pixel_cache: PixelCache | None = None, progress: bool = True,
                        desc: str = "images") -> Iterator[torch.Tensor]:
    """Normalised pixel batches, on `device` and in the image tower's memory format, of the rows
    `pieces` of `paths`, in order and none straddling two pieces: what the image tower takes."""
    if not pieces:
        return
    todo = [path for start, stop in pieces for path in paths[start:stop]]
    offsets, at = [], 0
    for start, stop in pieces:  # the pieces' rows within `todo`
        offsets.append((at, at + stop - start))
        at += stop - start
    channels_last = is_channels_last(clip.model.visual)
    pixels = pixel_cache.get(todo, transform, num_workers=num_workers, progress=progress,
                             desc=f"{desc} (pixels)") if pixel_cache else None
    for images in image_batches(todo, transform, pixels, batch_size=batch_size, num_workers=num_workers,
                                pin_memory=torch.device(device).type == "cuda", pieces=offsets):
        # uint8 to the device (asynchronously from pinned memory), normalised there.
        yield transform.normalize(tower_input(images.to(device, non_blocking=True), channels_last))


def caption_batches(clip: LoadedCLIP, texts: Sequence[str], pieces: list[Piece], *, device: torch.device | str,
                    batch_size: int) -> Iterator[torch.Tensor]:
    """Token id batches (cut to each batch's longest caption where exact) of the rows `pieces` of
    `texts`, on `device`, in order and none straddling two pieces."""
    for first, stop in pieces:
        for start in range(first, stop, batch_size):
            yield clip.tokenize(list(texts[start:min(start + batch_size, stop)])).to(device, non_blocking=True)


def _extract(n: int, dim: int, cache: FeatureCache, key: str, *, sharded: bool, device: torch.device | str,
             encode: Callable[[list[Piece]], Iterable[torch.Tensor]], desc: str, progress: bool,
             unit: str) -> torch.Tensor:
    """The features of `n` inputs from the cache, encoding what is missing: this process's chunks
    that are not on disk go through `encode(pieces)` (feature batches in row order, none
    straddling two pieces), and each chunk is written as soon as its last batch is in."""
    chunk_rows = cache.chunk_rows if cache.root is not None else max(n, 1)
    shard = Shard(n, sharded, device, chunk_rows)
    complete = cache.load(key, n) if cache.root is not None else None
    if shard.all_hit(complete is not None):
        log.info("%s: %d from cache", desc, n)
        return complete

    def encode_mine() -> torch.Tensor:
        # Filled in place where the features are computed, and copied back once: no batch waits for
        # its own result, and a large gallery (CIRCO: 123k x 640 floats, 315 MB) is never held
        # twice as a list of batches plus their concatenation.
        local = torch.empty(shard.stop - shard.start, dim, device=device)
        todo = []
        for start, stop in shard.pieces:
            rows = complete[start:stop] if complete is not None else cache.load_piece(key, (start, stop))
            if rows is None:
                todo.append((start, stop))
            else:
                local[start - shard.start:stop - shard.start] = rows
        if todo and len(todo) < len(shard.pieces):
            log.info("%s: %d of %d chunks from cache, encoding the other %d", desc, len(shard.pieces) - len(todo),
                     len(shard.pieces), len(todo))
        for (start, stop), at, batch in fill_pieces(todo, encode(todo), device=device, desc=desc, unit=unit,
                                                    progress=progress):
            local[at - shard.start:at - shard.start + len(batch)] = batch
            if at + len(batch) == stop:
                cache.save_piece(key, (start, stop), local[start - shard.start:stop - shard.start])
        return local.cpu()

    return shard.collect(encode_mine, dim)


@torch.no_grad()
def encode_images(clip: LoadedCLIP, paths: Sequence[Path], transform: ImageTransform, *,
                  device: torch.device | str = "cpu", batch_size: int = INFERENCE_BATCH_SIZE, num_workers: int = 0,
                  cache: FeatureCache | None = None, autocast=None, precision: str = "no",
                  desc: str = "image features", progress: bool = True,
                  pixel_cache: PixelCache | None = None, sharded: bool = False) -> torch.Tensor:
    """Raw CLIP image features [N, D] (float32, CPU) for `paths`, from the cache when possible.
    `sharded`: every DDP rank calls this, each encodes its chunks and all get every row."""
    cache = cache or FeatureCache(None)
    paths = list(paths)
    if not paths:
        return torch.zeros(0, clip.embed_dim)
    key = cache.key("image", tower_fingerprint(clip.model, "image"), clip.signature, transform.signature, precision,
                    files_digest(paths)) if cache.root is not None else ""

    def encode(pieces: list[Piece]) -> Iterator[torch.Tensor]:
        for pixels in image_input_batches(clip, paths, pieces, transform, device=device, batch_size=batch_size,
                                          num_workers=num_workers, pixel_cache=pixel_cache, progress=progress,
                                          desc=desc):
            with (autocast or nullcontext)():
                batch = clip.model.encode_image(pixels)
            encode_counts["image"] += len(pixels)
            yield batch

    with eval_mode(clip.model):
        return _extract(len(paths), clip.embed_dim, cache, key, sharded=sharded, device=device, encode=encode,
                        desc=desc, progress=progress, unit="image")


@torch.no_grad()
def encode_texts(clip: LoadedCLIP, texts: Sequence[str], *, device: torch.device | str = "cpu",
                 batch_size: int = INFERENCE_BATCH_SIZE, cache: FeatureCache | None = None, autocast=None,
                 precision: str = "no",
                 desc: str = "text features", progress: bool = True, sharded: bool = False) -> torch.Tensor:
    """Raw CLIP text features [N, D] (float32, CPU), from the cache when possible (`sharded`: as
    for `encode_images`)."""
    cache = cache or FeatureCache(None)
    texts = list(texts)
    if not texts:
        return torch.zeros(0, clip.embed_dim)
    key = cache.key("text", tower_fingerprint(clip.model, "text"), clip.signature, precision,
                    list_digest(texts)) if cache.root is not None else ""

    def encode(pieces: list[Piece]) -> Iterator[torch.Tensor]:
        for tokens in caption_batches(clip, texts, pieces, device=device, batch_size=batch_size):
            with (autocast or nullcontext)():
                batch = encode_text(clip.model, tokens)
            encode_counts["text"] += tokens.shape[0]
            yield batch

    with eval_mode(clip.model):
        return _extract(len(texts), clip.embed_dim, cache, key, sharded=sharded, device=device, encode=encode,
                        desc=desc, progress=progress, unit="text")
