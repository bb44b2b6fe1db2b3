"""What stage 1, stage 2 and pretraining share: the `Stage` each of them is (its step,
validation and saved modules), and the one training loop (`fit`) that drives a stage, with the
run directory's resumable checkpoints and CSV logs (docs/training.md, "Run directory").

Validation follows the published schedule by default (`TrainingConfig.validates_after`), and
`last/` is written with every validation and after the last epoch. Resuming restores weights,
optimizer, RNG, epoch and step count from `last/`; batch order and caption choices depend only
on (seed, epoch) and the learning rate only on the step count, so a resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from clip_cir.config import TrainingConfig
from clip_cir.encoding import extraction
from clip_cir.errors import CIRError
from clip_cir.models.files import (
    load_torch_state,
    read_safetensors,
)
from clip_cir.training.accumulation import Features, training_step
from clip_cir.training.optim import LRSchedule, load_optimizer_state
from clip_cir.training.run import (
    Run,
    TrainingSetup,
    cuda_speed,
    evaluation_numerics,
    last_checkpoint,
    rng_state,
    save_checkpoint_dir,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger("clip_cir")


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
        self.uses_tokens = getattr(module, "uses_tokens", False)  # what the module reads (evaluation asks)
        self.reads_caption_tokens = getattr(module, "reads_caption_tokens", True)
        self.name = getattr(module, "name", type(module).__name__)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return type(self.module).forward(self.module, *args, **kwargs)


class Stage(ABC):
    """One training stage of the method as the shared loop drives it: its step (`forward`, then
    `loss` over the whole batch's features), its validation and the modules it saves."""

    validates: bool = True
    """False for a stage without validation data: the loop then only writes `last/`, on the
    validation schedule and after the last epoch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                 selection: Selection | None = None, accum_steps: int = 1):
        self.model = model
        """The prepared (possibly DDP-wrapped) module `forward` calls."""
        self.optimizer = optimizer
        self.loader = loader
        """Iterable of batches with `set_epoch(epoch)`: a DataLoader prepared by Accelerate over an
        `EpochSampler`, or stage 2's `FeatureBatches`."""
        self.selection = selection or Selection()
        self.accum_steps = accum_steps
        """Micro-batches per optimizer step (exact large-batch contrastive training)."""

    @abstractmethod
    def forward(self, batch: Any) -> Features:
        """batch -> per-example features (the part with the trained parameters; see accumulation)."""

    @abstractmethod
    def loss(self, features: Features) -> torch.Tensor:
        """The whole local batch's features -> the loss."""

    @abstractmethod
    def train_mode(self) -> None:
        """Put trainable parts in train mode and frozen parts in eval mode (before every epoch)."""

    @abstractmethod
    def validate(self, epoch: int) -> dict[str, float]:
        """Metrics after 0-based `epoch`, with every key of `selection` (main process only)."""

    @abstractmethod
    def saved_modules(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, tuple[nn.Module, dict]]:
        """{name: (unwrapped module, metadata)}, written as `<name>.safetensors`."""

    @staticmethod
    def load(config: Any, images: Any) -> Any:
        """The program's training data from its settings (`setup.start_training` calls it before
        any model is built, so bad data stops the run before any work)."""
        raise NotImplementedError

    @classmethod
    def from_setup(cls, setup: TrainingSetup) -> "Stage":
        """The stage, built from its settings and what the shared start-up made."""
        raise NotImplementedError

    def before_training(self, run: Run, resumed: bool) -> None:  # noqa: B027 - optional, none by default
        """Work before the first epoch (pretraining measures the held-out loss)."""


@dataclass
class TrainedRun:
    """What a training program leaves: its run directory, the best validation numbers by which
    its `best*/` checkpoints were kept, and the last validation's metrics."""

    path: Path
    best: dict[str, float]
    metrics: dict[str, float]

    @property
    def best_checkpoint(self) -> Path:
        """The folder of the checkpoint kept by the main selection score (a run that never
        validated, as a zero-shot run without a benchmark: its last checkpoint)."""
        return self.path / ("best" if self.best else "last")


def resume_state(accelerator, run: Run, stage: Stage) -> tuple[int, int, dict[str, Any] | None]:
    """Restore weights, optimizer, RNG and selection from RUN/last; return the epoch to start at,
    the optimizer steps already taken (what the learning-rate schedule continues from) and the
    schedule the run was saved with (None for states saved before schedules existed)."""
    checkpoint = last_checkpoint(run.path)
    if checkpoint is None:
        raise CIRError(f"{run.path}: no saved state to resume from (last/training_state.pt)")
    state = load_torch_state(checkpoint / "training_state.pt")
    for name, (module, _) in stage.saved_modules(0, {}).items():
        weights, _ = read_safetensors(checkpoint / f"{name}.safetensors")
        module.load_state_dict(weights)
    load_optimizer_state(stage.optimizer, state["optimizer"])
    if "scaler" in state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    if len(rngs) != accelerator.num_processes:
        log.warning("resuming with %d processes from a run saved with %d: random streams differ",
                    accelerator.num_processes, len(rngs))
    set_rng_state(rngs[min(accelerator.process_index, len(rngs) - 1)])
    stage.selection.best = dict(state["best"])
    epoch = int(state["epoch"])
    step = int(state.get("step", epoch * len(stage.loader)))  # states saved before schedules: every epoch full
    if step != epoch * len(stage.loader):
        log.warning("the run took %d optimizer steps in %d epochs, but an epoch now has %d: the training data "
                    "changed; the learning-rate schedule continues from step %d", step, epoch, len(stage.loader),
                    step)
    run.truncate_csvs(epoch)
    log.info("resuming %s after epoch %d (optimizer step %d)", run.path, epoch, step)
    return epoch, step, state.get("lr_schedule")


def fit(accelerator, run: Run, stage: Stage, training: TrainingConfig, schedule: LRSchedule,
        start_epoch: int = 0, start_step: int = 0, progress: bool = True) -> dict[str, float]:
    """The training loop shared by every stage. Returns the last validation metrics.

    Validates after the epochs `training.validates_after` names, keeps `best/` by the stage's
    selection scores and writes `last/` with each validation and after the last epoch.

    `schedule` sets the learning rate before every optimizer step from the number of steps taken
    (`start_step` in a resumed run), as open_clip does. Reading a loss back waits for the device,
    so it happens only every `log_every` optimizer steps (counted over the run, so a resumed run
    logs the same steps) and at each epoch's last; the epoch's mean loss is summed on the device."""
    metrics: dict[str, float] = {}
    step, epochs, log_every = start_step, training.epochs, training.log_every
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        # Through the prepared loader: Accelerate otherwise re-sets the sampler's epoch from its own
        # per-process counter, which restarts at 0 in a resumed run.
        stage.loader.set_epoch(epoch)
        stage.train_mode()
        total, steps, logged = torch.zeros((), device=accelerator.device), 0, True
        step_rows: list[dict[str, Any]] = []
        bar = tqdm(stage.loader, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False,
                   disable=None if progress and accelerator.is_main_process else True)
        for batch in bar:
            lr = schedule.apply(stage.optimizer, step)
            loss = training_step(accelerator, stage.model, stage.forward, stage.loss, batch, stage.accum_steps)
            stage.optimizer.step()
            stage.optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
            steps += 1
            step += 1
            logged = step % log_every == 0
            step_rows.append({"step": step, "epoch": epoch + 1, "lr": lr, "loss": loss.item() if logged else math.nan})
            if logged:
                bar.set_postfix(loss=f"{step_rows[-1]['loss']:.4f}", lr=f"{lr:.3g}")
        if not logged:  # the epoch's last step is always logged
            step_rows[-1]["loss"] = loss.item()
        mean_loss = accelerator.reduce(total, reduction="mean").item() / max(steps, 1)
        # `lr`: the learning rate of the epoch's last step (every step's is in train_steps.csv).
        row = {"epoch": epoch + 1, "steps": steps, "train_loss": mean_loss,
               "lr": stage.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        log.info("epoch %d/%d: loss %.4f (%d steps, lr %.3g, %.1fs)", epoch + 1, epochs, mean_loss, steps,
                 row["lr"], row["seconds"])
        scheduled = training.validates_after(epoch)
        validate_now = scheduled and stage.validates
        if validate_now and accelerator.is_main_process:
            with evaluation_numerics():
                metrics = stage.validate(epoch)
            better = stage.selection.improved(metrics)
            run.append_csv("validation_metrics.csv", {"epoch": epoch + 1, **metrics})
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=epoch + 1)
            log.info("validation after epoch %d: %s", epoch + 1,
                     ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if "soft" not in k))
            for key in better:
                save_checkpoint_dir(run.path / Selection.folder(key), stage.saved_modules(epoch + 1, metrics))
        # CLIP encodes so far, read after validation: validating may encode (stage 1's trained
        # towers re-encode the gallery and captions), and the row counts the whole epoch's work.
        row["clip_images_encoded"] = extraction.encode_counts["image"]
        row["clip_texts_encoded"] = extraction.encode_counts["text"]
        run.append_csv("train_metrics.csv", row)
        run.append_rows("train_steps.csv", step_rows)
        accelerator.log({"train/loss": mean_loss, "train/lr": row["lr"]}, step=epoch + 1)
        # `last/` goes with each (scheduled) validation (a Combiner epoch can cost less than its
        # write) and after the last epoch, validated or not: a finished run resumes as finished.
        if scheduled or epoch + 1 == epochs:
            rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
            if accelerator.is_main_process:
                state = {"epoch": epoch + 1, "step": step, "lr_schedule": asdict(schedule),
                         "optimizer": stage.optimizer.state_dict(), "rng": rngs, "best": dict(stage.selection.best)}
                if accelerator.scaler is not None:  # fp16 loss scale: part of the optimisation state
                    state["scaler"] = accelerator.scaler.state_dict()
                saved_metrics = metrics if validate_now else {}
                save_checkpoint_dir(run.path / "last", stage.saved_modules(epoch + 1, saved_metrics), state)
        accelerator.wait_for_everyone()
    return metrics


