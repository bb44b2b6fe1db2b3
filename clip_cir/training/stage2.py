"""Stage 2: train the Combiner on frozen CLIP features (`stage2/train_combiner.py`,
`clip-cir train-combiner`).

CLIP is frozen, so every feature the Combiner ever sees — reference and target images, all
caption forms, the validation gallery and captions — is computed once, up front, through the
feature cache (a second run on the same CLIP encodes nothing). An epoch is Combiner work only.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clip_cir import params as opt
from clip_cir.encoding.encode import (
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
from clip_cir.params import check_training_args, program_main
from clip_cir.training.datasets import FeatureBatches, TrainingSet
from clip_cir.training.loop import Float32Forward, Selection, Stage, check_batch_fits, train
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import report_skipped_images, seed_everything, start_run

log = logging.getLogger("clip_cir")


def build_parser(prog: str = "stage2/train_combiner.py") -> argparse.ArgumentParser:
    """The program's parser (defined in `clip_cir.params`); benchmarks read its defaults."""
    return opt.stage2_parser(prog)


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


def run(args: argparse.Namespace) -> dict[str, float]:
    check_training_args(args)
    opt.check_positive(args, ["projection_dim", "hidden_dim"])
    images = opt.image_check(args, training=True)
    train_splits = opt.load_data(args, "train", images)
    val_splits = opt.load_data(args, "val", images)
    data = TrainingSet.from_splits(train_splits)
    check_batch_fits(args.batch_size, len(data.queries), "training triplets")
    seed_everything(args.seed)  # before building the model: a random init is part of the run
    clip = opt.load_model(args)
    dim = clip.embed_dim  # the Combiner is built now, so its init never depends on cache hits
    combiner = Combiner(dim, args.projection_dim or 4 * dim, args.hidden_dim or 8 * dim)
    transform = opt.transform_for(clip, args.transform, args.target_ratio)
    accelerator, run_dir = start_run(args, "stage2")
    report_skipped_images(run_dir, images)
    device = accelerator.device
    clip.model.to(device).eval().requires_grad_(False)
    set_memory_format(clip.model, device, args.channels_last)
    cache = opt.feature_cache(args)
    progress = not args.no_progress and accelerator.is_main_process
    encode = EncodeOptions.for_accelerator(accelerator, transform, cache, progress=progress,
                                           num_workers=opt.num_workers(args, device.type == "cuda",
                                                                       accelerator.num_processes),
                                           pixel_cache=opt.pixel_cache(args, repeated=False))

    # Every CLIP feature, once.
    image_features = encode_image_files(clip, data.image_paths, encode, "training image features").to(device)
    texts, offsets = data.caption_table()
    text_features = encode_captions(clip, texts, encode, "training caption features").to(device)
    offsets = offsets.to(device)
    val_features = [split_features(clip, split, encode.full_precision()) for split in val_splits]
    clip.model.cpu()  # frozen and fully encoded: free the accelerator memory for the Combiner

    combiner = combiner.to(device)
    batches = FeatureBatches(data, args.batch_size, args.seed, device, accelerator.process_index,
                             accelerator.num_processes)
    optimizer = make_optimizer(torch.optim.Adam, combiner.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    prepared, optimizer = accelerator.prepare(combiner, optimizer)
    stage = CombinerTraining(combiner, prepared, optimizer, batches, image_features, text_features, offsets,
                             val_features, clip)
    return train(accelerator, run_dir, stage, args, progress)


def main(argv: list[str] | None = None, prog: str = "stage2/train_combiner.py") -> None:
    program_main(partial(opt.stage2_parser, prog), run, argv, prog)
