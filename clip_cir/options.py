"""Command-line options shared by `clip-cir` subcommands and the stage scripts.

One definition per option keeps names, defaults and help identical everywhere.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from typing import TYPE_CHECKING

from clip_cir.constants import DEFAULT_MODEL, DEFAULT_PRETRAINED, TRANSFORMS
from clip_cir.data import DATASETS, CIRSplit, load_splits
from clip_cir.data.fashioniq import CATEGORIES
from clip_cir.errors import CIRError

if TYPE_CHECKING:  # torch and open_clip load only when a command needs them, not for --help
    from clip_cir.features import FeatureCache
    from clip_cir.models import LoadedCLIP
    from clip_cir.transforms import ImageTransform


def add_data_args(parser: argparse.ArgumentParser, split_default: str | None = "val", split: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, required=True, help="benchmark layout to read")
    group.add_argument("--data-root", type=Path, required=True,
                       help="folder containing cirr_dataset/ or fashionIQ_dataset/ (published layouts)")
    if split:
        group.add_argument("--split", default=split_default,
                           help="cirr: train, val, test1; fashioniq: train, val, test (default: %(default)s)")
    group.add_argument("--fashioniq-categories", nargs="+", default=list(CATEGORIES), metavar="CAT",
                       help=f"FashionIQ categories (default: {' '.join(CATEGORIES)})")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help=f"open_clip model name, e.g. RN50x4, ViT-B-32, or the tiny CPU model cir-tiny-vit. "
                            f"Not needed when --pretrained is a checkpoint that defines its architecture "
                            f"(default with neither: {DEFAULT_MODEL} with '{DEFAULT_PRETRAINED}' weights)")
    group.add_argument("--pretrained", default=None,
                       help="open_clip pretrained tag (e.g. openai), a checkpoint file (open_clip, OpenAI-format, "
                            "published {'CLIP': ...}, our .safetensors), a run directory, or a Hugging Face Hub "
                            "repository in open_clip's format (hf-hub:ORG/NAME); omit for random init with --model")


def add_combiner_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--combiner", default=None,
                        help="a Combiner checkpoint: our .safetensors, a stage-2 run directory, a published "
                             "{'Combiner': ...} file, or hf-hub:ORG/NAME (a repository written by clip-cir export)")


def add_transform_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--transform", choices=TRANSFORMS, default="targetpad",
                        help="image preprocessing (default: %(default)s)")
    parser.add_argument("--target-ratio", type=float, default=1.25,
                        help="aspect ratio targetpad pads down to (default: %(default)s)")


def add_encode_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoding")
    add_transform_args(group)
    group.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    group.add_argument("--num-workers", type=int, default=2, help="data loading workers (default: %(default)s)")
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="feature cache folder (default: $CLIP_CIR_CACHE/features or ~/.cache/clip_cir/features)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                       help="autocast precision for encoding on GPUs (default: %(default)s)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")


def feature_cache(args: argparse.Namespace) -> "FeatureCache":
    from clip_cir.features import FeatureCache, default_cache_dir

    return FeatureCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))


def transform_for(clip: "LoadedCLIP", name: str, target_ratio: float) -> "ImageTransform":
    from clip_cir.transforms import build_transform

    mean, std = clip.mean_std
    return build_transform(name, clip.input_size, mean, std, target_ratio, clip.clip_preprocess)


def load_data(args: argparse.Namespace, split: str | None = None) -> list[CIRSplit]:
    return load_splits(args.dataset, args.data_root, split or args.split, args.fashioniq_categories)


def load_model(args: argparse.Namespace) -> "LoadedCLIP":
    from clip_cir.models import load_clip

    return load_clip(args.model, args.pretrained)


def check_positive(args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CIRError(f"--{name.replace('_', '-')} must be positive, got {value}")


def setup_logging(verbose: bool = False) -> None:
    """Our messages at INFO; other libraries (open_clip logs through the root logger) only warn."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("clip_cir").setLevel(logging.DEBUG if verbose else logging.INFO)


def run_main(main: Callable[[], object], prog: str) -> None:
    """Run a command; bad input becomes one line on stderr and exit code 2.

    Returns normally on success, so other commands (the quickstart) can call entry points in-process.
    """
    import torch

    # Denormal floats make CPU training several times slower as weights shrink. The flag is
    # per thread and inherited by threads created later, so it is set before torch starts its
    # worker threads (setting it later leaves them slow).
    torch.set_flush_denormal(True)
    try:
        main()
    except CIRError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
