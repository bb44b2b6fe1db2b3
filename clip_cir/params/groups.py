"""The option groups the programs share.

One definition per option keeps names and help identical everywhere; defaults come from the
settings classes in `clip_cir.config`, where each lives once. An option whose default or help
differs between programs is still added by one function, which takes them as arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_cir.config import (
    CacheConfig,
    CombiningConfig,
    DataConfig,
    DeviceConfig,
    EncodeConfig,
    ModelConfig,
    QueryDataConfig,
    RankingConfig,
    SearchConfig,
    TrainingConfig,
)
from clip_cir.constants import (
    COMBINING,
    CSS_QUERY_IMAGES,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    FAISS_INDEXES,
    SEARCH_BACKENDS,
    TRANSFORMS,
)
from clip_cir.data import DATASETS
from clip_cir.data.circo import QUERY_TEXTS
from clip_cir.data.fashioniq import CATEGORIES
from clip_cir.data.fashioniq import PROTOCOLS as FASHIONIQ_PROTOCOLS
from clip_cir.data.images import SKIP_FLAG
from clip_cir.data.shoes import PROTOCOLS as SHOES_PROTOCOLS
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    Group = argparse.ArgumentParser | argparse._ArgumentGroup  # where add_argument is called


ENCODING_DEVICE = RankingConfig().device
"""The device settings' defaults of the commands that encode and rank (float32 unless asked)."""


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


def add_data_args(parser: argparse.ArgumentParser, split_default: str | None = QueryDataConfig.split,
                  split: bool = True, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=DATASETS, metavar="DATASET", **required_option(required),
                       help=f"benchmark layout to read: {', '.join(DATASETS)}")
    add_data_root_arg(group, "folder holding the benchmark in its published layout (docs/datasets.md), e.g. "
                             "cirr_dataset/, fashionIQ_dataset/, CIRCO/", required)
    if split:
        add_split_arg(group, split_default, "the benchmark's split, e.g. cirr: train, val, test1; fashioniq: train, "
                                            "val, test; circo: val, test; css, fashion200k, mitstates, shoes: train, "
                                            "test (default: its validation split: val, or test where it has none)")
    add_reader_option_args(group)


def add_reader_option_args(group: Group, triplets: bool = True) -> None:
    """Every dataset-specific reading option (`DataConfig`'s, which `registry.reader_options` makes
    the readers' `ReaderOptions`): the commands that read data and `convert` list the same ones.
    `triplets=False` leaves out the generic layout's columns, for a command that cannot read it."""
    add_fashioniq_categories_arg(group)
    add_protocol_args(group)
    add_circo_args(group)
    add_css_args(group)
    if triplets:
        add_triplet_args(group)


def add_fashioniq_categories_arg(group: Group) -> None:
    group.add_argument("--fashioniq-categories", nargs="+", default=DataConfig.fashioniq_categories, metavar="CAT",
                       help=f"FashionIQ categories (default: {' '.join(CATEGORIES)})")


def add_protocol_args(group: Group) -> None:
    """Which published protocol reads FashionIQ and Shoes (docs/datasets.md)."""
    group.add_argument("--fashioniq-protocol", choices=tuple(FASHIONIQ_PROTOCOLS),
                       default=DataConfig.fashioniq_protocol,
                       help="FashionIQ protocol: clip4cir (one 'c0 and c1' query per triplet, split-file gallery), "
                            "val (each caption a query, gallery = the triplets' images, reference removed), cosmo "
                            "(both caption orders, split-file gallery, reference removed) or cosmo-val (both orders, "
                            "VAL's gallery) (default: %(default)s)")
    group.add_argument("--shoes-protocol", choices=SHOES_PROTOCOLS, default=DataConfig.shoes_protocol,
                       help="Shoes protocol: val (VAL's, which TIRG, VAL and CoSMo report: every pair with an image "
                            "in the split's list, once per such image) or artemis (pairs with both images in the "
                            "list, once) (default: %(default)s)")


def add_triplet_args(group: Group) -> None:
    """The generic layout's columns and protocol (`--dataset triplets`, docs/datasets.md)."""
    group.add_argument("--csv-reference-key", default=DataConfig.csv_reference_key,
                       help="triplets: reference image column (default: %(default)s)")
    add_csv_caption_args(group, caption=DataConfig.csv_caption_key, separator=DataConfig.csv_separator,
                         separator_help="column separator (default: ',' for .csv, tab for .tsv)")
    group.add_argument("--csv-target-key", default=DataConfig.csv_target_key,
                       help="triplets: target image column; several targets '|'-separated (default: %(default)s)")
    group.add_argument("--keep-reference", action="store_true",
                       help="triplets: keep each reference in its own ranking (default: removed, as CIRR does, "
                            "unless the data's clip_cir.json says otherwise)")


def add_csv_caption_args(group: Group, caption: str, separator: str | None, separator_help: str) -> None:
    """The caption column and separator of a CSV (open_clip's flag names), for each program's file."""
    group.add_argument("--csv-caption-key", default=caption, help="caption column (default: %(default)s)")
    group.add_argument("--csv-separator", default=separator, help=separator_help)


