"""Command-line options shared by `clip-cir` subcommands and the stage scripts.

One definition per option keeps names, defaults and help identical everywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from clip_cir.constants import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    FAISS_INDEXES,
    LR_SCHEDULERS,
    SEARCH_BACKENDS,
    TRACKERS,
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

log = logging.getLogger("clip_cir")

if TYPE_CHECKING:  # torch and open_clip load only when a command needs them, not for --help
    from clip_cir.encoding.features import FeatureCache
    from clip_cir.encoding.pixels import PixelCache
    from clip_cir.evaluation.evaluate import IndexFactory
    from clip_cir.models.clip import LoadedCLIP
    from clip_cir.models.transforms import ImageTransform


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
    from clip_cir.encoding.search import _import_faiss, build_index

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
    group.add_argument("--batch-size", type=int, default=256,  # encoding.features.INFERENCE_BATCH_SIZE
                       help="images per forward pass (default: %(default)s)")
    add_num_workers_arg(group)
    group.add_argument("--cache-dir", type=Path, default=None,
                       help="feature cache folder (default: $CLIP_CIR_CACHE/features or ~/.cache/clip_cir/features)")
    group.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    add_pixel_cache_args(group)
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                       help="autocast precision for encoding on GPUs (default: %(default)s)")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    add_channels_last_arg(group)


def add_channels_last_arg(group: argparse._ArgumentGroup) -> None:
    """How a convolutional image tower is laid out in memory (`models.towers.set_memory_format`)."""
    group.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                       help="run a convolutional image tower (ResNet, ConvNeXt, MobileCLIP) in channels-last "
                            "memory format, which GPU tensor cores convolve fastest; features agree with the "
                            "default layout to rounding. auto: on for a CUDA device with a convolutional tower "
                            "(default: %(default)s)")


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
    from clip_cir.encoding.pixels import PixelCache, default_pixel_dir

    mode = getattr(args, "pixel_cache", "off")
    if mode == "off" or (mode == "auto" and not repeated):
        return None
    return PixelCache(args.pixel_cache_dir or default_pixel_dir())


def feature_cache(args: argparse.Namespace) -> "FeatureCache":
    from clip_cir.encoding.features import FeatureCache, default_cache_dir

    return FeatureCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))


def transform_for(clip: "LoadedCLIP", name: str, target_ratio: float) -> "ImageTransform":
    from clip_cir.models.transforms import build_transform

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
    from clip_cir.models.clip import load_clip

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


def add_training_args(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float,
                      weight_decay: float, validation_frequency: int, name: str) -> None:
    """Options every training program has, with that program's published defaults."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=epochs, help="training epochs (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=batch_size,
                       help="GLOBAL batch size, split across processes (default: %(default)s)")
    group.add_argument("--lr", type=float, default=lr, help="learning rate (default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=weight_decay, help="weight decay (default: %(default)s)")
    group.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default="const",
                       help="learning-rate schedule over all optimizer steps, as open_clip's: 'const' keeps --lr, "
                            "'cosine' decays it to 0 by the last step (default: %(default)s, as the published recipe)")
    group.add_argument("--warmup", type=int, default=0, metavar="STEPS",
                       help="linear warmup over the first STEPS optimizer steps, open_clip's (step + 1) / STEPS * "
                            "--lr, before either schedule (default: %(default)s)")
    group.add_argument("--validation-frequency", type=int, default=validation_frequency,
                       help="validate every N epochs, and always after the last (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    from clip_cir.params import (
        add_num_workers_arg,
        add_pixel_cache_args,
        add_skip_missing_arg,
    )

    add_num_workers_arg(group)
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                       help="autocast precision (default: what `accelerate launch`/config says, else no)")
    group.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
    add_channels_last_arg(group)
    add_skip_missing_arg(group, training=True)
    run = parser.add_argument_group("run directory and tracking")
    run.add_argument("--output-dir", type=Path, default=Path("runs"),
                     help="runs are created under this folder (default: %(default)s)")
    run.add_argument("--experiment-name", default=None,
                     help=f"run directory and experiment name (default: {name}-<dataset>-<time>)")
    run.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                     help="continue an interrupted run from RUN_DIR/last (its config is reused; "
                          "--epochs may be raised)")
    run.add_argument("--tracker", choices=TRACKERS, default="none",
                     help="comet_ml logs online with COMET_API_KEY, else an offline archive in the run "
                          "directory (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    cache = parser.add_argument_group("feature cache")
    cache.add_argument("--cache-dir", type=Path, default=None,
                       help="feature cache (default: $CLIP_CIR_CACHE/features or ~/.cache/clip_cir/features)")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    add_pixel_cache_args(cache)


def add_accum_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accum-steps", type=int, default=1, metavar="K",
                        help="split each batch into K micro-batches: features of all K without gradients, the "
                             "contrastive loss over the whole batch, then each micro-batch again with gradients. "
                             "The gradient is the whole batch's; memory is a micro-batch's (like open_clip's "
                             "--accum-freq, but K splits --batch-size rather than multiplying it; default: "
                             "%(default)s)")


