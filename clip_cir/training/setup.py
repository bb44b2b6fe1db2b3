"""The one start-up every training program shares, and `run_training`, which drives a stage from
its settings: check the settings, read the data, seed, build the model and its preprocessing,
open the run directory (Accelerator, tracker), report skipped images; then the stage builds
itself (`Stage.from_setup`) and the loop trains it.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from clip_cir.config import TrainingProgramConfig
from clip_cir.data.images import ImageCheck
from clip_cir.models.clip import load_clip
from clip_cir.training.loop import Stage, TrainedRun, train
from clip_cir.training.run import TrainingSetup, open_run, report_skipped_images, seed_everything

D = TypeVar("D")


def start_training(config: TrainingProgramConfig, load: Callable[[Any, ImageCheck], D]) -> TrainingSetup[D]:
    """Everything before a stage is built, in the order that makes runs reproducible: settings
    and data are checked before any work, the seed is set before the model is built (a random
    init is part of the run)."""
    from accelerate import PartialState

    config.check(PartialState(cpu=config.device.cpu).num_processes)  # the processes `accelerate launch` started
    images = ImageCheck.for_purpose("training", config.data.skip_missing_images)
    data = load(config, images)
    seed_everything(config.training.seed)
    clip = load_clip(config.model.model, config.model.pretrained)
    transform = clip.image_transform(config.model.transform, config.model.target_ratio)
    accelerator, run = open_run(config)
    report_skipped_images(run, images)
    return TrainingSetup(config=config, data=data, clip=clip, transform=transform, accelerator=accelerator, run=run)


def run_training(stage_class: type[Stage], config: TrainingProgramConfig) -> TrainedRun:
    """Train a stage from its settings: the start-up, the stage, the loop."""
    setup = start_training(config, stage_class.load)
    try:
        return train(setup, stage_class.from_setup(setup))
    finally:
        setup.run.close()
