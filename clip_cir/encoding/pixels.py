"""Preprocessed pixels, decoded once.

Decoding a 500x375 PNG or a 400x600 JPEG and padding/resizing it to 288 px costs ~12 ms of CPU;
reading the same uint8 pixels from a memory map costs ~0.3 ms. The method uses no data
augmentation, so preprocessing is a pure function of the file and caching its output is as
exact as caching features. Where an image tower trains, every epoch (and every validation of
its gallery) needs the pixels again: those reads come from here.

One `.npy` file per (files, preprocessing) key, memory-mapped read-only: worker processes and
DDP ranks share the operating system's page cache instead of each holding a copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from clip_cir.data.io import load_image
from clip_cir.models.transforms import ImageTransform

if TYPE_CHECKING:
    from clip_cir.config import CacheConfig

log = logging.getLogger("clip_cir")


def default_pixel_dir() -> Path:
    return Path(os.environ.get("CLIP_CIR_CACHE", Path.home() / ".cache" / "clip_cir")) / "pixels"


def files_digest(paths: Sequence[Path]) -> str:
    """Which files, by absolute path, size and modification time: a replaced image changes the key."""
    digest = hashlib.blake2b(digest_size=20)
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(path)}\tmissing\n".encode())  # decoding reports it
    return digest.hexdigest()


class DecodedPixels(Dataset):
    """uint8 pixels by decoding (an unreadable image stops the run with its path)."""

    def __init__(self, paths: Sequence[Path], transform: ImageTransform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform.pixels(load_image(self.paths[index]))


class PixelArray:
    """Row i of a pixel cache file as a uint8 tensor. The memory map is opened lazily in each
    process (a pickled memmap would be copied into every DataLoader worker)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[index]))

    def rows(self, start: int, stop: int, pin_memory: bool = False) -> torch.Tensor:
        """Rows start..stop as one uint8 batch: a single copy out of the memory map (into
        page-locked memory with `pin_memory`, ready for an asynchronous copy to a GPU)."""
        array = self.array
        out = torch.empty((stop - start, *array.shape[1:]), dtype=torch.uint8, pin_memory=pin_memory)
        np.copyto(out.numpy(), array[start:stop])
        return out

    def __getstate__(self) -> dict:
        return {"path": self.path, "_array": None}


