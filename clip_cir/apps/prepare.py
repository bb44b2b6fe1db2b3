"""What every command that encodes and ranks (eval, rank, submissions, the demo) does before
encoding: data, model, combining function and encoding options, all validated before any work.

Its own module so the CLI and the demo share it without the demo importing the CLI.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clip_cir import params as opt
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    from clip_cir.data import CIRSplit
    from clip_cir.encoding.encode import EncodeOptions
    from clip_cir.models.clip import LoadedCLIP

log = logging.getLogger("clip_cir")


@dataclass
class Prepared:
    """What `prepare` hands a command: the splits, the model on its device, the combining function
    (and its name for people), the encoding options and how many listed images were left out."""

    splits: list[CIRSplit]
    clip: LoadedCLIP
    combine: Callable[..., Any]
    combining: str
    encode: EncodeOptions
    skipped_images: int


def accelerator_for(args: argparse.Namespace):
    from accelerate import Accelerator

    return Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)


def encode_options(args: argparse.Namespace, clip, accelerator):
    from clip_cir.encoding.encode import EncodeOptions

    return EncodeOptions.for_accelerator(accelerator, opt.transform_for(clip, args.transform, args.target_ratio),
                                         opt.feature_cache(args), batch_size=args.batch_size,
                                         num_workers=opt.num_workers(args, accelerator.device.type == "cuda"),
                                         pixel_cache=opt.pixel_cache(args, repeated=False))


def combining(args: argparse.Namespace) -> tuple[Callable[..., Any], str]:
    """The --combining function, or a Combiner checkpoint (ours or published), and its name."""
    from clip_cir.models.combiner import COMBINING_FUNCTIONS, load_combiner

    if getattr(args, "combiner", None):
        return load_combiner(args.combiner), f"Combiner ({args.combiner})"
    return COMBINING_FUNCTIONS[args.combining]


def prepare(args: argparse.Namespace, split: str | None = None, need_targets: bool = False) -> Prepared:
    """Everything before encoding, validated before any work: data, model, combining function."""
    opt.check_positive(args, ["batch_size", "target_ratio"])
    images = opt.image_check(args)
    splits = opt.load_data(args, split, images)
    if images.skipped:
        log.warning("%s. WARNING: these numbers are NOT comparable with published ones (the gallery or the "
                    "queries are incomplete)", images.summary())
    if need_targets and not all(s.has_targets for s in splits):
        from clip_cir.evaluation.evaluate import no_targets_message

        raise CIRError(no_targets_message(splits[0]))
    clip = opt.load_model(args)
    combine, combine_name = combining(args)
    from clip_cir.models.combiner import check_combiner_fits

    check_combiner_fits(combine, clip)
    accelerator = accelerator_for(args)
    if hasattr(combine, "to"):
        combine = combine.to(accelerator.device)
    from clip_cir.models.towers import set_memory_format

    clip.model.to(accelerator.device)
    set_memory_format(clip.model, accelerator.device, args.channels_last)
    log.info("model: %s | combining: %s | device: %s", clip.describe(), combine_name, accelerator.device)
    return Prepared(splits, clip, combine, combine_name, encode_options(args, clip, accelerator), len(images.skipped))