def check_accum_steps(args: argparse.Namespace, num_processes: int) -> None:
    """Every process's share of the batch must split into K equal micro-batches."""
    if args.accum_steps <= 0:
        raise CIRError(f"--accum-steps must be positive, got {args.accum_steps}")
    local = args.batch_size // num_processes
    if args.batch_size % num_processes or local % args.accum_steps:
        raise CIRError(f"--batch-size {args.batch_size} over {num_processes} process(es) does not split into "
                       f"--accum-steps {args.accum_steps} equal micro-batches; pick a batch size divisible by "
                       f"{num_processes * args.accum_steps}")


def portable_config(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as JSON, with local paths made absolute so the config means the same from
    any working directory (a later stage or report reads it)."""
    def value(v: Any) -> Any:
        if isinstance(v, Path) or (isinstance(v, str) and os.path.sep in v and os.path.exists(v)):
            return str(Path(v).resolve())
        return v
    return {k: value(v) for k, v in vars(args).items()}


RESUME_OVERRIDABLE = ("epochs", "num_workers", "no_progress", "cpu", "cache_dir", "no_cache", "pixel_cache",
                      "pixel_cache_dir", "accum_steps", "channels_last")
"""What a resumed run may change: how long and how it runs, not what it trains."""


def parse_with_resume(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """With --resume the saved config is the run's config, but for `RESUME_OVERRIDABLE` options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--resume", type=Path)
    if peek.parse_known_args(argv)[0].resume is None:
        return parser.parse_args(argv)
    for action in parser._actions:  # the saved config supplies the required options
        action.required = False
    args = parser.parse_args(argv)
    config_path = Path(args.resume) / "config.json"
    if not config_path.is_file():
        raise CIRError(f"{config_path}: not found; --resume takes a run directory")
    try:
        saved = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CIRError(f"{config_path}: malformed JSON ({e})") from None
    given = {a.split("=")[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
    types = {action.dest: action.type for action in parser._actions}
    ignored = []
    for key, value in saved.items():
        if key in ("resume", "run_dir", "program") or (key in RESUME_OVERRIDABLE and key in given):
            continue
        if getattr(args, key, value) != parser.get_default(key) and getattr(args, key, value) != value:
            ignored.append(key)
        if isinstance(value, str) and types.get(key) is Path:
            value = Path(value)
        setattr(args, key, value)
    if ignored:
        log.warning("--resume: the run's saved %s used instead of the command line's", ", ".join(ignored))
    args.run_dir = str(args.resume)
    return args


def check_training_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "lr", "validation_frequency"):
        if getattr(args, name) <= 0:
            raise CIRError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if hasattr(args, "accum_steps"):
        check_accum_steps(args, 1)  # before any work; start_run checks again with the process count
    if args.weight_decay < 0 or (args.num_workers is not None and args.num_workers < 0) or args.warmup < 0:
        raise CIRError("--weight-decay, --num-workers and --warmup must not be negative")


def program_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object],
                 argv: list[str] | None, prog: str) -> None:
    """Entry point of a training program: logging, --resume config, one-line errors."""
    from clip_cir.params import run_main, setup_logging

    setup_logging()
    run_main(lambda: run(parse_with_resume(parser, argv)), prog)
