"""Options only the training programs have (stage 1, stage 2, pretrain): how long and how they
train, and the checks of those options before any work."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clip_cir.constants import LR_SCHEDULERS, TRACKERS
from clip_cir.errors import CIRError
from clip_cir.params.groups import (
    add_batch_size_arg,
    add_channels_last_arg,
    add_cpu_arg,
    add_feature_cache_args,
    add_mixed_precision_arg,
    add_num_workers_arg,
    add_output_dir_arg,
    add_pixel_cache_args,
    add_seed_arg,
    add_skip_missing_arg,
)

if TYPE_CHECKING:
    from clip_cir.params.groups import Group


def add_training_args(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float,
                      weight_decay: float, validation_frequency: int, name: str) -> None:
    """Options every training program has, with that program's published defaults."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=epochs, help="training epochs (default: %(default)s)")
    add_batch_size_arg(group, batch_size, "GLOBAL batch size, split across processes (default: %(default)s)")
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
    group.add_argument("--log-every", type=int, default=10, metavar="N", help="read the loss back (progress bar, "
                       "train_steps.csv) every N optimizer steps and at each epoch's end (default: %(default)s)")
    add_seed_arg(group)
    add_num_workers_arg(group)
    add_mixed_precision_arg(group, None, "autocast precision (default: what `accelerate launch`/config says, else no)")
    add_cpu_arg(group, "train on the CPU even when a GPU is available")
    add_channels_last_arg(group)
    add_skip_missing_arg(group, training=True)
    run = parser.add_argument_group("run directory and tracking")
    add_output_dir_arg(run, "runs are created under this folder (default: %(default)s)", default=Path("runs"))
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
    add_feature_cache_args(cache)
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


def check_training_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "lr", "validation_frequency", "log_every"):
        if getattr(args, name) <= 0:
            raise CIRError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if hasattr(args, "accum_steps"):
        check_accum_steps(args, 1)  # before any work; start_run checks again with the process count
    if args.weight_decay < 0 or (args.num_workers is not None and args.num_workers < 0) or args.warmup < 0:
        raise CIRError("--weight-decay, --num-workers and --warmup must not be negative")


def add_compile_arg(group: Group) -> None:
    """`--compile` for the programs that train CLIP towers (`training.datasets.ClipEncoder`)."""
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the trained towers' forward and backward (as open_clip's "
                            "--torchcompile): the first steps compile, later ones run faster; caption batches "
                            "are padded to a multiple of 16 tokens so few lengths compile; validation runs "
                            "uncompiled")


def add_tower_training_args(parser: argparse.ArgumentParser) -> None:
    """What the programs that train CLIP towers (stage 1, pretrain) add to the training options:
    `--accum-steps` (memory) and `--compile` (speed)."""
    add_accum_arg(parser.add_argument_group("memory"))
    add_compile_arg(parser.add_argument_group("speed"))
