"""What stage 1, stage 2 and pretraining share: run directory, seeding, resumable checkpoints,
CSV logs, tracking, and the one training loop.

A run directory looks like:

    RUN/config.json               resolved arguments
    RUN/log.txt                   everything the run printed
    RUN/train_metrics.csv         one row per epoch (loss, learning rate, time, CLIP encodes so far)
    RUN/train_steps.csv           one row per optimizer step (learning rate, the main process's loss)
    RUN/validation_metrics.csv    one row per validation (recalls, selection scores)
    RUN/best/<name>.safetensors   best checkpoint by `score` (+ best_<key>/ for other selection keys)
    RUN/last/                     weights + optimizer + RNG state to resume from (written at each
                                  validation and after the last epoch)
    RUN/comet/                    offline comet_ml archive when tracking without an API key

Resuming restores weights, optimizer, RNG, epoch and step count from `last/`; batch order and
caption choices depend only on (seed, epoch) and the learning rate only on the step count, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Sampler
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from clip_cir import features
from clip_cir.accumulation import training_step
from clip_cir.checkpoints import (load_torch_state, read_safetensors, save_torch_state, save_weights, write_dir,
                                  write_json, write_text)
from clip_cir.data.images import ImageCheck
from clip_cir.errors import CIRError
from clip_cir.tracking import TRACKERS, flat_config, tracker_setup

log = logging.getLogger("clip_cir")


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
    from clip_cir.options import add_num_workers_arg, add_pixel_cache_args, add_skip_missing_arg

    add_num_workers_arg(group)
    group.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                       help="autocast precision (default: what `accelerate launch`/config says, else no)")
    group.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is available")
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
                      "pixel_cache_dir", "accum_steps")
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


LR_SCHEDULERS = ("const", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """open_clip's `const_lr` / `cosine_lr` (open_clip_train/scheduler.py): the learning rate is a
    pure function of the optimizer-step count, set on every parameter group before each step.

    Because it depends on nothing but the step, resuming needs only the step count, and a resumed
    run sets exactly the learning rates an uninterrupted one does. `const` with no warmup sets
    `base_lr` (the optimizer's own learning rate) every step: training is unchanged by it.
    """

    kind: str
    base_lr: float
    warmup: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:  # open_clip's _warmup_lr
            return self.base_lr * (step + 1) / self.warmup
        if self.kind == "const":
            return self.base_lr
        if self.kind == "cosine":  # step < total_steps, so the denominator is positive here
            e, es = step - self.warmup, self.total_steps - self.warmup
            return 0.5 * (1 + math.cos(math.pi * e / es)) * self.base_lr
        raise ValueError(f"unknown learning-rate schedule {self.kind!r}")

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    @classmethod
    def from_args(cls, args: argparse.Namespace, steps_per_epoch: int) -> "LRSchedule":
        schedule = cls(kind=args.lr_scheduler, base_lr=args.lr, warmup=args.warmup,
                       total_steps=args.epochs * steps_per_epoch)
        if schedule.warmup >= schedule.total_steps and schedule.warmup:
            log.warning("--warmup %d covers all %d optimizer steps: the learning rate never reaches --lr",
                        schedule.warmup, schedule.total_steps)
        return schedule


KERNEL_FLAGS = ("fused", "foreach")


def fused_kernel_devices() -> set[str]:
    """Device types torch has fused Adam(W) kernels for ('cpu' from torch 2.4; 'cuda' always)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch that moved it: CUDA is the one every fused-capable torch covers
        return {"cuda"}
    return set(_get_fused_kernels_supported_devices())


def make_optimizer(cls: type[torch.optim.Optimizer], params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """`cls(params, **kwargs)` with torch's fused kernel where every parameter's device and dtype
    have one (Adam and AdamW on CUDA, and on CPU from torch 2.4), else torch's default.

    The same update, computed in one kernel over all parameters instead of a loop of small
    per-tensor ops: on a CPU that loop over a CLIP text tower (its 49,408-row token embedding
    included) took as long as the step's forward and backward together. Decided here, from the
    parameters (already on their device): recent torch checks the device only at the first step.
    """
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    devices = fused_kernel_devices()
    if not all(p.is_floating_point() and p.device.type in devices for p in tensors):
        log.debug("no fused %s for these parameters: torch's default implementation", cls.__name__)
        return cls(params, **kwargs)
    return cls(params, fused=True, **kwargs)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, keeping this optimizer's kernel choice (fused or not):
    it belongs to the machine that resumes, not to the one that saved. A state with other
    parameter groups goes to torch unchanged, which says what does not match."""
    saved = state["param_groups"]
    if len(saved) == len(optimizer.param_groups):
        saved = [{**group_state, **{k: group[k] for k in KERNEL_FLAGS if k in group}}
                 for group_state, group in zip(saved, optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": saved})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain containers (loadable with weights_only=True)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {"python": [version, list(state), gauss], "torch": torch.get_rng_state(),
           "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class EpochSampler(Sampler):
    """Yields `(epoch, index)` in a permutation that depends only on (seed, epoch).

    Passing the epoch with the index lets datasets make per-epoch random choices (FashionIQ's
    caption form) that a resumed run repeats exactly, in any worker process.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            order = range(self.size)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        return iter((self.epoch, i) for i in order)

    def __len__(self) -> int:
        return self.size


def choice_for(seed: int, epoch: int, index: int, n: int) -> int:
    """A deterministic uniform choice in [0, n) for one sample in one epoch."""
    return random.Random(f"{seed}:{epoch}:{index}").randrange(n) if n > 1 else 0


@dataclass
class Run:
    """The run directory and the logs in it (writes happen on the main process only)."""

    path: Path
    is_main: bool

    @classmethod
    def create(cls, args: argparse.Namespace, prefix: str, is_main: bool) -> "Run":
        if getattr(args, "run_dir", None):
            path = Path(args.run_dir)
        else:
            path = Path(args.output_dir) / args.experiment_name
            if is_main and last_checkpoint(path) is not None:
                raise CIRError(f"{path}: a run with this name exists; use --resume {path} or another --experiment-name")
            args.run_dir = str(path)
        run = cls(path=path, is_main=is_main)
        if is_main:
            path.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path / "log.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logging.getLogger().addHandler(handler)
            # A new run (or one that failed before its first epoch) writes its config; a resumed
            # run records only a raised --epochs.
            config = {"program": prefix, **portable_config(args)}
            if (path / "config.json").exists() and getattr(args, "resume", None):
                config = {**json.loads((path / "config.json").read_text()), "epochs": args.epochs}
            else:  # a fresh start (maybe after one that failed before its first checkpoint)
                for name in ("train_metrics.csv", "train_steps.csv", "validation_metrics.csv"):
                    (path / name).unlink(missing_ok=True)
            write_json(path / "config.json", config)
        return run

    def append_csv(self, name: str, row: Mapping[str, Any]) -> None:
        self.append_rows(name, [row])

    def append_rows(self, name: str, rows: list[Mapping[str, Any]]) -> None:
        if not self.is_main or not rows:
            return
        path = self.path / name
        frame = pd.DataFrame([dict(row) for row in rows])
        frame.to_csv(path, mode="a", header=not path.exists(), index=False)

    def truncate_csvs(self, last_epoch: int) -> None:
        """Drop rows of epochs after the resumed checkpoint: they will be run again."""
        if not self.is_main:
            return
        for name in ("train_metrics.csv", "train_steps.csv", "validation_metrics.csv"):
            path = self.path / name
            if path.exists():
                frame = pd.read_csv(path)
                frame[frame["epoch"] <= last_epoch].to_csv(path, index=False)


def save_checkpoint_dir(path: Path, modules: Mapping[str, tuple[nn.Module, dict]],
                        state: dict[str, Any] | None = None) -> None:
    """Write a whole checkpoint folder, then swap it in: a kill leaves the old one or the new one."""
    def fill(tmp: Path) -> None:
        for name, (module, metadata) in modules.items():
            save_weights(tmp / f"{name}.safetensors", module.state_dict(), metadata)
        if state is not None:
            save_torch_state(tmp / "training_state.pt", state)
    write_dir(path, fill)


def last_checkpoint(run_dir: Path) -> Path | None:
    for name in ("last", "last.old"):
        if (run_dir / name / "training_state.pt").is_file():
            return run_dir / name
    return None


@dataclass
class Selection:
    """Which validation numbers keep a `best` checkpoint, and the best seen so far."""

    keys: tuple[str, ...] = ("score",)
    best: dict[str, float] = field(default_factory=dict)

    def improved(self, metrics: Mapping[str, float]) -> list[str]:
        better = [k for k in self.keys if metrics[k] > self.best.get(k, -math.inf)]
        self.best.update({k: metrics[k] for k in better})
        return better

    @staticmethod
    def folder(key: str) -> str:
        return "best" if key == "score" else f"best_{key}"


class Float32Forward(nn.Module):
    """A prepared module's own forward, without the autocast wrapper `accelerator.prepare` puts
    on it: validation and checkpoint selection run in float32, as the published code's do, and
    agree with `clip-cir eval` of the saved checkpoint."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.module).forward(self.module, *args, **kwargs)


@dataclass
class Loop:
    """Everything the shared loop needs from a stage."""

    model: nn.Module
    """The prepared (possibly DDP-wrapped) module whose forward the loss calls."""
    optimizer: torch.optim.Optimizer
    loader: Any
    """Iterable of batches with `set_epoch(epoch)`: a DataLoader prepared by Accelerate over an
    `EpochSampler`, or stage 2's `FeatureBatches`."""
    forward: Callable[[Any], Sequence[torch.Tensor]]
    """batch -> per-example features (the part with the trained parameters; see accumulation)."""
    loss: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    """The whole local batch's features -> the loss."""
    validate: Callable[[int], dict[str, float]]
    saved_modules: Callable[[int, Mapping[str, float]], dict[str, tuple[nn.Module, dict]]]
    """(epoch, metrics) -> {name: (unwrapped module, metadata)}, written as `<name>.safetensors`."""
    train_mode: Callable[[], None]
    """Put trainable parts in train mode and frozen parts in eval mode."""
    selection: Selection = field(default_factory=Selection)
    accum_steps: int = 1
    """Micro-batches per optimizer step (exact large-batch contrastive training)."""


def resume_state(accelerator, run: Run, loop: Loop) -> tuple[int, int, dict[str, Any] | None]:
    """Restore weights, optimizer, RNG and selection from RUN/last; return the epoch to start at,
    the optimizer steps already taken (what the learning-rate schedule continues from) and the
    schedule the run was saved with (None for states saved before schedules existed)."""
    checkpoint = last_checkpoint(run.path)
    if checkpoint is None:
        raise CIRError(f"{run.path}: no saved state to resume from (last/training_state.pt)")
    state = load_torch_state(checkpoint / "training_state.pt")
    for name, (module, _) in loop.saved_modules(0, {}).items():
        weights, _ = read_safetensors(checkpoint / f"{name}.safetensors")
        module.load_state_dict(weights)
    load_optimizer_state(loop.optimizer, state["optimizer"])
    if "scaler" in state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    if len(rngs) != accelerator.num_processes:
        log.warning("resuming with %d processes from a run saved with %d: random streams differ",
                    accelerator.num_processes, len(rngs))
    set_rng_state(rngs[min(accelerator.process_index, len(rngs) - 1)])
    loop.selection.best = dict(state["best"])
    epoch = int(state["epoch"])
    step = int(state.get("step", epoch * len(loop.loader)))  # states saved before schedules: every epoch full
    if step != epoch * len(loop.loader):
        log.warning("the run took %d optimizer steps in %d epochs, but an epoch now has %d: the training data "
                    "changed; the learning-rate schedule continues from step %d", step, epoch, len(loop.loader),
                    step)
    run.truncate_csvs(epoch)
    log.info("resuming %s after epoch %d (optimizer step %d)", run.path, epoch, step)
    return epoch, step, state.get("lr_schedule")


def fit(accelerator, run: Run, loop: Loop, epochs: int, validation_frequency: int, schedule: LRSchedule,
        start_epoch: int = 0, start_step: int = 0, progress: bool = True) -> dict[str, float]:
    """The training loop shared by every stage. Returns the last validation metrics.

    `schedule` sets the learning rate before every optimizer step from the number of steps taken
    (`start_step` in a resumed run), as open_clip does."""
    metrics: dict[str, float] = {}
    step = start_step
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        # Through the prepared loader: Accelerate otherwise re-sets the sampler's epoch from its own
        # per-process counter, which restarts at 0 in a resumed run.
        loop.loader.set_epoch(epoch)
        loop.train_mode()
        total, steps = torch.zeros((), device=accelerator.device), 0
        step_rows: list[dict[str, Any]] = []
        bar = tqdm(loop.loader, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                   disable=None if progress and accelerator.is_main_process else True)
        for batch in bar:
            lr = schedule.apply(loop.optimizer, step)
            loss = training_step(accelerator, loop.model, loop.forward, loop.loss, batch, loop.accum_steps)
            loop.optimizer.step()
            loop.optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
            steps += 1
            step += 1
            loss_value = loss.item()
            step_rows.append({"step": step, "epoch": epoch + 1, "lr": lr, "loss": loss_value})
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
        mean_loss = accelerator.reduce(total, reduction="mean").item() / max(steps, 1)
        # `lr`: the learning rate of the epoch's last step (every step's is in train_steps.csv).
        row = {"epoch": epoch + 1, "steps": steps, "train_loss": mean_loss,
               "lr": loop.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
               "clip_images_encoded": features.encode_counts["image"],
               "clip_texts_encoded": features.encode_counts["text"]}
        log.info("epoch %d/%d: loss %.4f (%d steps, lr %.3g, %.1fs)", epoch + 1, epochs, mean_loss, steps,
                 row["lr"], row["seconds"])
        validate_now = (epoch + 1) % validation_frequency == 0 or epoch + 1 == epochs
        if validate_now and accelerator.is_main_process:
            metrics = loop.validate(epoch)
            better = loop.selection.improved(metrics)
            run.append_csv("validation_metrics.csv", {"epoch": epoch + 1, **metrics})
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=epoch + 1)
            log.info("validation after epoch %d: %s", epoch + 1,
                     ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "soft" not in k))
            for key in better:
                save_checkpoint_dir(run.path / Selection.folder(key), loop.saved_modules(epoch + 1, metrics))
        row["clip_images_encoded"] = features.encode_counts["image"]
        row["clip_texts_encoded"] = features.encode_counts["text"]
        run.append_csv("train_metrics.csv", row)
        run.append_rows("train_steps.csv", step_rows)
        accelerator.log({"train/loss": mean_loss, "train/lr": row["lr"]}, step=epoch + 1)
        if validate_now:  # `last/` goes with each validation: a Combiner epoch can cost less than its write
            rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
            if accelerator.is_main_process:
                state = {"epoch": epoch + 1, "step": step, "lr_schedule": asdict(schedule),
                         "optimizer": loop.optimizer.state_dict(), "rng": rngs, "best": dict(loop.selection.best)}
                if accelerator.scaler is not None:  # fp16 loss scale: part of the optimisation state
                    state["scaler"] = accelerator.scaler.state_dict()
                save_checkpoint_dir(run.path / "last", loop.saved_modules(epoch + 1, metrics), state)
        accelerator.wait_for_everyone()
    return metrics


