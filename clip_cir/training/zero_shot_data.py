"""What `clip-cir zero-shot` trains φ on, read before any model is built: the training images
(Pic2Word, SEARLE), captions (LinCIR, and SEARLE's concept words), the validation splits; and
the batches of row indices its steps take.

Images come from a folder of photos (`--gallery-dir`, `data.folder`), a file listing them
(`--image-list`), or else the images a benchmark's training triplets use (`--dataset`); captions
from `--captions FILE`, or else every caption of the benchmark's training triplets. A benchmark
given is also validated on (its validation split, `data.registry.validation_split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from clip_cir.config import ZERO_SHOT_IMAGE_METHODS, ZeroShotConfig
from clip_cir.data.folder import folder_gallery
from clip_cir.data.images import ImageCheck
from clip_cir.data.registry import load_data
from clip_cir.data.text_lists import read_caption_file, read_image_list, read_word_list
from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError
from clip_cir.training.datasets import TrainingSet, check_batch_fits
from clip_cir.training.keywords import concept_vocabulary

CONCEPT_LIMIT = 20_000
"""At most this many concept words from captions, the most frequent (SEARLE ranks the ~20k class
names of Open Images)."""


@dataclass
class MappingData:
    """φ's training data and validation splits; a method reads only its own kind of data."""

    image_paths: list[Path] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)
    """SEARLE's concept vocabulary (each image keeps its nearest `oti_top_k`)."""
    val_splits: list[CIRSplit] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Training items: images, or captions for a method that reads no image."""
        return len(self.image_paths) if self.image_paths else len(self.captions)


def split_captions(splits: Sequence[CIRSplit]) -> list[str]:
    """Every caption of the splits' queries, as annotated, each once in order."""
    return list(dict.fromkeys(c.strip() for split in splits for query in split.queries for c in query.captions
                              if c.strip()))


def load_mapping_data(config: ZeroShotConfig, images: ImageCheck) -> MappingData:
    """The data `config` names, checked to fill a batch; bad input is one line before any work."""
    data, method = config.data, config.method
    train_splits: list[CIRSplit] | None = None

    def training_splits(check: ImageCheck) -> list[CIRSplit]:
        nonlocal train_splits
        if train_splits is None:
            train_splits = load_data(data, "train", check)
        return train_splits

    out = MappingData()
    if method in ZERO_SHOT_IMAGE_METHODS:
        if data.gallery_dir is not None:
            out.image_paths = list(folder_gallery(data.gallery_dir, images).gallery.values())
        elif data.image_list is not None:
            out.image_paths = read_image_list(data.image_list, images)
        else:
            out.image_paths = TrainingSet.from_splits(training_splits(images)).image_paths
        check_batch_fits(config.training.batch_size, len(out.image_paths), "training images")
    if method == "lincir" or (method == "searle" and data.concepts is None):
        if data.captions is not None:
            out.captions = read_caption_file(data.captions, data.caption_column)
        else:  # only the annotations: LinCIR reads no image
            out.captions = split_captions(training_splits(ImageCheck(require_files=False)))
            if not out.captions:
                raise CIRError(f"{data.data_root}: the {data.dataset} training split has no captions")
    if method == "lincir":
        check_batch_fits(config.training.batch_size, len(out.captions), "training captions")
    if method == "searle":
        if data.concepts is not None:
            out.concepts = read_word_list(data.concepts, "concept list")
        else:
            out.concepts = concept_vocabulary(out.captions, limit=CONCEPT_LIMIT)
            if not out.concepts:
                raise CIRError(f"{data.captions or data.data_root}: the captions hold no content word to use as a "
                               f"concept; give --concepts FILE (one word a line)")
    if data.dataset is not None:
        out.val_splits = load_data(data, None, images)
    return out


class IndexBatches:
    """Batches of row indices into the training items (images or captions): a permutation drawn
    from (seed, epoch) only and sliced into global batches (the last, partial one dropped); each
    process takes its share of every batch, as stage 2's `FeatureBatches`. `draws` names
    per-row random choices drawn with the permutation ({name: how many values}), so a resumed
    run, another process count or gradient accumulation sees the same ones."""

    def __init__(self, size: int, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1,
                 draws: dict[str, int] | None = None):
        self.size, self.batch_size, self.seed, self.epoch = size, batch_size, seed, 0
        self.rank, self.processes, self.draws = process_index, num_processes, dict(draws or {})

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        drawn = {name: torch.randint(high, (self.size,), generator=generator) for name, high in self.draws.items()}
        share = self.batch_size // self.processes
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = slice(start + self.rank * share, start + (self.rank + 1) * share)
            yield {"index": order[rows], **{name: values[rows] for name, values in drawn.items()}}