def train(setup: TrainingSetup, stage: Stage) -> TrainedRun:
    """Resume if asked, run the loop, close the trackers and say where the best checkpoint is."""
    accelerator, run, config = setup.accelerator, setup.run, setup.config
    training = config.training
    schedule = LRSchedule.from_config(training, steps_per_epoch=len(stage.loader))
    resumed = config.run.resume is not None
    with evaluation_numerics():
        stage.before_training(run, resumed)
    if resumed:
        start_epoch, start_step, saved = resume_state(accelerator, run, stage)
        if schedule.kind == "cosine" and saved is not None and saved["total_steps"] != schedule.total_steps:
            log.warning("--epochs %d moves the cosine schedule's end from step %d to %d: from step %d on the "
                        "learning rates differ from those the run was started with", training.epochs,
                        saved["total_steps"], schedule.total_steps, start_step)
    else:
        # From here on the random stream (dropout) depends only on the seed and the rank: not on
        # what loading, caching or encoding did before.
        seed_everything(training.seed + accelerator.process_index)
        start_epoch = start_step = 0
    # The CUDA speed settings hold for the training epochs only: the features a stage computed
    # when it was built (and cached) and every validation are computed as `clip-cir eval` does.
    with cuda_speed(accelerator.device, config.device.deterministic):
        metrics = fit(accelerator, run, stage, training, schedule, start_epoch, start_step, setup.progress)
    accelerator.end_training()
    if accelerator.is_main_process and stage.validates:
        best = ", ".join(f"{k} {v:.4g}" for k, v in stage.selection.best.items())
        log.info("done: best %s; checkpoints in %s", best, run.path / Selection.folder(stage.selection.keys[0]))
    elif accelerator.is_main_process:
        log.info("done (no validation data): the last checkpoint is in %s", run.path / "last")
    return TrainedRun(path=run.path, best=dict(stage.selection.best), metrics=metrics)
