"""Stage 1: task-oriented CLIP fine-tuning (`stage1/finetune.py`, `clip-cir finetune`).

The query is norm(f_I(reference) + f_T(caption)), the key norm(f_I(target)); a fixed-scale
(100) cross-entropy over the batch pulls each query to its target. `--encoder` picks which
towers train. A frozen tower's features are computed once, before the first epoch (through
the feature cache), so `--encoder text` encodes no image while it trains.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from clip_cir.config import Stage1Config
from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit
from clip_cir.encoding.split_features import EncodeOptions, encode_captions, encode_image_files
from clip_cir.evaluation.evaluate import evaluate
from clip_cir.evaluation.metrics import selection_scores
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.combiner import element_wise_sum
from clip_cir.models.towers import set_memory_format, tower_input
from clip_cir.models.transforms import ImageTransform
from clip_cir.training.datasets import EpochSampler, TrainingSet, TripletDataset, training_and_validation
from clip_cir.training.encoders import ClipEncoder
from clip_cir.training.loop import Stage, TrainedRun
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import TrainingSetup, clip_metadata
from clip_cir.training.setup import run_training

log = logging.getLogger("clip_cir")


def query_and_target(reference: torch.Tensor, text: torch.Tensor,
                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features of a batch -> (norm(f_I(r) + f_T(t)), norm(f_I(g))), each row on its own."""
    return element_wise_sum(reference, text), F.normalize(target, dim=-1)