def add_data_root_arg(group: Group, help: str, required: bool = True) -> None:
    group.add_argument("--data-root", type=Path, **required_option(required), help=help)


def add_split_arg(group: Group, default: str | None, help: str) -> None:
    group.add_argument("--split", default=default, help=help)


def add_circo_args(parser: Group) -> None:
    parser.add_argument("--circo-query-text", choices=QUERY_TEXTS, default=DataConfig.circo_query_text,
                        help="CIRCO query text: the relative caption alone, or 'a photo of {shared concept} that "
                             "{relative caption}' (default: %(default)s)")


def add_css_args(parser: Group) -> None:
    parser.add_argument("--css-query-images", choices=CSS_QUERY_IMAGES, default=DataConfig.css_query_images,
                        help="css: query images, the source's 3-D rendering (3D->3D) or tirg's flat 2-D drawing of its "
                             "objects (2D->3D; drawn once into the cache folder) (default: %(default)s)")


def add_search_args(parser: Group) -> None:
    """Which nearest-neighbour back-end ranks the gallery (the demo and every ranking command)."""
    parser.add_argument("--search", choices=SEARCH_BACKENDS, default=SearchConfig.search,
                        help="nearest-neighbour back-end: exact torch search (chunked over queries and gallery), "
                             "or FAISS for galleries of 10^5 images and more (needs faiss-cpu) (default: %(default)s)")
    parser.add_argument("--faiss-index", choices=FAISS_INDEXES, default=SearchConfig.faiss_index,
                        help="FAISS index type with --search faiss; 'flat' is exact (default: %(default)s)")
    parser.add_argument("--faiss-nprobe", type=int, default=SearchConfig.faiss_nprobe,
                        help="IVF lists scanned per query: more is slower and closer to exact (default: nlist/8)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=ModelConfig.model,
                       help=f"open_clip model name, e.g. RN50x4, ViT-B-32, or the tiny CPU model cir-tiny-vit. "
                            f"Not needed when --pretrained is a checkpoint that defines its architecture "
                            f"(default with neither: {DEFAULT_MODEL} with '{DEFAULT_PRETRAINED}' weights)")
    group.add_argument("--pretrained", default=ModelConfig.pretrained,
                       help="open_clip pretrained tag (e.g. openai), a checkpoint file (open_clip, OpenAI-format, "
                            "published {'CLIP': ...}, our .safetensors), a run directory, or a Hugging Face Hub "
                            "repository in open_clip's format (hf-hub:ORG/NAME); omit for random init with --model")


def add_combiner_arg(parser: Group) -> None:
    parser.add_argument("--combiner", default=CombiningConfig.combiner,
                        help="a Combiner checkpoint: our .safetensors, a stage-2 run directory, a published "
                             "{'Combiner': ...} file, or hf-hub:ORG/NAME (a repository written by clip-cir export)")


def add_zero_shot_arg(group: Group, help: str) -> None:
    group.add_argument("--zero-shot", metavar="RUN", default=CombiningConfig.zero_shot, help=help)


def add_combining_args(parser: argparse.ArgumentParser) -> None:
    section = parser.add_argument_group("combining")
    group = section.add_mutually_exclusive_group()
    group.add_argument("--combining", choices=COMBINING, default=CombiningConfig.combining,
                       help="sum: element-wise sum of image and text features (the zero-shot baseline; default); "
                            "image: the reference image alone, caption ignored (a baseline); slerp: spherical "
                            "linear interpolation from the image to the caption (training-free, Jang et al. 2024); "
                            "pic2word, searle, lincir: a pseudo-word composition (with --zero-shot RUN)")
    add_combiner_arg(group)
    section.add_argument(
        "--slerp-alpha", type=float, default=CombiningConfig.slerp_alpha, metavar="ALPHA",
        help="with --combining slerp: how far from the reference image (0) towards the caption (1) the query lies "
             "(default: %(default)s)")
    add_zero_shot_arg(section, "a zero-shot mapping network (a `clip-cir zero-shot` run, its phi.safetensors, a "
                               "published Pic2Word/SEARLE/LinCIR file or hf-hub:ORG/NAME): the query is the text "
                               "feature of a prompt with the reference image as a pseudo-word (docs/zero-shot.md)")
    add_prompt_template_arg(section, CombiningConfig.prompt_template, "TEXT",
                            "with --zero-shot: the prompt, '$' standing for the image and {caption} for the caption "
                            "(default: the one the network was trained with, e.g. 'a photo of $ that {caption}')")


def add_prompt_template_arg(group: Group, default: str | None, metavar: str, help: str) -> None:
    """`--prompt-template`: a pseudo-word query's prompt (the ranking commands' `--zero-shot`, and
    the prompt `clip-cir zero-shot` validates and saves with)."""
    group.add_argument("--prompt-template", default=default, metavar=metavar, help=help)


