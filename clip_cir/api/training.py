"""Training from Python (docs/api.md): settings in, a trained run out.

`finetune`, `train_combiner`, `pretrain`, `train_attributes` and `train_zero_shot` run the same
code as `clip-cir finetune`, `train-combiner`, `pretrain`, `train-attributes` and `zero-shot`
(which call them): settings are a config object of `clip_cir.config`, flat options with the
command line's names, or both.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from clip_cir.config import (
    AttributesConfig,
    PretrainConfig,
    Stage1Config,
    Stage2Config,
    TrainingProgramConfig,
    ZeroShotConfig,
    check_resumed_options,
    read_run_config,
)
from clip_cir.errors import CIRError
from clip_cir.training.loop import TrainedRun

C = TypeVar("C", bound=TrainingProgramConfig)


def training_settings(cls: type[C], config: C | None, options: dict[str, Any]) -> C:
    """Settings from a config and/or flat options (options win). When they resume a run
    (`resume=RUN`), the run's saved settings are the base, and what they give may only change how
    long and how it runs: the rest must agree with the run's."""
    if config is not None and not isinstance(config, cls):
        raise CIRError(f"these settings are a {type(config).__name__}; this program takes a {cls.__name__}")
    settings = cls.from_options(options, base=config)
    resume = settings.run.resume
    if resume is None:
        return settings
    known = cls.option_names()
    defaults = cls().to_options()  # a settings object: what it sets apart from the defaults, and the options
    given = {k: v for k, v in settings.to_options().items()
             if k in options or (config is not None and v != defaults[k])}
    saved = read_run_config(resume)
    check_resumed_options(saved, given, known)
    return cls.from_options(given, base=cls.from_options({k: v for k, v in saved.items() if k in known}))


def _train(run: Callable[[C], TrainedRun], settings: C) -> TrainedRun:
    import torch

    # As the programs: denormal floats make CPU training several times slower as weights shrink.
    torch.set_flush_denormal(True)
    return run(settings)


def finetune(config: Stage1Config | None = None, /, **options: Any) -> TrainedRun:
    """Stage 1: fine-tune CLIP's towers so that norm(f_I(reference) + f_T(caption)) finds the
    target. E.g. `finetune(dataset="cirr", data_root="DATA", model="RN50x4", pretrained="openai",
    encoder="both")`. Returns the run (its folder, best and last validation numbers)."""
    from clip_cir.training import stage1

    return _train(stage1.run, training_settings(Stage1Config, config, options))


def train_combiner(config: Stage2Config | None = None, /, **options: Any) -> TrainedRun:
    """Stage 2: train a Combiner on the frozen features of a CLIP (`pretrained=` a stage-1 run)."""
    from clip_cir.training import stage2

    return _train(stage2.run, training_settings(Stage2Config, config, options))


def pretrain(config: PretrainConfig | None = None, /, **options: Any) -> TrainedRun:
    """Contrastive image-caption pretraining of a CLIP on a CSV of captions (`train_data=`)."""
    from clip_cir.training import pretrain as pretraining

    return _train(pretraining.run, training_settings(PretrainConfig, config, options))


def train_attributes(config: AttributesConfig | None = None, /, **options: Any) -> TrainedRun:
    """FLAM on the frozen CLIP image features of an attribute catalogue (`catalogue=` a folder in
    ADDE's or the CSV layout); its run keeps `flam.safetensors`."""
    from clip_cir.training import attributes_stage

    return _train(attributes_stage.run, training_settings(AttributesConfig, config, options))


def train_zero_shot(config: ZeroShotConfig | None = None, /, **options: Any) -> TrainedRun:
    """A zero-shot mapping network φ (Pic2Word, SEARLE, LinCIR) on a frozen CLIP, e.g.
    `train_zero_shot(method="pic2word", gallery_dir="PHOTOS", pretrained="openai", model="ViT-B-32")`,
    or with `dataset=`/`data_root=` to train on a benchmark's training images and validate on it.
    φ is in the run's `best/` (or, without validation, `last/`) as `phi.safetensors`."""
    from clip_cir.training import zero_shot_stage

    return _train(zero_shot_stage.run, training_settings(ZeroShotConfig, config, options))
