"""Stage 1: task-oriented CLIP fine-tuning (`stage1/finetune.py`, `clip-cir finetune`).

The query is norm(f_I(reference) + f_T(caption)), the key norm(f_I(target)); a fixed-scale
(100) cross-entropy over the batch pulls each query to its target. `--encoder` picks which
towers train. A frozen tower's features are computed once, before the first epoch (through
the feature cache), so `--encoder text` encodes no image while it trains.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clip_cir import params as opt
from clip_cir.encoding.encode import EncodeOptions, encode_captions, encode_image_files
from clip_cir.errors import CIRError
from clip_cir.evaluation.evaluate import evaluate
from clip_cir.evaluation.metrics import selection_scores
from clip_cir.models.combiner import element_wise_sum
from clip_cir.models.towers import set_memory_format, tower_input
from clip_cir.params import (
    add_accum_arg,
    add_training_args,
    check_training_args,
    program_main,
)
from clip_cir.training.datasets import (
    ClipEncoder,
    EpochSampler,
    TrainingSet,
    TripletDataset,
)
from clip_cir.training.loop import Loop, train
from clip_cir.training.losses import batch_contrastive_loss
from clip_cir.training.optim import make_optimizer
from clip_cir.training.run import (
    clip_metadata,
    report_skipped_images,
    seed_everything,
    start_run,
)

log = logging.getLogger("clip_cir")
ENCODERS = ("text", "image", "both")


def build_parser(prog: str = "stage1/finetune.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Stage 1 of the method: fine-tune CLIP's text and/or image encoder on composed "
                               "queries (element-wise sum of image and text features, batch contrastive loss). "
                               "Run with `accelerate launch` for GPUs, mixed precision and DDP, or plain python.")
    opt.add_data_args(parser, split=False)
    opt.add_model_args(parser)
    parser.add_argument("--encoder", choices=ENCODERS, default="text",
                        help="which towers train; the others are frozen and their features computed once "
                             "(default: %(default)s, as in the CVPR-W paper; 'both' is the journal version)")
    opt.add_transform_args(parser)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="open_clip gradient checkpointing: saves memory on transformer towers; a no-op on "
                             "ResNet image towers (e.g. RN50x4's), which open_clip does not checkpoint")
    add_training_args(parser, epochs=100, batch_size=128, lr=2e-6, weight_decay=0.01, validation_frequency=1,
                      name="stage1")
    add_accum_arg(parser.add_argument_group("memory"))
    return parser


def query_and_target(reference: torch.Tensor, text: torch.Tensor,
                     target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features of a batch -> (norm(f_I(r) + f_T(t)), norm(f_I(g))), each row on its own."""
    return element_wise_sum(reference, text), F.normalize(target, dim=-1)


