"""The run directory a training program writes, and what makes a run reproducible: seeding,
RNG state, atomic checkpoint folders, CSV logs, the Accelerator and tracker it runs with. The
run directory's layout is documented once, in docs/training.md ("Run directory").
"""

from __future__ import annotations

import json
import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Iterator, Mapping, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from clip_cir.config import TrainingProgramConfig, portable_config
from clip_cir.data.images import ImageCheck
from clip_cir.encoding.feature_store import FeatureCache, feature_cache_for
from clip_cir.encoding.pixels import PixelCache, loader_workers, pixel_cache_for
from clip_cir.errors import CIRError
from clip_cir.models.clip import LoadedCLIP
from clip_cir.models.files import (
    save_torch_state,
    save_weights,
    write_dir,
    write_json,
    write_text,
)
from clip_cir.models.transforms import ImageTransform
from clip_cir.training.tracking import flat_config, tracker_setup

log = logging.getLogger("clip_cir")

D = TypeVar("D")


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


@dataclass
class Run:
    """The run directory and the logs in it (writes happen on the main process only)."""

    path: Path
    is_main: bool
    log_handler: logging.Handler | None = None
    """Where the run's log.txt is written from (removed by `close`)."""
    log_level: int | None = None
    """The `clip_cir` logger's own level before the run (restored by `close`)."""

    @classmethod
    def create(cls, config: TrainingProgramConfig, name: str, is_main: bool) -> "Run":
        """The resumed run's directory, or a new one: output_dir/`name`."""
        resume = config.run.resume
        if resume:
            path = Path(resume)
        else:
            path = Path(config.run.output_dir) / name
            if is_main and last_checkpoint(path) is not None:
                raise CIRError(f"{path}: a run with this name exists; use --resume {path} or another --experiment-name")
        run = cls(path=path, is_main=is_main)
        if is_main:
            path.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path / "log.txt")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logging.getLogger().addHandler(handler)
            run.log_handler = handler
            ours = logging.getLogger("clip_cir")
            if ours.getEffectiveLevel() > logging.INFO:  # a run started from Python, no logging set up
                run.log_level = ours.level
                ours.setLevel(logging.INFO)  # log.txt has the run's messages, as from the programs
            # A new run (or one that failed before its first epoch) writes its config; a resumed
            # run records only a raised --epochs.
            settings = {"program": config.program, **portable_config(run_settings(config, name, path))}
            if (path / "config.json").exists() and resume:
                settings = {**json.loads((path / "config.json").read_text()), "epochs": config.training.epochs}
            else:  # a fresh start (maybe after one that failed before its first checkpoint)
                for csv_name in ("train_metrics.csv", "train_steps.csv", "validation_metrics.csv"):
                    (path / csv_name).unlink(missing_ok=True)
            write_json(path / "config.json", settings)
        return run

    def close(self) -> None:
        """Stop writing this process's log to log.txt (a later run in the process has its own)."""
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
            self.log_handler = None
        if self.log_level is not None:
            logging.getLogger("clip_cir").setLevel(self.log_level)
            self.log_level = None

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


def run_settings(config: TrainingProgramConfig, name: str, path: Path) -> dict[str, Any]:
    """The flat settings with the data's name and the run's name and directory: what config.json
    and the tracker record."""
    return {"dataset": config.data_name, **config.to_options(), "experiment_name": name, "run_dir": str(path)}


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


CUDA_FLAGS = ((torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "deterministic"),
              (torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32"))
"""The process-wide settings that decide how CUDA computes (cuDNN's algorithm choice, TF32)."""
TORCH_DEFAULTS = (False, False, True, False)
"""Their values in a fresh process: what `clip-cir eval` computes with."""


def _speed_flags(device: torch.device, deterministic: bool) -> tuple[bool, ...] | None:
    """On CUDA, what open_clip_train sets at start: cuDNN benchmark mode (it times the convolution
    kernels for each input shape and keeps the fastest) and TF32 matrix products. Both change
    results in the last bits from one run to the next; `deterministic` turns them off (and asks
    cuDNN for deterministic kernels) for bit-exact reruns. None (nothing to set) elsewhere."""
    return (not deterministic, deterministic, not deterministic, not deterministic) if device.type == "cuda" else None


def _set_cuda_flags(values: tuple[bool, ...] | None) -> None:
    for (module, name), value in zip(CUDA_FLAGS, values or ()):
        setattr(module, name, value)


def set_cuda_speed(device: torch.device, deterministic: bool) -> None:
    """The CUDA speed settings (`_speed_flags`), for the rest of the process."""
    _set_cuda_flags(_speed_flags(device, deterministic))


@contextmanager
def _cuda_flags(values: tuple[bool, ...] | None) -> Iterator[None]:
    """`values` inside, the process's own settings back afterwards."""
    before = tuple(getattr(module, name) for module, name in CUDA_FLAGS)
    _set_cuda_flags(values)
    try:
        yield
    finally:
        _set_cuda_flags(before)


def cuda_speed(device: torch.device, deterministic: bool):
    """The CUDA speed settings inside: what trains runs fast, and whatever the process does next
    (an evaluation, the next run) is unchanged."""
    return _cuda_flags(_speed_flags(device, deterministic))


def evaluation_numerics():
    """torch's defaults inside (no cuDNN benchmark mode, TF32 convolutions but no TF32 matrix
    products), whatever the run set for its steps: validation computes what `clip-cir eval`
    computes for the same checkpoint."""
    return _cuda_flags(TORCH_DEFAULTS)


def open_run(config: TrainingProgramConfig):
    """Accelerator (device, precision, processes), run directory and tracker for a training
    program."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import broadcast_object_list

    run_config, device_config = config.run, config.device
    accelerator = Accelerator(cpu=device_config.cpu, mixed_precision=device_config.mixed_precision,
                              log_with=None if run_config.tracker == "none" else run_config.tracker,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    name = [run_config.experiment_name]
    if not run_config.resume and not run_config.experiment_name:
        name = [f"{config.program}-{config.data_name}-{datetime.now():%Y%m%d-%H%M%S}"]
        if accelerator.num_processes > 1:
            broadcast_object_list(name)
    run = Run.create(config, name[0], accelerator.is_main_process)
    if run_config.tracker != "none":
        accelerator.init_trackers("clip-cir", flat_config(run_settings(config, name[0], run.path)),
                                  init_kwargs=tracker_setup(run_config.tracker, run.path, run.path.name))
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
            "preprocess_cfg": clip.preprocess_cfg, "source": clip.source, **extra, "epoch": epoch,
            "metrics": {k: round(v, 6) for k, v in metrics.items()}}


@dataclass
class TrainingSetup(Generic[D]):
    """What a stage is built from: its settings, its training data (as its program reads it), the
    CLIP and preprocessing, and the Accelerator and run directory it runs in."""

    config: Any
    data: D
    clip: LoadedCLIP
    transform: ImageTransform
    accelerator: Any
    run: Run

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def progress(self) -> bool:
        """Progress bars: on the main process, unless the settings turn them off."""
        return not self.config.run.no_progress and self.accelerator.is_main_process

    @property
    def workers(self) -> int:
        """Data-loading workers per process (the settings' number, or one that suits the machine)."""
        return loader_workers(self.config.device.num_workers, self.device.type == "cuda",
                              self.accelerator.num_processes)

    def feature_cache(self) -> FeatureCache:
        return feature_cache_for(self.config.cache)

    def pixel_cache(self, repeated: bool) -> PixelCache | None:
        """The pixel cache for images decoded `repeated`ly (every epoch) or once."""
        return pixel_cache_for(self.config.cache, repeated)
