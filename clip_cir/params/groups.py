"""The option groups the programs share, and the functions that turn parsed options into the
objects a command works with (data, model, caches, search index).

One definition per option keeps names, defaults and help identical everywhere: an option whose
default or help differs between programs is still added by one function, which takes them as
arguments.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_cir.constants import (
    COMBINING,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    FAISS_INDEXES,
    SEARCH_BACKENDS,
    TRANSFORMS,
)
from clip_cir.data import DATASETS, CIRSplit, load_splits
from clip_cir.data.circo import QUERY_TEXTS
from clip_cir.data.fashioniq import CATEGORIES
from clip_cir.data.images import (
    EVALUATION_HINT,
    SKIP_FLAG,
    SUBMISSION_HINT,
    TRAINING_HINT,
    ImageCheck,
)
from clip_cir.errors import CIRError

if TYPE_CHECKING:  # torch and open_clip load only when a command needs them, not for --help
    from clip_cir.encoding.features import FeatureCache
    from clip_cir.encoding.pixels import PixelCache
    from clip_cir.evaluation.evaluate import IndexFactory
    from clip_cir.models.clip import LoadedCLIP
    from clip_cir.models.transforms import ImageTransform

    Group = argparse.ArgumentParser | argparse._ArgumentGroup  # where add_argument is called


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""The value of a required option that was not given, in a parser built with `required=False`
(where a resumed run's config may supply it)."""


def required_option(required: bool) -> dict[str, Any]:
    """add_argument's keywords for an option a program requires: argparse checks it, or, with
    `required=False`, it defaults to `MISSING` so that the caller can check it."""
    return {"required": True} if required else {"default": MISSING}


def add_data_args(parser: argparse.ArgumentParser, split_default: str | None = "val", split: bool = True,
                  required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, **required_option(required), help="benchmark layout to read")
    add_data_root_arg(group, "folder containing cirr_dataset/, fashionIQ_dataset/ or CIRCO/ (published layouts)",
                      required)
    if split:
        add_split_arg(group, split_default, "cirr: train, val, test1; fashioniq: train, val, test; circo: val, test "
                                            "(default: %(default)s)")
    add_fashioniq_categories_arg(group, list(CATEGORIES))
    add_circo_args(group)
    add_triplet_args(group)


def add_fashioniq_categories_arg(group: Group, default: list[str] | None) -> None:
    group.add_argument("--fashioniq-categories", nargs="+", default=default, metavar="CAT",
                       help=f"FashionIQ categories (default: {' '.join(CATEGORIES)})")


def add_triplet_args(group: Group) -> None:
    """The generic layout's columns and protocol (`--dataset triplets`, docs/datasets.md)."""
    group.add_argument("--csv-reference-key", default="reference",
                       help="triplets: reference image column (default: %(default)s)")
    add_csv_caption_args(group, caption="caption", separator=None,
                         separator_help="column separator (default: ',' for .csv, tab for .tsv)")
    group.add_argument("--csv-target-key", default="target",
                       help="triplets: target image column; several targets '|'-separated (default: %(default)s)")
    group.add_argument("--keep-reference", action="store_true",
                       help="triplets: keep each reference in its own ranking (default: removed, as CIRR does, "
                            "unless the data's clip_cir.json says otherwise)")


def add_csv_caption_args(group: Group, caption: str, separator: str | None, separator_help: str) -> None:
    """The caption column and separator of a CSV (open_clip's flag names), for each program's file."""
    group.add_argument("--csv-caption-key", default=caption, help="caption column (default: %(default)s)")
    group.add_argument("--csv-separator", default=separator, help=separator_help)


def triplet_format(args: argparse.Namespace):
    """The generic layout's `TripletFormat` from the command line."""
    from clip_cir.data.triplets import TripletFormat

    return TripletFormat(reference_key=args.csv_reference_key, caption_key=args.csv_caption_key,
                         target_key=args.csv_target_key, separator=args.csv_separator,
                         exclude_reference=False if args.keep_reference else None)


def add_data_root_arg(group: Group, help: str, required: bool = True) -> None:
    group.add_argument("--data-root", type=Path, **required_option(required), help=help)


