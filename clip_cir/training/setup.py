"""The one start-up every training program shares, and `run_training`, which drives a stage from
its settings: check the settings, read the data, seed, build the model and its preprocessing,
open the run directory (Accelerator, CUDA speed settings, tracker), report skipped images; then
the stage builds itself (`Stage.from_setup`) and the loop trains it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import torch

from clip_cir.config import TrainingProgramConfig
from clip_cir.data.images import ImageCheck
from clip_cir.encoding.feature_cache import FeatureCache, feature_cache_for
from clip_cir.encoding.pixels import PixelCache, loader_workers, pixel_cache_for
from clip_cir.models.clip import LoadedCLIP, load_clip
from clip_cir.models.transforms import ImageTransform, transform_for
from clip_cir.training.loop import Stage, TrainedRun, train
from clip_cir.training.run import Run, open_run, report_skipped_images, seed_everything

log = logging.getLogger("clip_cir")

D = TypeVar("D")


@dataclass
class TrainingSetup(Generic[D]):
    """What a stage is built from: its settings, its training data (as its program reads it), the
    CLIP and preprocessing, and the Accelerator and run directory it runs in."""

    config: Any
    data: D
    images: ImageCheck
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


def start_training(config: TrainingProgramConfig, load: Callable[[Any, ImageCheck], D]) -> TrainingSetup[D]:
    """Everything before a stage is built, in the order that makes runs reproducible: settings
    and data are checked before any work, the seed is set before the model is built (a random
    init is part of the run)."""
    config.check()
    images = ImageCheck.for_purpose("training", config.data.skip_missing_images)
    data = load(config, images)
    seed_everything(config.training.seed)
    clip = load_clip(config.model.model, config.model.pretrained)
    transform = transform_for(clip, config.model.transform, config.model.target_ratio)
    accelerator, run = open_run(config)
    report_skipped_images(run, images)
    return TrainingSetup(config=config, data=data, images=images, clip=clip, transform=transform,
                         accelerator=accelerator, run=run)


def run_training(stage_class: type[Stage], config: TrainingProgramConfig) -> TrainedRun:
    """Train a stage from its settings: the start-up, the stage, the loop."""
    setup = start_training(config, stage_class.load)
    return train(setup, stage_class.from_setup(setup))