def run(args: argparse.Namespace) -> dict[str, float]:
    check_training_args(args)
    images = opt.image_check(args, training=True)
    train_splits = opt.load_data(args, "train", images)
    val_splits = opt.load_data(args, "val", images)
    data = TrainingSet.from_splits(train_splits)
    if len(data.queries) < args.batch_size:
        raise CIRError(f"--batch-size {args.batch_size} is larger than the {len(data.queries)} training triplets")
    seed_everything(args.seed)  # before building the model: a random init is part of the run
    clip = opt.load_model(args)
    transform = opt.transform_for(clip, args.transform, args.target_ratio)
    train_text, train_image = args.encoder in ("text", "both"), args.encoder in ("image", "both")
    accelerator, run_dir = start_run(args, "stage1")
    report_skipped_images(run_dir, images)
    cache = opt.feature_cache(args)
    device = accelerator.device
    model = clip.model.to(device)
    channels_last = set_memory_format(model, device, args.channels_last)  # before the optimizer and DDP see it
    for name, param in model.named_parameters():
        param.requires_grad = (train_image if name.startswith("visual.") else train_text) and name != "logit_scale"
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    progress = not args.no_progress and accelerator.is_main_process

    # Frozen towers: their training features once, before any step.
    workers = opt.num_workers(args, accelerator.device.type == "cuda", accelerator.num_processes)
    encode = EncodeOptions.for_accelerator(accelerator, transform, cache, num_workers=workers, progress=progress,
                                           pixel_cache=opt.pixel_cache(args, repeated=False))
    image_features = text_features = text_offsets = None
    if not train_image:
        image_features = encode_image_files(clip, data.image_paths, encode, "training image features").to(device)
    if not train_text:
        texts, text_offsets = data.caption_table()
        text_features = encode_captions(clip, texts, encode, "training caption features").to(device)
        text_offsets = text_offsets.to(device)

    pixels = None
    if train_image:  # every epoch needs the training images again: decode them once
        training_pixels = opt.pixel_cache(args, repeated=True)
        if training_pixels is not None:
            with accelerator.main_process_first():  # one process writes, the others read
                pixels = training_pixels.get(data.image_paths, transform, num_workers=workers, progress=progress,
                                             desc="training images (pixels)")
    dataset = TripletDataset(data, args.seed, transform if train_image else None, pixels)
    sampler = EpochSampler(len(dataset), args.seed)
    # Without an image tower to feed, items are indices and captions: no workers. With the pixel
    # cache, a memory-map read: at most two workers, kept across epochs, read (and on a GPU pin)
    # the next batches while the device computes this one; none where the CPU does the math.
    reads = min(workers, 2) if pixels is not None else workers
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=reads if train_image else 0,
                        drop_last=True, pin_memory=device.type == "cuda" and train_image,
                        persistent_workers=train_image and pixels is not None and reads > 0)
    optimizer = make_optimizer(torch.optim.AdamW, [p for p in model.parameters() if p.requires_grad], lr=args.lr,
                               betas=(0.9, 0.999), eps=1e-7, weight_decay=args.weight_decay)
    encoder, optimizer, loader = accelerator.prepare(ClipEncoder(model), optimizer, loader)

    def forward(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, target) per triplet: norm(f_I(r) + f_T(t)) and norm(f_I(target))."""
        tokens = clip.tokenize(batch["caption"], remember=True).to(device, non_blocking=True) if train_text else None
        images = transform.normalize(tower_input(torch.cat([batch["reference_image"], batch["target_image"]]),
                                                 channels_last)) if train_image else None
        encoded_images, encoded_text = encoder(images=images, tokens=tokens)
        if train_image:
            reference, target = encoded_images.chunk(2)
        else:
            reference, target = image_features[batch["reference"]], image_features[batch["target"]]
        text = encoded_text if train_text else text_features[text_offsets[batch["query"]] + batch["form"]]
        return query_and_target(reference, text, target)

    def train_mode() -> None:
        # As the published code: the whole CLIP stays in eval mode while its parameters train, so a
        # ResNet tower's BatchNorm keeps its pretrained running statistics (and normalises with them,
        # the same on every rank: nothing to synchronise under DDP) and no dropout is active.
        model.eval()

    validation_encode = encode.full_precision().on_this_process().without_cache(images=train_image, texts=train_text)
    if train_image:  # the gallery is encoded again at every validation
        validation_encode = replace(validation_encode, pixel_cache=opt.pixel_cache(args, repeated=True))

    def validate(epoch: int) -> dict[str, float]:
        metrics = evaluate(clip, val_splits, element_wise_sum, validation_encode)
        return {**metrics, **selection_scores(metrics)}

    def saved_modules(epoch: int, metrics: dict) -> dict:
        return {"clip": (model, clip_metadata(clip, "stage1", epoch, metrics, encoder=args.encoder))}

    loop = Loop(model=encoder, optimizer=optimizer, loader=loader, forward=forward,
                loss=lambda features: batch_contrastive_loss(*features), validate=validate,
                saved_modules=saved_modules, train_mode=train_mode, accum_steps=args.accum_steps)
    return train(accelerator, run_dir, loop, args, progress)


def main(argv: list[str] | None = None, prog: str = "stage1/finetune.py") -> None:
    program_main(build_parser(prog), run, argv, prog)
