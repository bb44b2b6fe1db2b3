"""Training data shared by the stages: the training triplets, their datasets and samplers, and
stage 2's batches of precomputed features."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from clip_cir.config import DataConfig
from clip_cir.data.images import ImageCheck
from clip_cir.data.io import load_image
from clip_cir.data.registry import load_data
from clip_cir.data.types import CIRSplit, Query
from clip_cir.encoding.pixels import PixelArray
from clip_cir.errors import CIRError
from clip_cir.models.transforms import ImageTransform


@dataclass
class TrainingSet:
    """All training queries of a dataset (every FashionIQ category together) and their images."""

    queries: Sequence[Query]
    """A list, or the split's own `QueryTable` when there is one split (no Python object per triplet)."""
    image_names: list[str]
    image_paths: list[Path]

    @classmethod
    def from_splits(cls, splits: Sequence[CIRSplit]) -> "TrainingSet":
        """Only the images some triplet uses: the rest of a training split is never looked at."""
        images: dict[str, Path] = {}
        for split in splits:
            for query in split.queries:
                for name in (query.reference, query.target):
                    if name not in images:  # a file path is made once per image, not per use
                        images[name] = split.image_file(name)  # CSS's 2-D references are not gallery entries
        queries = splits[0].queries if len(splits) == 1 else [q for s in splits for q in s.queries]
        return cls(queries=queries, image_names=list(images),
                   image_paths=list(images.values()))

    @property
    def image_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.image_names)}

    def caption_table(self) -> tuple[list[str], torch.Tensor]:
        """Every training caption form, flattened, and each query's offset into that list:
        caption features of all forms are computed once when the text tower is frozen."""
        texts, offsets = [], []
        for query in self.queries:
            offsets.append(len(texts))
            texts.extend(query.train_captions)
        return texts, torch.tensor(offsets, dtype=torch.long)


class TripletDataset(Dataset):
    """Item `(epoch, i)` -> query i with the caption form drawn for that epoch, and the uint8
    reference/target pixels only when an image tower trains (from the pixel cache when there is
    one; the training step normalises them on its device)."""

    def __init__(self, data: TrainingSet, seed: int, transform: ImageTransform | None = None,
                 pixels: PixelArray | None = None):
        self.data, self.seed, self.transform, self.pixels = data, seed, transform, pixels
        self.index = data.image_index

    def __len__(self) -> int:
        return len(self.data.queries)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, i = item
        query = self.data.queries[i]
        form = choice_for(self.seed, epoch, i, len(query.train_captions))
        reference, target = self.index[query.reference], self.index[query.target]
        out = {"query": i, "form": form, "caption": query.train_captions[form],
               "reference": reference, "target": target}
        if self.transform is not None:
            out["reference_image"], out["target_image"] = self.image(reference), self.image(target)
        return out

    def image(self, index: int) -> torch.Tensor:
        if self.pixels is not None:
            return self.pixels[index]
        return self.transform.pixels(load_image(self.data.image_paths[index]))


def check_batch_fits(batch_size: int, available: int, what: str) -> None:
    """Every optimizer step takes a whole batch (the last, partial one is dropped): refuse a
    batch larger than the training data before any work."""
    if batch_size > available:
        raise CIRError(f"--batch-size {batch_size} is larger than the {available} {what}: give a --batch-size "
                       f"of at most {available}")


def training_and_validation(data: DataConfig, batch_size: int,
                            images: ImageCheck) -> tuple[TrainingSet, list[CIRSplit]]:
    """What both stages train and validate on: the training triplets (checked to fill a batch)
    and the validation splits of the benchmark `data` names."""
    training = TrainingSet.from_splits(load_data(data, "train", images))
    val_splits = load_data(data, None, images)  # `val`, or the benchmark's own validation split
    check_batch_fits(batch_size, len(training.queries), "training triplets")
    return training, val_splits


class FeatureBatches:
    """Stage 2's batches as tensor work: a permutation of query indices and the caption forms,
    drawn once per epoch and sliced, all on the device.

    Per-item Dataset/DataLoader work (a Python call, a dict and a collate per triplet) costs more
    than the Combiner's math at CIRR's 28k triplets. The permutation and forms come from a CPU
    generator seeded by (seed, epoch) only, so a resumed run draws the same batches on any device.
    Under DDP each rank takes its slice of every global batch (like Accelerate's split_batches).
    """

    def __init__(self, data: TrainingSet, batch_size: int, seed: int, device: torch.device | str = "cpu",
                 process_index: int = 0, num_processes: int = 1):
        index = data.image_index
        rows = [(index[q.reference], index[q.target], len(q.train_captions)) for q in data.queries]  # one pass
        columns = torch.tensor(rows, dtype=torch.long).reshape(-1, 3).T.contiguous().to(device)
        self.reference, self.target, self.forms = columns
        self.batch_size, self.seed, self.epoch, self.device = batch_size, seed, 0, device
        self.rank, self.processes = process_index, num_processes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reference) // self.batch_size  # the last, partial batch is dropped

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.reference), generator=generator).to(self.device)
        draws = torch.rand(len(self.reference), generator=generator).to(self.device)
        forms = (draws * self.forms[order]).long()  # uniform in [0, forms) for each query, in batch order
        share = self.batch_size // self.processes
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = slice(start + self.rank * share, start + (self.rank + 1) * share)
            query = order[rows]
            yield {"query": query, "form": forms[rows], "reference": self.reference[query],
                   "target": self.target[query]}


class EpochSampler(Sampler):
    """Yields `(epoch, index)` in a permutation that depends only on (seed, epoch).

    Passing the epoch with the index lets datasets make per-epoch random choices (FashionIQ's
    caption form) that a resumed run repeats exactly, in any worker process.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            order = range(self.size)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        return iter((self.epoch, i) for i in order)

    def __len__(self) -> int:
        return self.size


def choice_for(seed: int, epoch: int, index: int, n: int) -> int:
    """A deterministic uniform choice in [0, n) for one sample in one epoch."""
    return random.Random(f"{seed}:{epoch}:{index}").randrange(n) if n > 1 else 0
