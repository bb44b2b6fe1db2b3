"""Options only the training programs have (stage 1, stage 2, pretrain): how long and how they
train. Their defaults are each program's settings class's (`clip_cir.config`); the settings
check themselves before any work (`TrainingProgramConfig.check`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clip_cir.config import DeviceConfig, RunConfig, TowerTrainingConfig, TrainingProgramConfig
from clip_cir.constants import LR_SCHEDULERS, TRACKERS, VALIDATION_SCHEDULES
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


def add_training_args(parser: argparse.ArgumentParser, program: TrainingProgramConfig) -> None:
    """Options every training program has, with that program's published defaults (`program`: its
    settings with their defaults)."""
    training = program.training
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=training.epochs, help="training epochs (default: %(default)s)")
    add_batch_size_arg(group, training.batch_size, "GLOBAL batch size, split across processes (default: %(default)s)")
    group.add_argument("--lr", type=float, default=training.lr, help="learning rate (default: %(default)s)")
    group.add_argument("--weight-decay", type=float, default=training.weight_decay,
                       help="weight decay (default: %(default)s)")
    group.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=training.lr_scheduler,
                       help="learning-rate schedule over all optimizer steps, as open_clip's: 'const' keeps --lr, "
                            "'cosine' decays it to 0 by the last step (default: %(default)s, as the published recipe)")
    group.add_argument("--warmup", type=int, default=training.warmup, metavar="STEPS",
                       help="linear warmup over the first STEPS optimizer steps, open_clip's (step + 1) / STEPS * "
                            "--lr, before either schedule (default: %(default)s)")
    group.add_argument("--validation-frequency", type=int, default=training.validation_frequency, metavar="N",
                       help="validate every N epochs, when --validation-schedule says (default: %(default)s)")
    group.add_argument("--validation-schedule", choices=VALIDATION_SCHEDULES, default=training.validation_schedule,
                       help="published: after epochs 1, N+1, 2N+1, ... (the published code's 0-based epoch %% N == "
                            "0; not necessarily after the last); every-nth-and-last: after epochs N, 2N, ... and "
                            "the last. The best checkpoints are chosen among the validated epochs "
                            "(default: %(default)s)")
    group.add_argument("--log-every", type=int, default=training.log_every, metavar="N",
                       help="read the loss back (progress bar, train_steps.csv) every N optimizer steps and at each "
                            "epoch's end (default: %(default)s)")
    add_seed_arg(group)
    add_num_workers_arg(group)
    add_mixed_precision_arg(group, DeviceConfig.mixed_precision,
                            "autocast precision (default: what `accelerate launch`/config says, else no)")
    add_cpu_arg(group, "train on the CPU even when a GPU is available")
    add_channels_last_arg(group)
    group.add_argument("--deterministic", action="store_true",
                       help="bit-exact reruns on CUDA: no cuDNN benchmark mode and no TF32 matrix products, which "
                            "are on by default as in open_clip_train (faster; results differ in the last bits "
                            "between runs). No effect on a CPU")
    add_skip_missing_arg(group, training=True)
    run = parser.add_argument_group("run directory and tracking")
    add_output_dir_arg(run, "runs are created under this folder (default: %(default)s)", default=RunConfig.output_dir)
    run.add_argument("--experiment-name", default=RunConfig.experiment_name,
                     help=f"run directory and experiment name (default: {program.program}-<dataset>-<time>)")
    run.add_argument("--resume", type=Path, default=RunConfig.resume, metavar="RUN_DIR",
                     help="continue an interrupted run from RUN_DIR/last (its config is reused; "
                          "--epochs may be raised)")
    run.add_argument("--tracker", choices=TRACKERS, default=RunConfig.tracker,
                     help="comet_ml logs online with COMET_API_KEY, else an offline archive in the run "
                          "directory (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    cache = parser.add_argument_group("feature cache")
    add_feature_cache_args(cache)
    add_pixel_cache_args(cache)


def add_accum_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accum-steps", type=int, default=TowerTrainingConfig.accum_steps, metavar="K",
                        help="split each batch into K micro-batches: features of all K without gradients, the "
                             "contrastive loss over the whole batch, then each micro-batch again with gradients. "
                             "The gradient is the whole batch's; memory is a micro-batch's (like open_clip's "
                             "--accum-freq, but K splits --batch-size rather than multiplying it; default: "
                             "%(default)s)")


def add_compile_arg(group: Group) -> None:
    """`--compile` for the programs that train CLIP towers (`training.encoders.ClipEncoder`)."""
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
