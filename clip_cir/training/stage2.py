"""Stage 2: train the Combiner on frozen CLIP features (`stage2/train_combiner.py`,
`clip-cir train-combiner`).

CLIP is frozen, so every feature the Combiner ever sees — reference and target images, all
caption forms, the validation gallery and captions — is computed once, up front, through the
feature cache (a second run on the same CLIP encodes nothing). An epoch is Combiner work only.
"""

from __future__ import annotations

import argparse
import logging
from typing import Callable

import torch
import torch.nn.functional as F

from clip_cir import params as opt
from clip_cir.encoding.encode import (
    EncodeOptions,
    encode_captions,
    encode_image_files,
    split_features,
)
from clip_cir.evaluation.evaluate import metrics_from_features
from clip_cir.evaluation.metrics import selection_scores
from clip_cir.models.combiner import Combiner
from clip_cir.models.towers import set_memory_format
from clip_cir.params import add_training_args, check_training_args, program_main
from clip_cir.training.datasets import FeatureBatches, TrainingSet
from clip_cir.training.loop import Float32Forward, Loop, Selection, train
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import report_skipped_images, seed_everything, start_run

log = logging.getLogger("clip_cir")


def build_parser(prog: str = "stage2/train_combiner.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Stage 2 of the method: train a Combiner network on frozen CLIP features "
                               "(typically the stage-1 CLIP: --pretrained STAGE1_RUN_DIR). Run with "
                               "`accelerate launch` or plain python.")
    opt.add_data_args(parser, split=False)
    opt.add_model_args(parser)
    parser.add_argument("--projection-dim", type=int, default=None,
                        help="Combiner projection size (default: 4x the CLIP embedding size; 2560 for RN50x4)")
    parser.add_argument("--hidden-dim", type=int, default=None,
                        help="Combiner hidden size (default: 8x the CLIP embedding size; 5120 for RN50x4)")
    opt.add_transform_args(parser)
    add_training_args(parser, epochs=300, batch_size=4096, lr=2e-5, weight_decay=0.0, validation_frequency=3,
                      name="stage2")
    return parser


def feature_forward(combiner: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                    offsets: torch.Tensor) -> Callable[[dict], tuple[torch.Tensor, torch.Tensor]]:
    """Stage 2's forward on a batch of indices into precomputed CLIP features: (the Combiner's
    query from the reference image and the drawn caption form, the normalised target); the loss
    is `batch_contrastive_loss` of the pair. A function of its own so that benchmarks time
    exactly this step."""
    def forward(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        reference = image_features[batch["reference"]]
        text = text_features[offsets[batch["query"]] + batch["form"]]
        return combiner(reference, text), F.normalize(image_features[batch["target"]], dim=-1)

    return forward


def run(args: argparse.Namespace) -> dict[str, float]:
    check_training_args(args)
    opt.check_positive(args, ["projection_dim", "hidden_dim"])
    images = opt.image_check(args, training=True)
    train_splits = opt.load_data(args, "train", images)
    val_splits = opt.load_data(args, "val", images)
    data = TrainingSet.from_splits(train_splits)
    if len(data.queries) < args.batch_size:
        log.info("--batch-size %d exceeds the %d training triplets; using %d", args.batch_size,
                 len(data.queries), len(data.queries))
        args.batch_size = len(data.queries)
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

    forward = feature_forward(prepared, image_features, text_features, offsets)

    def validate(epoch: int) -> dict[str, float]:
        combiner.eval()
        metrics = metrics_from_features(val_features, Float32Forward(combiner))
        return {**metrics, **selection_scores(metrics)}

    def saved_modules(epoch: int, metrics: dict) -> dict:
        meta = {"kind": "combiner", "stage": "stage2", **combiner.dims, "clip_model_name": clip.model_name,
                "clip_source": clip.source, "epoch": epoch, "metrics": {k: round(v, 6) for k, v in metrics.items()}}
        return {"combiner": (combiner, meta)}

    loop = Loop(model=prepared, optimizer=optimizer, loader=batches, forward=forward,
                loss=lambda features: batch_contrastive_loss(*features),
                validate=validate, saved_modules=saved_modules, train_mode=combiner.train,
                selection=Selection(keys=("score", "harmonic_mean", "geometric_mean")))
    return train(accelerator, run_dir, loop, args, progress)


def main(argv: list[str] | None = None, prog: str = "stage2/train_combiner.py") -> None:
    program_main(build_parser(prog), run, argv, prog)
