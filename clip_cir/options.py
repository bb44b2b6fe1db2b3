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

from clip_cir.constants import DEFAULT_MODEL, DEFAULT_PRETRAINED, FAISS_INDEXES, SEARCH_BACKENDS, TRANSFORMS
from clip_cir.data import DATASETS, CIRSplit, load_splits
from clip_cir.data.images import EVALUATION_HINT, SKIP_FLAG, SUBMISSION_HINT, TRAINING_HINT, ImageCheck
from clip_cir.data.circo import QUERY_TEXTS
from clip_cir.data.fashioniq import CATEGORIES
from clip_cir.errors import CIRError

if TYPE_CHECKING:  # torch and open_clip load only when a command needs them, not for --help
    from clip_cir.evaluation import IndexFactory
    from clip_cir.features import FeatureCache
    from clip_cir.models import LoadedCLIP
    from clip_cir.pixels import PixelCache
    from clip_cir.transforms import ImageTransform


def add_data_args(parser: argparse.ArgumentParser, split_default: str | None = "val", split: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, required=True, help="benchmark layout to read")
    group.add_argument("--data-root", type=Path, required=True,
                       help="folder containing cirr_dataset/, fashionIQ_dataset/ or CIRCO/ (published layouts)")
    if split:
        group.add_argument("--split", default=split_default,
                           help="cirr: train, val, test1; fashioniq: train, val, test; circo: val, test "
                                "(default: %(default)s)")
    group.add_argument("--fashioniq-categories", nargs="+", default=list(CATEGORIES), metavar="CAT",
                       help=f"FashionIQ categories (default: {' '.join(CATEGORIES)})")
    add_circo_args(group)


def add_circo_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--circo-query-text", choices=QUERY_TEXTS, default="caption",
                        help="CIRCO query text: the relative caption alone, or 'a photo of {shared concept} that "
                             "{relative caption}' (default: %(default)s)")


def add_search_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Which nearest-neighbour back-end ranks the gallery (the demo and every ranking command)."""
    parser.add_argument("--search", choices=SEARCH_BACKENDS, default="exact",
                        help="nearest-neighbour back-end: exact torch search (chunked over queries and gallery), "
                             "or FAISS for galleries of 10^5 images and more (needs faiss-cpu) (default: %(default)s)")
    parser.add_argument("--faiss-index", choices=FAISS_INDEXES, default="ivf",
                        help="FAISS index type with --search faiss; 'flat' is exact (default: %(default)s)")
    parser.add_argument("--faiss-nprobe", type=int, default=None,
                        help="IVF lists scanned per query: more is slower and closer to exact (default: nlist/8)")


def search_index_factory(args: argparse.Namespace) -> "IndexFactory | None":
    """`None` for exact search (evaluation's own chunked top-k), else a function that builds the
    chosen FAISS index over normalised gallery features. FAISS is imported here, so a missing
    faiss-cpu stops the command before any work."""
    if getattr(args, "search", "exact") == "exact":
        return None
    from clip_cir.search import _import_faiss, build_index

    check_positive(args, ["faiss_nprobe"])
    _import_faiss()
    return lambda gallery: build_index(gallery, args.search, index=args.faiss_index, nprobe=args.faiss_nprobe)


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
    add_num_workers_arg(group)
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="feature cache folder (default: $CLIP_CIR_CACHE/features or ~/.cache/clip_cir/features)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    add_pixel_cache_args(group)
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                       help="autocast precision for encoding on GPUs (default: %(default)s)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")


def add_num_workers_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--num-workers", type=int, default=None,
                       help="data loading worker processes (default: automatic: one per spare core on a GPU "
                            "machine, up to 16 per process; none when training on the CPU, whose cores do the math)")


def add_pixel_cache_args(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--pixel-cache", choices=("auto", "on", "off"), default="auto",
                       help="store preprocessed uint8 pixels once in a memory map and read them instead of decoding "
                            "images again (exact: no augmentation). auto: where images are decoded repeatedly "
                            "(an image tower that trains, its validation gallery); on: also for one-off feature "
                            "extraction; off: always decode. Size: 3 x S x S bytes per image, 249 KB at 288 px "
                            "(default: %(default)s)")
    group.add_argument("--pixel-cache-dir", type=Path, default=None,
                       help="pixel cache folder (default: $CLIP_CIR_CACHE/pixels or ~/.cache/clip_cir/pixels)")


def num_workers(args: argparse.Namespace, on_gpu: bool, processes_per_node: int = 1) -> int:
    """--num-workers, or a value that suits the machine: decoding workers on every spare core
    when a GPU does the math (the published code uses every core), none on a CPU-only run."""
    if args.num_workers is not None:
        return args.num_workers
    if not on_gpu:
        return 0
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores // max(processes_per_node, 1) - 1))


def pixel_cache(args: argparse.Namespace, repeated: bool) -> "PixelCache | None":
    """The pixel cache for images decoded `repeated`ly (True) or once (False), per --pixel-cache."""
    from clip_cir.pixels import PixelCache, default_pixel_dir

    mode = getattr(args, "pixel_cache", "off")
    if mode == "off" or (mode == "auto" and not repeated):
        return None
    return PixelCache(args.pixel_cache_dir or default_pixel_dir())


def feature_cache(args: argparse.Namespace) -> "FeatureCache":
    from clip_cir.features import FeatureCache, default_cache_dir

    return FeatureCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))


def transform_for(clip: "LoadedCLIP", name: str, target_ratio: float) -> "ImageTransform":
    from clip_cir.transforms import build_transform

    mean, std = clip.mean_std
    return build_transform(name, clip.input_size, mean, std, target_ratio, clip.clip_preprocess)


def add_skip_missing_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, training: bool) -> None:
    parser.add_argument(SKIP_FLAG, action="store_true",
                        help="leave out listed images that are missing or unreadable, and the triplets that use "
                             "them (counted, listed in RUN_DIR/skipped_images.txt)" if training else
                        "rank without listed images that are missing or unreadable and without the queries that "
                        "use them; the numbers are then NOT comparable with published ones")


def image_check(args: argparse.Namespace, training: bool = False) -> ImageCheck:
    """What readers do with absent or unreadable images, from the command's options. Training
    programs open every image's header up front, so a corrupt file stops them before the first step."""
    skip = bool(getattr(args, "skip_missing_images", False))
    hint = TRAINING_HINT if training else EVALUATION_HINT if hasattr(args, "skip_missing_images") else SUBMISSION_HINT
    return ImageCheck(skip=skip, readable=training or skip, hint=hint, used_only=("train",) if training else ())


def load_data(args: argparse.Namespace, split: str | None = None, images: ImageCheck | None = None) -> list[CIRSplit]:
    return load_splits(args.dataset, args.data_root, split or args.split, args.fashioniq_categories,
                       images or image_check(args), getattr(args, "circo_query_text", "caption"))


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
