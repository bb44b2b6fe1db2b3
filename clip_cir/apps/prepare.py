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
    from clip_cir.config import QueryDataConfig, RankingConfig
    from clip_cir.data import CIRSplit
    from clip_cir.data.images import ImageCheck
    from clip_cir.encoding.split_features import EncodeOptions
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


def accelerator_for(config: RankingConfig):
    from accelerate import Accelerator

    return Accelerator(cpu=config.device.cpu, mixed_precision=config.device.mixed_precision)


def encode_options(config: RankingConfig, clip: LoadedCLIP, accelerator) -> EncodeOptions:
    from clip_cir.encoding.feature_store import feature_cache_for
    from clip_cir.encoding.pixels import loader_workers, pixel_cache_for
    from clip_cir.encoding.split_features import EncodeOptions

    model = config.model
    return EncodeOptions.for_accelerator(accelerator, clip.image_transform(model.transform, model.target_ratio),
                                         feature_cache_for(config.cache), batch_size=config.encode.batch_size,
                                         num_workers=loader_workers(config.device.num_workers,
                                                                    accelerator.device.type == "cuda"),
                                         pixel_cache=pixel_cache_for(config.cache, repeated=False))


def load_query_data(data: QueryDataConfig, split: str | None, images: ImageCheck) -> list[CIRSplit]:
    """The split(s) the settings name: a dataset's, or a folder of photos as the gallery (with a
    file of queries, the queries of that file)."""
    if data.gallery_dir:
        from clip_cir.data.folder import folder_gallery, folder_queries
        from clip_cir.data.registry import triplet_format

        gallery = folder_gallery(data.gallery_dir, images)
        return [folder_queries(gallery, data.query_file, triplet_format(data)) if data.query_file else gallery]
    if data.dataset is None or data.data_root is None:
        missing = [flag for flag, value in (("--dataset", data.dataset), ("--data-root", data.data_root))
                   if value is None]
        raise CIRError(f"the following arguments are required: {', '.join(missing)} (or --gallery-dir)")
    from clip_cir.data.registry import load_data

    return load_data(data, split or data.split, images)


def prepare(args: argparse.Namespace, split: str | None = None, need_targets: bool = False,
            purpose: str = "evaluation") -> Prepared:
    """`prepare_settings` of a command line."""
    opt.check_positive(args, ["batch_size", "target_ratio"])
    return prepare_settings(opt.ranking_settings(args), split, need_targets, purpose)


def prepare_settings(config: RankingConfig, split: str | None = None, need_targets: bool = False,
                     purpose: str = "evaluation") -> Prepared:
    """Everything before encoding, validated before any work: data, model, combining function.
    `purpose` is 'evaluation', or 'submission' (which ranks the whole split: no image may be skipped)."""
    from clip_cir.data.images import ImageCheck
    from clip_cir.encoding.search import index_factory
    from clip_cir.models.clip import load_clip
    from clip_cir.models.compositors.loading import load_combining

    index_factory(config.search)  # a missing faiss-cpu stops the command before any work
    images = ImageCheck.for_purpose(purpose, config.data.skip_missing_images)
    splits = load_query_data(config.data, split, images)
    if images.skipped:
        log.warning("%s. WARNING: these numbers are NOT comparable with published ones (the gallery or the "
                    "queries are incomplete)", images.summary())
    if need_targets and not all(s.has_targets for s in splits):
        from clip_cir.evaluation.evaluate import no_targets_message

        raise CIRError(no_targets_message(splits[0]))
    clip = load_clip(config.model.model, config.model.pretrained)
    accelerator = accelerator_for(config)
    combine, combine_name = load_combining(config.combining, clip, accelerator.device)
    from clip_cir.models.towers import set_memory_format

    clip.model.to(accelerator.device)
    set_memory_format(clip.model, accelerator.device, config.device.channels_last)
    log.info("model: %s | combining: %s | device: %s", clip.describe(), combine_name, accelerator.device)
    return Prepared(splits, clip, combine, combine_name, encode_options(config, clip, accelerator),
                    len(images.skipped))
