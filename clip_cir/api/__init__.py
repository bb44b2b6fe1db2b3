"""clip-cir's Python API (docs/api.md): load a model in one call, then encode, compose and
search (`inference`); train from settings (`training`). The commands run the same code: the demo
answers through `CIRModel` and `Gallery`, and `clip-cir finetune`, `train-combiner` and
`pretrain` call `finetune`, `train_combiner` and `pretrain`; `clip-cir train-attributes` and
`zero-shot` call `train_attributes` and `train_zero_shot`."""

from clip_cir.api.inference import CACHE_MIN_ROWS, CIRModel, Gallery, GalleryFeatures
from clip_cir.api.inputs import check_caption
from clip_cir.api.loading import load
from clip_cir.api.training import (
    finetune,
    pretrain,
    train_attributes,
    train_combiner,
    train_zero_shot,
    training_settings,
)
from clip_cir.training.loop import TrainedRun

__all__ = ["CACHE_MIN_ROWS", "CIRModel", "Gallery", "GalleryFeatures", "TrainedRun", "check_caption", "finetune",
           "load", "pretrain", "train_attributes", "train_combiner", "train_zero_shot", "training_settings"]
