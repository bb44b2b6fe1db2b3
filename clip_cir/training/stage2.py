"""Stage 2: train the Combiner on frozen CLIP features (`stage2/train_combiner.py`,
`clip-cir train-combiner`).

CLIP is frozen, so every feature the Combiner ever sees — reference and target images, all
caption forms, the validation gallery and captions — is computed once, up front, through the
feature cache (a second run on the same CLIP encodes nothing). An epoch is Combiner work only.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir.config import Stage2Config
from clip_cir.data.images import ImageCheck
from clip_cir.data.types import CIRSplit
from clip_cir.encoding.split_features import (
    EncodeOptions,
    SplitFeatures,
    encode_captions,
    encode_image_files,
    split_features,
)
from clip_cir.evaluation.evaluate import metrics_from_features
from clip_cir.evaluation.metrics import selection_scores
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.combiner import Combiner
from clip_cir.models.towers import set_memory_format
from clip_cir.training.datasets import FeatureBatches, TrainingSet, training_and_validation
from clip_cir.training.loop import Float32Forward, Selection, Stage, TrainedRun
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import TrainingSetup
from clip_cir.training.setup import run_training

log = logging.getLogger("clip_cir")


def feature_forward(combiner: nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                    offsets: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's forward on a batch of indices into precomputed CLIP features: (the Combiner's
    query from the reference image and the drawn caption form, the normalised target); the loss
    is `batch_contrastive_loss` of the pair. A function of its own so that benchmarks time
    exactly this step."""
    reference = image_features[batch["reference"]]
    text = text_features[offsets[batch["query"]] + batch["form"]]
    return combiner(reference, text), F.normalize(image_features[batch["target"]], dim=-1)


class CombinerTraining(Stage):
    """Stage 2: the Combiner learns to fuse frozen CLIP features of the reference image and the
    caption into a query that finds its target among the batch's (`batch_contrastive_loss`).
    Every CLIP feature is precomputed; validation ranks the precomputed validation features, and
    the best checkpoint is kept by three selection scores."""

    def __init__(self, combiner: Combiner, prepared: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: FeatureBatches, image_features: torch.Tensor, text_features: torch.Tensor,
                 offsets: torch.Tensor, val_features: Sequence[SplitFeatures], clip: LoadedCLIP):
        super().__init__(prepared, optimizer, batches, Selection(keys=("score", "harmonic_mean", "geometric_mean")))
        self.combiner, self.clip = combiner, clip
        self.image_features, self.text_features, self.offsets = image_features, text_features, offsets
        self.val_features = val_features

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_forward(self.model, self.image_features, self.text_features, self.offsets, batch)

    def loss(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return batch_contrastive_loss(*features)

    def train_mode(self) -> None:
        self.combiner.train()

    def validate(self, epoch: int) -> dict[str, float]:
        self.combiner.eval()
        metrics = metrics_from_features(self.val_features, Float32Forward(self.combiner))
        return {**metrics, **selection_scores(metrics)}

    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        meta = {"kind": "combiner", "stage": "stage2", **self.combiner.dims, "clip_model_name": self.clip.model_name,
                "clip_source": self.clip.source, "epoch": epoch,
                "metrics": {k: round(v, 6) for k, v in metrics.items()}}
        return {"combiner": (self.combiner, meta)}

    @staticmethod
    def load(config: Stage2Config, images: ImageCheck) -> tuple[TrainingSet, list[CIRSplit]]:
        """(the training triplets, the validation splits)."""
        return training_and_validation(config.data, config.training.batch_size, images)

    @classmethod
    def from_setup(cls, setup: TrainingSetup[tuple[TrainingSet, list[CIRSplit]]]) -> "CombinerTraining":
        config: Stage2Config = setup.config
        (data, val_splits), clip, accelerator, device = setup.data, setup.clip, setup.accelerator, setup.device
        dim = clip.embed_dim  # the Combiner is built first, so its init never depends on cache hits
        combiner = Combiner(dim, config.projection_dim or 4 * dim, config.hidden_dim or 8 * dim)
        clip.model.to(device).eval().requires_grad_(False)
        set_memory_format(clip.model, device, config.device.channels_last)
        encode = EncodeOptions.for_accelerator(accelerator, setup.transform, setup.feature_cache(),
                                               progress=setup.progress, num_workers=setup.workers,
                                               pixel_cache=setup.pixel_cache(repeated=False))

        # Every CLIP feature, once.
        image_features = encode_image_files(clip, data.image_paths, encode, "training image features").to(device)
        texts, offsets = data.caption_table()
        text_features = encode_captions(clip, texts, encode, "training caption features").to(device)
        offsets = offsets.to(device)
        val_features = [split_features(clip, split, encode.full_precision()) for split in val_splits]
        clip.model.cpu()  # frozen and fully encoded: free the accelerator memory for the Combiner

        combiner = combiner.to(device)
        batches = FeatureBatches(data, config.training.batch_size, config.training.seed, device,
                                 accelerator.process_index, accelerator.num_processes)
        optimizer = make_optimizer(torch.optim.Adam, combiner.parameters(), lr=config.training.lr,
                                   weight_decay=config.training.weight_decay)
        prepared, optimizer = accelerator.prepare(combiner, optimizer)
        return cls(combiner, prepared, optimizer, batches, image_features, text_features, offsets, val_features,
                   clip)


def run(config: Stage2Config) -> TrainedRun:
    """Train stage 2 from its settings (what `clip-cir train-combiner` and `clip_cir.train_combiner` run)."""
    return run_training(CombinerTraining, config)
