"""`clip-cir pretrain`: contrastive image-caption (re)training of a CLIP on a CSV of captions.

The method starts from a pretrained CLIP; on the synthetic world there is none, and stage 1
from random weights barely learns, so this gives the tiny model its "pretrained CLIP". On real
data it is domain-adaptive continued pretraining on a catalogue's captions before stage 1.
It reads open_clip's CSV format (`--csv-img-key`, `--csv-caption-key`, `--csv-separator`), uses
open_clip's CLIP loss with a learned temperature, and holds out captions to measure the loss.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Mapping

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clip_cir.config import PretrainConfig
from clip_cir.data.images import ImageCheck
from clip_cir.data.io import load_image
from clip_cir.encoding.pixels import PixelArray
from clip_cir.errors import CIRError
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.towers import set_memory_format, tower_input
from clip_cir.models.transforms import ImageTransform
from clip_cir.training.datasets import EpochSampler, check_batch_fits
from clip_cir.training.encoders import ClipEncoder
from clip_cir.training.loop import Stage, TrainedRun
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import Run, TrainingSetup, clip_metadata
from clip_cir.training.setup import run_training

log = logging.getLogger("clip_cir")


def open_clip_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's training program: no weight decay on gains, biases, norms and the temperature."""
    def exclude(name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay}]


class ImageCaptionEncoder(ClipEncoder):
    """Normalised image and caption features plus the learnt temperature, one row per pair.

    The temperature is a trained parameter: computed inside the (DDP-wrapped) forward, DDP sees it
    used, and as per-example rows it travels through gradient accumulation like any feature
    (the loss reads row 0, so its gradient enters once)."""

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_features, text_features = super().forward(images=images, tokens=tokens)
        scale = self.clip.logit_scale.exp().clamp(max=100)
        return (F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1),
                scale.expand(image_features.shape[0]))