def batch_spans(n: int, batch_size: int, pieces: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Rows [start, stop) of each batch over `n` rows: consecutive, or restarting at each piece's
    start so that no batch straddles two pieces (pieces tile [0, n) in order)."""
    pieces = pieces if pieces is not None else [(0, n)]
    return [(start, min(start + batch_size, stop))
            for first, stop in pieces for start in range(first, stop, batch_size)]


class SpanSampler(Sampler):
    """A DataLoader's batches as given row spans (`batch_spans`), in order."""

    def __init__(self, spans: Sequence[tuple[int, int]]):
        self.spans = list(spans)

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[list[int]]:
        return (list(range(start, stop)) for start, stop in self.spans)


class PixelBatches:
    """A pixel cache file in consecutive batches, in order (what extraction reads): one slice copy
    per batch instead of a per-image read, a stack and a second copy into pinned memory."""

    def __init__(self, pixels: PixelArray, batch_size: int, pin_memory: bool = False,
                 spans: Sequence[tuple[int, int]] | None = None):
        self.pixels, self.batch_size, self.pin_memory = pixels, batch_size, pin_memory
        self.spans = list(spans) if spans is not None else None

    def __len__(self) -> int:
        return len(self.spans) if self.spans is not None else -(-len(self.pixels) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        spans = self.spans if self.spans is not None else batch_spans(len(self.pixels), self.batch_size)
        for start, stop in spans:
            yield self.pixels.rows(start, stop, self.pin_memory)


class PixelDataset(Dataset):
    def __init__(self, pixels: PixelArray):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.pixels[index]


def image_batches(paths: Sequence[Path], transform: ImageTransform, cached: PixelArray | None, *, batch_size: int,
                  num_workers: int = 0, pin_memory: bool = False,
                  pieces: Sequence[tuple[int, int]] | None = None) -> Iterable[torch.Tensor]:
    """uint8 pixels of `paths` in order, `batch_size` at a time (no batch straddling two of
    `pieces`): slices of the pixel cache when there is one, else decoded by `num_workers` worker
    processes. `pin_memory` (for a CUDA device): in page-locked memory, so the copy to the device
    can run asynchronously."""
    spans = batch_spans(len(paths), batch_size, pieces)
    if cached is not None:
        return PixelBatches(cached, batch_size, pin_memory, spans)
    # Its own generator: encoding (which a warm cache skips) must not advance the global RNG that
    # training draws from.
    return DataLoader(DecodedPixels(paths, transform), batch_sampler=SpanSampler(spans), num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator())


class PixelCache:
    """uint8 [N, 3, S, S] arrays on disk, keyed by the files and the preprocessing."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def file_for(self, paths: Sequence[Path], transform: ImageTransform) -> Path:
        key = hashlib.blake2b(f"{files_digest(paths)}|{transform.pixel_signature}".encode(), digest_size=20)
        return self.root / f"{key.hexdigest()}.npy"

    def get(self, paths: Sequence[Path], transform: ImageTransform, *, num_workers: int = 0,
            progress: bool = True, desc: str = "pixel cache") -> PixelArray | None:
        """The cached pixels of `paths`, writing them first if needed; None when there is no cache
        (off, a transform that does not split, or too little disk: then images are decoded)."""
        if self.root is None or not transform.splits or not paths:
            return None
        path = self.file_for(paths, transform)
        if path.is_file():
            try:
                cached = PixelArray(path)
                if len(cached) == len(paths):
                    log.info("%s: %d images from %s", desc, len(paths), path)
                    return cached
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable pixel cache %s (%s)", path, e)
        shape = tuple(transform.pixels(load_image(paths[0])).shape)
        size = len(paths) * int(np.prod(shape))
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if size > free - 1024 ** 3:  # keep a gigabyte free for checkpoints and logs
            log.warning("%s: %d images x %s uint8 = %.2f GB would leave less than 1 GB free in %s (%.2f GB free); "
                        "decoding images instead (--pixel-cache off to silence, --pixel-cache-dir elsewhere)",
                        desc, len(paths), "x".join(map(str, shape)), size / 1e9, self.root, free / 1e9)
            return None
        log.info("%s: writing %d images x %s uint8 = %.2f GB to %s (once; --pixel-cache off to decode instead)",
                 desc, len(paths), "x".join(map(str, shape)), size / 1e9, path)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *shape))
            loader = DataLoader(DecodedPixels(paths, transform), batch_size=32, num_workers=num_workers,
                                generator=torch.Generator())
            start = 0
            for batch in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True, leave=False):
                array[start:start + len(batch)] = batch.numpy()
                start += len(batch)
            array.flush()
            del array
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return PixelArray(path)


def pixel_cache_for(config: CacheConfig, repeated: bool) -> PixelCache | None:
    """The pixel cache for images decoded `repeated`ly (True) or once (False), per `pixel_cache`:
    auto uses it only where images are decoded repeatedly, on always, off never."""
    if config.pixel_cache == "off" or (config.pixel_cache == "auto" and not repeated):
        return None
    return PixelCache(config.pixel_cache_dir or default_pixel_dir())


def loader_workers(requested: int | None, on_gpu: bool, processes_per_node: int = 1) -> int:
    """`requested` data-loading workers, or (None) a number that suits the machine: decoding
    workers on every spare core when a GPU does the math (the published code uses every core),
    none on a CPU-only run, whose cores do the math."""
    if requested is not None:
        return requested
    if not on_gpu:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores // max(processes_per_node, 1) - 1))