class CLIPFineTuning(Stage):
    """Stage 1: the towers `--encoder` names train so that each triplet's query
    norm(f_I(reference) + f_T(caption)) finds its target norm(f_I(target)) among the batch's
    (`batch_contrastive_loss`). A frozen tower's features come precomputed; validation is the
    retrieval metrics with the element-wise sum."""

    def __init__(self, clip: LoadedCLIP, encoder: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 transform: ImageTransform, *, device: torch.device, towers: str,
                 image_features: torch.Tensor | None, text_features: torch.Tensor | None,
                 text_offsets: torch.Tensor | None, val_splits: Sequence[CIRSplit], validation_encode: EncodeOptions,
                 accum_steps: int, channels_last: bool = False, length_multiple: int = 1):
        super().__init__(encoder, optimizer, loader, accum_steps=accum_steps)
        self.clip, self.transform, self.towers = clip, transform, towers
        self.length_multiple = length_multiple
        """Caption batches are padded to a multiple of this many tokens (`ClipEncoder.length_multiple`)."""
        self.train_text, self.train_image = towers in ("text", "both"), towers in ("image", "both")
        self.device, self.channels_last = device, channels_last
        self.image_features, self.text_features, self.text_offsets = image_features, text_features, text_offsets
        self.val_splits, self.validation_encode = val_splits, validation_encode

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, target) per triplet: norm(f_I(r) + f_T(t)) and norm(f_I(target))."""
        tokens = None
        if self.train_text:
            tokens = self.clip.tokenize(batch["caption"], remember=True, length_multiple=self.length_multiple)
            tokens = tokens.to(self.device, non_blocking=True)
        pixels = torch.cat([batch["reference_image"], batch["target_image"]]) if self.train_image else None
        images = self.transform.normalize(tower_input(pixels, self.channels_last)) if self.train_image else None
        encoded_images, encoded_text = self.model(images=images, tokens=tokens)
        if self.train_image:
            reference, target = encoded_images.chunk(2)
        else:
            reference, target = self.image_features[batch["reference"]], self.image_features[batch["target"]]
        if self.train_text:
            text = encoded_text
        else:
            text = self.text_features[self.text_offsets[batch["query"]] + batch["form"]]
        return query_and_target(reference, text, target)

    def loss(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return batch_contrastive_loss(*features)

    def train_mode(self) -> None:
        # As the published code: the whole CLIP stays in eval mode while its parameters train, so a
        # ResNet tower's BatchNorm keeps its pretrained running statistics (and normalises with them,
        # the same on every rank: nothing to synchronise under DDP) and no dropout is active.
        self.clip.model.eval()

    def validate(self, epoch: int) -> dict[str, float]:
        metrics = evaluate(self.clip, self.val_splits, element_wise_sum, self.validation_encode)
        return {**metrics, **selection_scores(metrics)}

    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        return {"clip": (self.clip.model, clip_metadata(self.clip, "stage1", epoch, metrics, encoder=self.towers))}

    @staticmethod
    def load(config: Stage1Config, images: ImageCheck) -> tuple[TrainingSet, list[CIRSplit]]:
        """(the training triplets, the validation splits)."""
        return training_and_validation(config.data, config.training.batch_size, images)

    @classmethod
    def from_setup(cls, setup: TrainingSetup[tuple[TrainingSet, list[CIRSplit]]]) -> "CLIPFineTuning":
        config: Stage1Config = setup.config
        (data, val_splits), clip, transform, accelerator = setup.data, setup.clip, setup.transform, setup.accelerator
        train_text, train_image = config.encoder in ("text", "both"), config.encoder in ("image", "both")
        device, workers, progress = setup.device, setup.workers, setup.progress
        model = clip.model.to(device)
        # Before the optimizer and DDP see the model.
        channels_last = set_memory_format(model, device, config.device.channels_last)
        for name, param in model.named_parameters():
            param.requires_grad = ((train_image if name.startswith("visual.") else train_text)
                                   and not name.startswith(("logit_", "text_decoder.")))  # not in the loss
        if config.grad_checkpointing:
            clip.enable_grad_checkpointing()

        # Frozen towers: their training features once, before any step.
        encode = EncodeOptions.for_accelerator(accelerator, transform, setup.feature_cache(), num_workers=workers,
                                               progress=progress, pixel_cache=setup.pixel_cache(repeated=False))
        image_features = text_features = text_offsets = None
        if not train_image:
            image_features = encode_image_files(clip, data.image_paths, encode, "training image features").to(device)
        if not train_text:
            texts, text_offsets = data.caption_table()
            text_features = encode_captions(clip, texts, encode, "training caption features").to(device)
            text_offsets = text_offsets.to(device)

        pixels = None
        if train_image:  # every epoch needs the training images again: decode them once
            training_pixels = setup.pixel_cache(repeated=True)
            if training_pixels is not None:
                with accelerator.main_process_first():  # one process writes, the others read
                    pixels = training_pixels.get(data.image_paths, transform, num_workers=workers, progress=progress,
                                                 desc="training images (pixels)")
        seed = config.training.seed
        dataset = TripletDataset(data, seed, transform if train_image else None, pixels)
        sampler = EpochSampler(len(dataset), seed)
        # Without an image tower to feed, items are indices and captions: no workers. With the pixel
        # cache, a memory-map read: at most two workers, kept across epochs, read (and on a GPU pin)
        # the next batches while the device computes this one; none where the CPU does the math.
        reads = min(workers, 2) if pixels is not None else workers
        loader = DataLoader(dataset, batch_size=config.training.batch_size, sampler=sampler,
                            num_workers=reads if train_image else 0, drop_last=True,
                            pin_memory=device.type == "cuda" and train_image,
                            persistent_workers=train_image and pixels is not None and reads > 0)
        optimizer = make_optimizer(torch.optim.AdamW, [p for p in model.parameters() if p.requires_grad],
                                   lr=config.training.lr, betas=(0.9, 0.999), eps=1e-7,
                                   weight_decay=config.training.weight_decay)
        encoder = ClipEncoder(model, compile=config.towers.compile)
        length_multiple = encoder.length_multiple
        encoder, optimizer, loader = accelerator.prepare(encoder, optimizer, loader)

        validation_encode = encode.full_precision().on_this_process().without_cache(images=train_image,
                                                                                    texts=train_text)
        if train_image:  # the gallery is encoded again at every validation
            validation_encode = replace(validation_encode, pixel_cache=setup.pixel_cache(repeated=True))
        return cls(clip, encoder, optimizer, loader, transform, device=device, towers=config.encoder,
                   image_features=image_features, text_features=text_features, text_offsets=text_offsets,
                   val_splits=val_splits, validation_encode=validation_encode,
                   accum_steps=config.accum_steps, channels_last=channels_last,
                   length_multiple=length_multiple)


def run(config: Stage1Config) -> TrainedRun:
    """Train stage 1 from its settings (what `clip-cir finetune` and `clip_cir.finetune` run)."""
    return run_training(CLIPFineTuning, config)