def read_caption_csv(path: Path, img_key: str, caption_key: str, separator: str) -> list[tuple[Path, str]]:
    """(image, caption) rows; relative image paths are relative to the CSV's folder."""
    if not path.is_file():
        raise CIRError(f"{path}: caption CSV not found")
    if len(separator) != 1:
        raise CIRError(f"--csv-separator must be one character, got {separator!r}")
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=separator)
            for key in (img_key, caption_key):
                if key not in (reader.fieldnames or []):
                    raise CIRError(f"{path}: no column '{key}' (columns: {', '.join(reader.fieldnames or [])}; "
                                   f"check --csv-separator)")
            for line, row in enumerate(reader, start=2):
                image, caption = row[img_key], row[caption_key]
                if not image or not caption:
                    raise CIRError(f"{path}: line {line}: empty '{img_key}' or '{caption_key}'")
                rows.append((Path(image) if Path(image).is_absolute() else path.parent / image, caption))
    except (csv.Error, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: not a readable CSV ({e})") from None
    if not rows:
        raise CIRError(f"{path}: no rows")
    return rows


class CaptionedImages(Dataset):
    """Item `(epoch, i)` -> row i's uint8 pixels (pixel cache or decoded) and caption."""

    def __init__(self, rows: list[tuple[Path, str]], transform: ImageTransform, pixels: PixelArray | None = None):
        self.rows, self.transform, self.pixels = rows, transform, pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        _, i = item
        path, caption = self.rows[i]
        image = self.pixels[i] if self.pixels is not None else self.transform.pixels(load_image(path))
        return {"image": image, "caption": caption}


class ImageCaptionPretraining(Stage):
    """CLIP's own objective: open_clip's symmetric contrastive loss between a batch's images and
    their captions, with the learnt temperature. Validation is the same loss on held-out pairs
    (`score` is its negative: lower loss, better checkpoint)."""

    def __init__(self, clip: LoadedCLIP, encoder: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 val_loader: DataLoader, transform: ImageTransform, *, device: torch.device, rank: int,
                 world_size: int, accum_steps: int, channels_last: bool = False, length_multiple: int = 1):
        super().__init__(encoder, optimizer, loader, accum_steps=accum_steps)
        self.length_multiple = length_multiple
        """Caption batches are padded to a multiple of this many tokens (`ClipEncoder.length_multiple`)."""
        self.clip, self.val_loader, self.transform, self.device = clip, val_loader, transform, device
        self.channels_last = channels_last
        self.clip_loss = open_clip.ClipLoss(gather_with_grad=True, rank=rank, world_size=world_size)
        self.local_clip_loss = open_clip.ClipLoss()  # validation runs on the main process alone: no collectives

    def encode(self, encoder: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image features, caption features, temperature rows) of a batch through `encoder`."""
        return encoder(images=self.transform.normalize(tower_input(batch["image"].to(self.device), self.channels_last)),
                       tokens=self.clip.tokenize(batch["caption"], remember=True,
                                                 length_multiple=self.length_multiple).to(self.device))

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode(self.model, batch)

    def loss(self, features: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             clip_loss: open_clip.ClipLoss | None = None) -> torch.Tensor:
        image_features, text_features, scale = features
        return (self.clip_loss if clip_loss is None else clip_loss)(image_features, text_features, scale[0])

    def train_mode(self) -> None:
        self.clip.model.train()

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        self.clip.model.eval()
        local = ImageCaptionEncoder(self.clip.model)
        losses = [self.loss(self.encode(local, b), self.local_clip_loss).item() for b in self.val_loader]
        val_loss = sum(losses) / len(losses)
        return {"val_loss": val_loss, "score": -val_loss}

    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        return {"clip": (self.clip.model, clip_metadata(self.clip, "pretrain", epoch, metrics))}

    def before_training(self, run: Run, resumed: bool) -> None:
        """The held-out loss of the CLIP it starts from, as epoch 0 of validation_metrics.csv."""
        if resumed or not run.is_main:
            return
        before = self.validate(-1)["val_loss"]
        log.info("held-out contrastive loss before training: %.4f", before)
        run.append_csv("validation_metrics.csv", {"epoch": 0, "val_loss": before, "score": -before})

    @staticmethod
    def load(config: PretrainConfig, images: ImageCheck) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
        """(training rows, held-out rows): the CSV's rows with a usable image, split by the seed."""
        data = config.data
        rows = read_caption_csv(data.train_data, data.csv_img_key, data.csv_caption_key, data.csv_separator)
        usable = images.locate({str(image): [image] for image, _ in rows}, data.train_data)
        kept = [(image, caption) for image, caption in rows if str(image) in usable]
        images.total_queries["captions"], images.dropped_queries["captions"] = len(rows), len(rows) - len(kept)
        if not kept:
            raise CIRError(f"{data.train_data}: no row has a usable image")
        generator = torch.Generator().manual_seed(config.training.seed)
        order = torch.randperm(len(kept), generator=generator).tolist()
        n_val = max(1, int(len(kept) * data.val_fraction))
        val_rows, train_rows = [kept[i] for i in order[:n_val]], [kept[i] for i in order[n_val:]]
        check_batch_fits(config.training.batch_size, len(train_rows), "training rows")
        return train_rows, val_rows

    @classmethod
    def from_setup(cls, setup: TrainingSetup) -> "ImageCaptionPretraining":
        config: PretrainConfig = setup.config
        (train_rows, val_rows), clip, transform = setup.data, setup.clip, setup.transform
        accelerator = setup.accelerator
        device, workers, progress = setup.device, setup.workers, setup.progress
        model = clip.model.to(device)
        # Before the optimizer and DDP see the model.
        channels_last = set_memory_format(model, device, config.device.channels_last)
        for name, param in model.named_parameters():
            # SigLIP's logit bias and CoCa's caption decoder take no part in CLIP's loss: trainable, they
            # would stop DDP, which needs every parameter it trains to reach the loss.
            if name.startswith(("logit_bias", "text_decoder.")):
                param.requires_grad = False
        cache = setup.pixel_cache(repeated=True)  # every epoch decodes every image again otherwise
        pixels = {}
        for name, part in (("train", train_rows), ("held-out", val_rows)):
            pixels[name] = None
            if cache is not None:
                with accelerator.main_process_first():
                    pixels[name] = cache.get([p for p, _ in part], transform, num_workers=workers, progress=progress,
                                             desc=f"{name} images (pixels)")
        training, seed = config.training, config.training.seed
        loader = DataLoader(CaptionedImages(train_rows, transform, pixels["train"]), batch_size=training.batch_size,
                            sampler=EpochSampler(len(train_rows), seed),
                            num_workers=0 if pixels["train"] else workers, drop_last=True)
        val_loader = DataLoader(CaptionedImages(val_rows, transform, pixels["held-out"]),
                                batch_size=min(training.batch_size, len(val_rows)),
                                sampler=EpochSampler(len(val_rows), seed, shuffle=False),
                                num_workers=0 if pixels["held-out"] else workers)
        optimizer = make_optimizer(torch.optim.AdamW, open_clip_param_groups(model, training.weight_decay),
                                   lr=training.lr, betas=(0.9, 0.98), eps=1e-6)
        # open_clip keeps the temperature in [0, ln 100] by clamping the parameter after every step.
        optimizer.register_step_post_hook(lambda *_: model.logit_scale.data.clamp_(0, math.log(100)))
        encoder = ImageCaptionEncoder(model, compile=config.towers.compile)
        length_multiple = encoder.length_multiple
        encoder, optimizer, loader = accelerator.prepare(encoder, optimizer, loader)
        return cls(clip, encoder, optimizer, loader, val_loader, transform, device=device,
                   rank=accelerator.process_index, world_size=accelerator.num_processes,
                   accum_steps=config.accum_steps, channels_last=channels_last, length_multiple=length_multiple)


def run(config: PretrainConfig) -> TrainedRun:
    """Pretrain a CLIP from its settings (what `clip-cir pretrain` and `clip_cir.pretrain` run)."""
    return run_training(ImageCaptionPretraining, config)