def add_split_arg(group: Group, default: str | None, help: str) -> None:
    group.add_argument("--split", default=default, help=help)


def add_circo_args(parser: Group) -> None:
    parser.add_argument("--circo-query-text", choices=QUERY_TEXTS, default="caption",
                        help="CIRCO query text: the relative caption alone, or 'a photo of {shared concept} that "
                             "{relative caption}' (default: %(default)s)")


def add_search_args(parser: Group) -> None:
    """Which nearest-neighbour back-end ranks the gallery (the demo and every ranking command)."""
    parser.add_argument("--search", choices=SEARCH_BACKENDS, default="exact",
                        help="nearest-neighbour back-end: exact torch search (chunked over queries and gallery), "
                             "or FAISS for galleries of 10^5 images and more (needs faiss-cpu) (default: %(default)s)")
    parser.add_argument("--faiss-index", choices=FAISS_INDEXES, default="ivf",
                        help="FAISS index type with --search faiss; 'flat' is exact (default: %(default)s)")
    parser.add_argument("--faiss-nprobe", type=int, default=None,
                        help="IVF lists scanned per query: more is slower and closer to exact (default: nlist/8)")


def search_index_factory(args: argparse.Namespace) -> IndexFactory | None:
    """`None` for exact search (evaluation's own chunked top-k), else a function that builds the
    chosen FAISS index over normalised gallery features. FAISS is imported here, so a missing
    faiss-cpu stops the command before any work."""
    check_search_args(args)
    if getattr(args, "search", "exact") == "exact":
        return None
    from clip_cir.encoding.search import build_index

    return lambda gallery: build_index(gallery, args.search, index=args.faiss_index, nprobe=args.faiss_nprobe)


def check_search_args(args: argparse.Namespace) -> None:
    """--faiss-nprobe is positive, and with --search faiss FAISS imports: a missing faiss-cpu stops
    the command before any work."""
    check_positive(args, ["faiss_nprobe"])
    if getattr(args, "search", "exact") == "faiss":
        from clip_cir.encoding.search import require_faiss

        require_faiss()


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


def add_combiner_arg(parser: Group) -> None:
    parser.add_argument("--combiner", default=None,
                        help="a Combiner checkpoint: our .safetensors, a stage-2 run directory, a published "
                             "{'Combiner': ...} file, or hf-hub:ORG/NAME (a repository written by clip-cir export)")


def add_combining_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("combining").add_mutually_exclusive_group()
    group.add_argument("--combining", choices=COMBINING, default="sum",
                       help="sum: element-wise sum of image and text features (the zero-shot baseline; default); "
                            "image: the reference image alone, caption ignored (a baseline)")
    add_combiner_arg(group)


def add_transform_args(parser: Group) -> None:
    parser.add_argument("--transform", choices=TRANSFORMS, default="targetpad",
                        help="image preprocessing (default: %(default)s)")
    parser.add_argument("--target-ratio", type=float, default=1.25,
                        help="aspect ratio targetpad pads down to (default: %(default)s)")


def add_encode_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoding")
    add_transform_args(group)
    add_batch_size_arg(group, 256, "images per forward pass (default: %(default)s)")
    add_num_workers_arg(group)
    add_feature_cache_args(group)
    add_pixel_cache_args(group)
    add_mixed_precision_arg(group, "no", "autocast precision for encoding on GPUs (default: %(default)s)")
    add_cpu_arg(group, "run on the CPU even when a GPU is available")
    add_channels_last_arg(group)


def add_batch_size_arg(group: Group, default: int, help: str) -> None:
    group.add_argument("--batch-size", type=int, default=default, help=help)


def add_mixed_precision_arg(group: Group, default: str | None, help: str) -> None:
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=default, help=help)


def add_cpu_arg(group: Group, help: str) -> None:
    group.add_argument("--cpu", action="store_true", help=help)


def add_seed_arg(group: Group, help: str = "random seed") -> None:
    group.add_argument("--seed", type=int, default=0, help=f"{help} (default: %(default)s)".lstrip())