def start_run(args: argparse.Namespace, prefix: str):
    """Accelerator (device, precision, processes), run directory and tracker for a training program."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import broadcast_object_list

    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision,
                              log_with=None if args.tracker == "none" else args.tracker,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if args.batch_size % accelerator.num_processes:
        raise CIRError(f"--batch-size {args.batch_size} (global) must be divisible by the "
                       f"{accelerator.num_processes} processes")
    if hasattr(args, "accum_steps"):
        check_accum_steps(args, accelerator.num_processes)
    if not getattr(args, "run_dir", None):
        name = [args.experiment_name or f"{prefix}-{getattr(args, 'dataset', 'data')}-{datetime.now():%Y%m%d-%H%M%S}"]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
        args.experiment_name = name[0]
    run = Run.create(args, prefix, accelerator.is_main_process)
    if args.tracker != "none":
        accelerator.init_trackers("clip-cir", flat_config(vars(args)),
                                  init_kwargs=tracker_setup(args.tracker, run.path, run.path.name))
    log.info("run directory: %s | processes: %d | device: %s | mixed precision: %s", run.path,
             accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    return accelerator, run


def report_skipped_images(run: Run, images: ImageCheck) -> None:
    """With --skip-missing-images: RUN/skipped_images.txt and one line in the log."""
    if not images.skipped:
        return
    path = run.path / "skipped_images.txt"
    if run.is_main:
        write_text(path, "\n".join(images.report_lines()) + "\n")
        log.warning("%s; listed in %s", images.summary(), path)
        changed = images.changed_evaluation()
        if changed:
            log.warning("validation of %s runs without the skipped images: its numbers are not comparable "
                        "with published ones", ", ".join(changed))


def clip_metadata(clip, stage: str, epoch: int, metrics: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    """What a CLIP checkpoint records so it loads without a model name (`load_clip`)."""
    return {"kind": "clip", "stage": stage, "model_name": clip.model_name, "model_config": clip.config,
            "source": clip.source, **extra, "epoch": epoch, "metrics": {k: round(v, 6) for k, v in metrics.items()}}


def train(accelerator, run: Run, loop: Loop, args: argparse.Namespace, progress: bool) -> dict[str, float]:
    """Resume if asked, run the loop, close the trackers and say where the best checkpoint is."""
    schedule = LRSchedule.from_args(args, steps_per_epoch=len(loop.loader))
    if args.resume:
        start_epoch, start_step, saved = resume_state(accelerator, run, loop)
        if schedule.kind == "cosine" and saved is not None and saved["total_steps"] != schedule.total_steps:
            log.warning("--epochs %d moves the cosine schedule's end from step %d to %d: from step %d on the "
                        "learning rates differ from those the run was started with", args.epochs,
                        saved["total_steps"], schedule.total_steps, start_step)
    else:
        # From here on the random stream (dropout) depends only on the seed and the rank: not on
        # what loading, caching or encoding did before.
        seed_everything(args.seed + accelerator.process_index)
        start_epoch = start_step = 0
    metrics = fit(accelerator, run, loop, args.epochs, args.validation_frequency, schedule, start_epoch,
                  start_step, progress)
    accelerator.end_training()
    if accelerator.is_main_process:
        best = ", ".join(f"{k} {v:.4g}" for k, v in loop.selection.best.items())
        log.info("done: best %s; checkpoints in %s", best, run.path / Selection.folder(loop.selection.keys[0]))
    return metrics


def program_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object],
                 argv: list[str] | None, prog: str) -> None:
    """Entry point of a training program: logging, --resume config, one-line errors."""
    from clip_cir.options import run_main, setup_logging

    setup_logging()
    run_main(lambda: run(parse_with_resume(parser, argv)), prog)
