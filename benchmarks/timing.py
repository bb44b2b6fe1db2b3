"""Timing: of calls the library makes inside a real run, of baseline epochs, of a DataLoader.

Timing rule (the library's): an epoch's `seconds` run from before the first batch is asked of
the DataLoader to after the last optimizer step (`train_metrics.csv`), so worker start-up and
image decoding count, validation and checkpoint writes do not. The baselines are timed the same
way (`time_epochs`). The first epoch is a warm-up; "steady state" is the median of the others.
With `--rounds R` the paths run R times, interleaved, and the medians pool every round's steady
epochs (`Epochs.pool`): load from other processes on a shared machine then hits all paths alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader

from clip_cir.encoding import extraction
from clip_cir.models.transforms import ImageTransform
from clip_cir.training.datasets import EpochSampler, TrainingSet


@dataclass
class Call:
    """One timed call: what it was given (paths, texts, a checkpoint folder) and its duration."""

    given: object
    seconds: float


def _timed(fn: Callable, calls: list[Call], given: Callable[[tuple, dict], object]) -> Callable:
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(Call(given(args, kwargs), time.perf_counter() - started))

    return wrapper


@contextmanager
def timed_feature_extraction() -> Iterator[dict[str, list[Call]]]:
    """Time every call of the library's two CLIP feature primitives, `clip_cir.encoding.extraction.
    encode_images` and `encode_texts`, made while the context is open; yields {"images": [...],
    "texts": [...]} with each call's input list.

    This is how a real run's one-off extraction is measured inside that run (rather than by a
    second, separate extraction). The primitives are replaced wherever a loaded `clip_cir`
    module holds them, so the timing survives refactors of which module calls them. A module
    first imported inside the context picks the replacement up from `clip_cir.encoding.extraction`
    itself;
    on exit every `clip_cir` module holding a replacement gets the original back, so a later
    context sees every call again. `training_extraction` then picks the calls on the training set.
    """
    calls: dict[str, list[Call]] = {"images": [], "texts": []}
    replaced: list[tuple[Callable, Callable]] = []  # (wrapper, the primitive it replaces)

    def clip_cir_modules() -> list[ModuleType]:
        return [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "clip_cir" and m is not None]

    for kind, name, arg in (("images", "encode_images", "paths"), ("texts", "encode_texts", "texts")):
        original = getattr(extraction, name)
        wrapper = _timed(original, calls[kind], lambda a, k, arg=arg: list(a[1] if len(a) > 1 else k.get(arg, [])))
        replaced.append((wrapper, original))
        for module in clip_cir_modules():
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, wrapper)
    try:
        yield calls
    finally:
        for module in clip_cir_modules():
            for attr, value in list(vars(module).items()):
                for wrapper, original in replaced:
                    if value is wrapper:
                        setattr(module, attr, original)


def training_extraction(calls: dict[str, list[Call]], data: TrainingSet, program: str, texts: bool) -> float:
    """Seconds spent encoding the training set's images (and, with `texts`, all its caption
    forms); validation galleries and captions are other inputs and are not counted. An error
    if the training images were never encoded: the benchmark no longer sees the extraction."""
    images = {str(p) for p in data.image_paths}
    captions = data.caption_table()[0]
    image_calls = [c for c in calls["images"] if {str(p) for p in c.given} == images]
    text_calls = [c for c in calls["texts"] if c.given == captions] if texts else []
    if not image_calls or (texts and not text_calls):
        raise RuntimeError(f"{program}: no call of clip_cir.encoding.extraction.encode_images/encode_texts on the "
                           f"training set was seen; the benchmark's timing hook needs updating")
    return sum(c.seconds for c in image_calls + text_calls)


@contextmanager
def timed_calls(owner: ModuleType | type, name: str,
                given: Callable[[tuple, dict], object] = lambda a, k: a[0] if a else None) -> Iterator[list[Call]]:
    """Time calls of `owner.name` (a function a module calls through its own global, or a
    method of a class), each with what `given(args, kwargs)` picks (default: the first
    argument); yields an empty list if there is no such function."""
    calls: list[Call] = []
    original = getattr(owner, name, None)
    if original is None:
        yield calls
        return
    setattr(owner, name, _timed(original, calls, given))
    try:
        yield calls
    finally:
        setattr(owner, name, original)


@dataclass
class Epochs:
    """Per-epoch timings and cumulative CLIP encode counts, as in `train_metrics.csv`."""

    seconds: list[float]
    steps: list[int]
    batch_size: int
    images_encoded: list[int] = field(default_factory=list)
    """Cumulative images through CLIP at the end of each epoch (process-wide, as the CSV logs it)."""

    @classmethod
    def from_run(cls, run_dir: Path, batch_size: int) -> "Epochs":
        frame = pd.read_csv(run_dir / "train_metrics.csv")
        return cls(seconds=frame["seconds"].tolist(), steps=frame["steps"].astype(int).tolist(),
                   batch_size=batch_size, images_encoded=frame["clip_images_encoded"].astype(int).tolist())

    @classmethod
    def pool(cls, runs: Sequence["Epochs"]) -> "Epochs":
        """Several rounds of one path as one: the first round's warm-up epoch, then every
        round's steady epochs (so `steady_seconds` is their median), the first round's counts."""
        first = runs[0]
        return cls(seconds=[first.seconds[0], *(s for run in runs for s in run.seconds[1:])],
                   steps=[first.steps[0], *(s for run in runs for s in run.steps[1:])],
                   batch_size=first.batch_size, images_encoded=first.images_encoded)

    @property
    def steady_seconds(self) -> float:
        """Median over the epochs after the first (the first pays warm-up: allocator, caches)."""
        return statistics.median(self.seconds[1:] or self.seconds)

    @property
    def triplets_per_epoch(self) -> int:
        return self.steps[-1] * self.batch_size  # drop_last: every step is a full batch

    @property
    def triplets_per_second(self) -> float:
        return self.triplets_per_epoch / self.steady_seconds

    @property
    def images_per_epoch(self) -> int:
        """Images through CLIP during epoch 2. The programs validate only after the last epoch
        here (which adds gallery encodes to that row) and epoch 1's row of a reuse run includes
        the one-off extraction, so epoch 2 of >= 3 is the clean one."""
        return self.images_encoded[1] - self.images_encoded[0]


def time_epochs(loader: DataLoader, sampler: EpochSampler, step: Callable[[dict], int], epochs: int,
                batch_size: int) -> Epochs:
    """Run a baseline's epochs with the library loop's timing rule. `step(batch)` trains on
    one batch and returns how many images it put through CLIP."""
    result = Epochs(seconds=[], steps=[], batch_size=batch_size)
    encoded = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        steps = 0
        for batch in loader:
            encoded += step(batch)
            steps += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        result.seconds.append(time.perf_counter() - started)
        result.steps.append(steps)
        result.images_encoded.append(encoded)
    return result


def loader_rate(source: "torch.utils.data.Dataset", transform: ImageTransform, *, batch_size: int, num_workers: int,
                device: torch.device, repeats: int, normalize: bool = True) -> float:
    """Images per second through a DataLoader over uint8 `source` items (decoded files or the
    pixel cache), each batch moved to `device` and (with `normalize`) normalised there, as
    training and extraction do; the median of `repeats` full passes. Worker start-up counts: the
    library's loaders are not persistent, so every epoch pays it."""
    loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = 0
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            if normalize:
                transform.normalize(batch)
            count += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)