def add_output_dir_arg(group: Group, help: str, default: Path | None = None, required: bool = False) -> None:
    group.add_argument("--output-dir", type=Path, default=default, required=required, help=help)


def add_output_arg(group: Group, help: str, required: bool = False) -> None:
    group.add_argument("--output", type=Path, required=required, help=help)


def add_feature_cache_args(group: Group) -> None:
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="feature cache folder (default: $CLIP_CIR_CACHE/features or ~/.cache/clip_cir/features)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")


def add_channels_last_arg(group: Group) -> None:
    """How a convolutional image tower is laid out in memory (`models.towers.set_memory_format`)."""
    group.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                       help="run a convolutional image tower (ResNet, ConvNeXt, MobileCLIP) in channels-last "
                            "memory format, which GPU tensor cores convolve fastest; features agree with the "
                            "default layout to rounding. auto: on for a CUDA device with a convolutional tower "
                            "(default: %(default)s)")


def add_num_workers_arg(group: Group, default: int | None = None) -> None:
    """--num-workers: automatic (None) for the programs that load data, a number for the quickstart."""
    group.add_argument("--num-workers", type=int, default=default,
                       help="data loading worker processes (default: automatic: one per spare core on a GPU "
                            "machine, up to 16 per process; none when training on the CPU, whose cores do the math)"
                       if default is None else "data loading workers (default: %(default)s)")


def add_pixel_cache_args(group: Group) -> None:
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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores // max(processes_per_node, 1) - 1))


def pixel_cache(args: argparse.Namespace, repeated: bool) -> PixelCache | None:
    """The pixel cache for images decoded `repeated`ly (True) or once (False), per --pixel-cache."""
    from clip_cir.encoding.pixels import PixelCache, default_pixel_dir

    mode = getattr(args, "pixel_cache", "off")
    if mode == "off" or (mode == "auto" and not repeated):
        return None
    return PixelCache(args.pixel_cache_dir or default_pixel_dir())


def feature_cache(args: argparse.Namespace) -> FeatureCache:
    from clip_cir.encoding.features import FeatureCache, default_cache_dir

    return FeatureCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))


def transform_for(clip: LoadedCLIP, name: str, target_ratio: float) -> ImageTransform:
    return clip.image_transform(name, target_ratio)


def add_skip_missing_arg(parser: Group, training: bool) -> None:
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
    """The split(s) the command line names: a dataset's, or with --gallery-dir a folder of photos
    (with --query-file, the queries of a CSV)."""
    images = images or image_check(args)
    if getattr(args, "gallery_dir", None):
        from clip_cir.data.folder import folder_gallery, folder_queries

        gallery = folder_gallery(args.gallery_dir, images)
        queries = getattr(args, "query_file", None)
        return [folder_queries(gallery, queries, triplet_format(args)) if queries else gallery]
    missing = [flag for flag, value in (("--dataset", args.dataset), ("--data-root", args.data_root))
               if value is MISSING]
    if missing:
        raise CIRError(f"the following arguments are required: {', '.join(missing)} (or --gallery-dir)")
    return load_splits(args.dataset, args.data_root, split or args.split, args.fashioniq_categories, images,
                       getattr(args, "circo_query_text", "caption"),
                       triplet_format(args) if args.dataset == "triplets" else None)


def add_gallery_dir_arg(group: Group, queries: bool) -> None:
    """A folder of photos (recursively) as the gallery, instead of --dataset/--data-root."""
    group.add_argument("--gallery-dir", type=Path, default=None,
                       help="search every image under this folder (recursively) instead of a dataset's gallery")
    if queries:
        group.add_argument("--query-file", type=Path, default=None,
                           help="with --gallery-dir: CSV/TSV/JSONL of queries (reference image path relative to "
                                "the file or absolute, caption; --csv-*-key name the columns)")


def load_model(args: argparse.Namespace) -> LoadedCLIP:
    from clip_cir.models.clip import load_clip

    return load_clip(args.model, args.pretrained)


def check_positive(args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CIRError(f"--{name.replace('_', '-')} must be positive, got {value}")