def add_transform_args(parser: Group) -> None:
    parser.add_argument("--transform", choices=TRANSFORMS, default=ModelConfig.transform,
                        help="image preprocessing (default: %(default)s)")
    parser.add_argument("--target-ratio", type=float, default=ModelConfig.target_ratio,
                        help="aspect ratio targetpad pads down to (default: %(default)s)")


def add_encode_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("encoding")
    add_transform_args(group)
    add_batch_size_arg(group, EncodeConfig.batch_size, "images per forward pass (default: %(default)s)")
    add_num_workers_arg(group)
    add_feature_cache_args(group)
    add_pixel_cache_args(group)
    add_mixed_precision_arg(group, ENCODING_DEVICE.mixed_precision,
                            "autocast precision for encoding on GPUs (default: %(default)s)")
    add_cpu_arg(group, "run on the CPU even when a GPU is available")
    add_channels_last_arg(group)


def add_batch_size_arg(group: Group, default: int, help: str) -> None:
    group.add_argument("--batch-size", type=int, default=default, help=help)


def add_mixed_precision_arg(group: Group, default: str | None, help: str) -> None:
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=default, help=help)


def add_cpu_arg(group: Group, help: str) -> None:
    group.add_argument("--cpu", action="store_true", help=help)


def add_seed_arg(group: Group, help: str = "random seed") -> None:
    group.add_argument("--seed", type=int, default=TrainingConfig.seed, help=f"{help} (default: %(default)s)".lstrip())


def add_output_dir_arg(group: Group, help: str, default: Path | None = None, required: bool = False) -> None:
    group.add_argument("--output-dir", type=Path, default=default, required=required, help=help)


def add_output_arg(group: Group, help: str, required: bool = False) -> None:
    group.add_argument("--output", type=Path, required=required, help=help)


def add_feature_cache_args(group: Group) -> None:
    group.add_argument("--cache-dir", type=Path, default=CacheConfig.cache_dir,
                       help="feature cache folder (default: $CLIP_CIR_CACHE/features or ~/.cache/clip_cir/features)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")


def add_channels_last_arg(group: Group) -> None:
    """How a convolutional image tower is laid out in memory (`models.towers.set_memory_format`)."""
    group.add_argument("--channels-last", choices=("auto", "on", "off"), default=DeviceConfig.channels_last,
                       help="run a convolutional image tower (ResNet, ConvNeXt, MobileCLIP) in channels-last "
                            "memory format, which GPU tensor cores convolve fastest; features agree with the "
                            "default layout to rounding. auto: on for a CUDA device with a convolutional tower "
                            "(default: %(default)s)")


def add_num_workers_arg(group: Group, default: int | None = DeviceConfig.num_workers) -> None:
    """--num-workers: automatic (None) for the programs that load data, a number for the quickstart."""
    group.add_argument("--num-workers", type=int, default=default,
                       help="data loading worker processes (default: automatic: one per spare core on a GPU "
                            "machine, up to 16 per process; none when training on the CPU, whose cores do the math)"
                       if default is None else "data loading workers (default: %(default)s)")


def add_pixel_cache_args(group: Group) -> None:
    group.add_argument("--pixel-cache", choices=("auto", "on", "off"), default=CacheConfig.pixel_cache,
                       help="store preprocessed uint8 pixels once in a memory map and read them instead of decoding "
                            "images again (exact: no augmentation). auto: where images are decoded repeatedly "
                            "(an image tower that trains, its validation gallery); on: also for one-off feature "
                            "extraction; off: always decode. Size: 3 x S x S bytes per image, 249 KB at 288 px "
                            "(default: %(default)s)")
    group.add_argument("--pixel-cache-dir", type=Path, default=CacheConfig.pixel_cache_dir,
                       help="pixel cache folder (default: $CLIP_CIR_CACHE/pixels or ~/.cache/clip_cir/pixels)")


def add_skip_missing_arg(parser: Group, training: bool) -> None:
    parser.add_argument(SKIP_FLAG, action="store_true",
                        help="leave out listed images that are missing or unreadable, and the triplets that use "
                             "them (counted, listed in RUN_DIR/skipped_images.txt)" if training else
                        "rank without listed images that are missing or unreadable and without the queries that "
                        "use them; the numbers are then NOT comparable with published ones")


def add_gallery_dir_arg(group: Group, queries: bool,
                        help: str = "search every image under this folder (recursively) instead of a dataset's "
                                    "gallery") -> None:
    """A folder of photos (recursively) as the gallery, instead of --dataset/--data-root (or, with
    `help` saying so, as a program's training images)."""
    group.add_argument("--gallery-dir", type=Path, default=QueryDataConfig.gallery_dir, help=help)
    if queries:
        group.add_argument("--query-file", type=Path, default=QueryDataConfig.query_file,
                           help="with --gallery-dir: CSV/TSV/JSONL of queries (reference image path relative to "
                                "the file or absolute, caption; --csv-*-key name the columns)")


def check_positive(args: argparse.Namespace, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CIRError(f"--{name.replace('_', '-')} must be positive, got {value}")
