"""The command-line options the training benchmarks share, and the real programs' runs they make
with them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from fixtures import SYNTH_SIZE
from harness import quiet


def add_benchmark_args(parser: argparse.ArgumentParser, *, train: int, epochs: int, rounds: int,
                       image_size: int = SYNTH_SIZE, image_size_why: str = "the tiny CLIP's input") -> None:
    """The size options both training benchmarks share."""
    parser.add_argument("--train", type=int, default=train,
                        help="synthetic CIRR training triplets (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=epochs,
                        help="epochs per path and round, at least 3: epoch 1 is warm-up (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="triplets per step (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers for every path (default: each path's own: the programs' automatic "
                             "choice, none on a CPU-only machine and one per spare core with a GPU; every core for "
                             "the published code's way, as it does)")
    parser.add_argument("--rounds", type=int, default=rounds,
                        help="run every path this many times, interleaved, and pool their epochs: steadier "
                             "ratios on a busy machine (default: %(default)s)")
    parser.add_argument("--model", default="cir-tiny-vit",
                        help="open_clip model, random init (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=image_size,
                        help=f"short side of the synthetic images in px (default: %(default)s, {image_size_why}; "
                             "larger files cost more to decode, as the real datasets' 375-600 px ones do)")
    parser.add_argument("--seed", type=int, default=0, help="data and model seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every path (default: torch's own choice, what the "
                             "programs get). On a machine shared with other work, 1 avoids threads waiting "
                             "on each other and gives much steadier numbers")


def configure(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate the shared options and apply --threads (process-wide: the real programs run
    in this process, so every path gets the same setting)."""
    if (args.epochs < 3 or args.rounds < 1 or (args.num_workers is not None and args.num_workers < 0)
            or not 0 < args.batch_size <= args.train or args.image_size < 16):
        parser.error("need --epochs >= 3, --rounds >= 1, --num-workers >= 0, 0 < --batch-size <= --train and "
                     "--image-size >= 16")
    apply_threads(parser, args.threads)


def add_world_args(parser: argparse.ArgumentParser) -> None:
    """The model and world options of the benchmarks that train on a `SIZES` setting (`--small` or
    full): the CLIP, the synthetic images' size, the seed and torch's threads."""
    parser.add_argument("--model", default="cir-tiny-vit", help="open_clip model (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=SYNTH_SIZE,
                        help="short side of the synthetic images in px (default: %(default)s, the tiny CLIP's input)")
    parser.add_argument("--seed", type=int, default=0, help="data, CLIP and training seed (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")


def parse_sized(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                sizes: dict[str, dict[str, Any]]) -> argparse.Namespace:
    """The command line, each size option not given taken from `sizes["small"]` with `--small`,
    else from `sizes["full"]`."""
    args = parser.parse_args(argv)
    for key, value in sizes["small" if args.small else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def apply_threads(parser: argparse.ArgumentParser, threads: int | None) -> None:
    """`--threads N`: torch's intra-op threads for the whole process (checked first)."""
    if threads is not None:
        if threads < 1:
            parser.error("--threads must be at least 1")
        torch.set_num_threads(threads)


def program_options(data_root: Path, cache_dir: Path, runs: Path, name: str,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Settings of a real training run (the Python API's options, which the programs run): the
    benchmark's sizes, validation only after the last epoch, no progress bars, and its own feature
    and pixel cache folders (cold for every round). `args.num_workers` None leaves the program's
    automatic choice."""
    return dict(dataset="cirr", data_root=data_root, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                num_workers=args.num_workers, validation_frequency=args.epochs,
                validation_schedule="every-nth-and-last", seed=args.seed, cache_dir=cache_dir,
                pixel_cache_dir=cache_dir / "pixels", output_dir=runs, experiment_name=name, no_progress=True)


def stage1_run(data_root: Path, root: Path, name: str, cache_dir: Path, args: argparse.Namespace,
               **options: Any) -> Path:
    """One stage-1 run as the program trains it (`clip_cir.finetune`, in this process, quiet) with
    the benchmark's sizes (`program_options`) plus `options`; returns its run directory."""
    import clip_cir

    with quiet():
        return clip_cir.finetune(**program_options(data_root, cache_dir, root / "runs", name, args), **options).path


def published_workers(args: argparse.Namespace) -> int:
    """The published code's DataLoader workers: every core (`multiprocessing.cpu_count()` there),
    unless --num-workers sets one value for every path."""
    return args.num_workers if args.num_workers is not None else (os.cpu_count() or 1)
