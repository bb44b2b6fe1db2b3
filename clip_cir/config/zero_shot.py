"""The settings of `clip-cir zero-shot` (a zero-shot mapping network, docs/training.md): its
data sources, SEARLE's textual inversion and the network's sizes, and the checks that the
sources name what the method trains on, before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from clip_cir.config.options import Options, option_flag
from clip_cir.config.settings import DataConfig, TowerTrainingProgramConfig, TrainingConfig
from clip_cir.errors import CIRError


@dataclass(frozen=True)
class ZeroShotDataConfig(DataConfig):
    """What a zero-shot mapping network trains on: images (a benchmark's training split, a folder
    of photos or a file listing them) or captions (a file, or a benchmark's training captions).
    A benchmark given with `dataset`/`data_root` is also what validation reads."""

    gallery_dir: Path | None = None
    image_list: Path | None = None
    captions: Path | None = None
    caption_column: str | None = None
    concepts: Path | None = None
    """SEARLE's concept words, one per line (default: the content words of the captions)."""

    @property
    def image_source(self) -> str | None:
        """The option that names the training images, or None where there are none."""
        if self.gallery_dir is not None:
            return "--gallery-dir"
        if self.image_list is not None:
            return "--image-list"
        return "--dataset" if self.dataset is not None else None

    @property
    def caption_source(self) -> str | None:
        """The option that names the training captions, or None where there are none."""
        if self.captions is not None:
            return "--captions"
        return "--dataset" if self.dataset is not None else None


@dataclass(frozen=True)
class TextualInversionConfig(Options):
    """SEARLE's optimisation-based textual inversion of the training images, before φ trains
    (defaults: `training.textual_inversion`'s, SEARLE's `oti_inversion.py`)."""

    oti_steps: int = 350
    oti_lr: float = 2e-2
    oti_weight_decay: float = 0.01
    oti_ema_decay: float = 0.99
    oti_batch_size: int = 32
    oti_top_k: int = 15
    """Concept words kept per image (the nearest by CLIP similarity)."""

    def check(self) -> None:
        for name in ("oti_steps", "oti_lr", "oti_batch_size", "oti_top_k"):
            if getattr(self, name) <= 0:
                raise CIRError(f"{option_flag(name)} must be positive, got {getattr(self, name)}")
        if self.oti_weight_decay < 0 or not 0 <= self.oti_ema_decay < 1:
            raise CIRError("--oti-weight-decay must not be negative and --oti-ema-decay must be in [0, 1)")


ZERO_SHOT_IMAGE_METHODS = ("pic2word", "searle")
"""The methods that train on images (LinCIR trains on captions alone)."""


@dataclass(frozen=True)
class ZeroShotConfig(TowerTrainingProgramConfig):
    """A zero-shot mapping network φ (Pic2Word, SEARLE, LinCIR) on a frozen CLIP (docs/training.md).
    `accum_steps` and `compile` apply: every step runs the frozen text tower, and φ's gradients
    pass through it."""

    program: ClassVar[str] = "zero-shot"
    data: ZeroShotDataConfig = field(default_factory=ZeroShotDataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=30, batch_size=256, lr=1e-4, weight_decay=0.01, validation_frequency=1))
    inversion: TextualInversionConfig = field(default_factory=TextualInversionConfig)
    method: str = "pic2word"
    prompt_template: str | None = None
    """The query prompt φ is validated and saved with (default: the method's)."""
    phi_hidden_dim: int | None = None
    """Default: the method's (Pic2Word 512, SEARLE and LinCIR 4x the CLIP embedding size)."""
    phi_layers: int | None = None
    """Pic2Word's hidden blocks (default 2)."""
    phi_dropout: float | None = None
    """Default: the method's (Pic2Word 0.1, SEARLE and LinCIR 0.5)."""

    @property
    def data_name(self) -> str:
        if self.data.dataset:
            return self.data.dataset
        return "images" if self.method in ZERO_SHOT_IMAGE_METHODS else "captions"

    @property
    def phi_options(self) -> dict:
        """The mapping network's size options that were set (`models.zero_shot.build_mapping`)."""
        names = {"phi_hidden_dim": "hidden_dim", "phi_layers": "layers", "phi_dropout": "dropout"}
        return {key: getattr(self, name) for name, key in names.items() if getattr(self, name) is not None}

    def check(self, num_processes: int = 1) -> None:
        super().check(num_processes)
        self.inversion.check()
        self._check_sizes()
        self._check_sources()

    def _check_sizes(self) -> None:
        for name in ("phi_hidden_dim", "phi_layers"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise CIRError(f"{option_flag(name)} must be positive, got {value}")
        if self.phi_dropout is not None and not 0 <= self.phi_dropout < 1:
            raise CIRError(f"--phi-dropout must be in [0, 1), got {self.phi_dropout}")
        if self.phi_layers is not None and self.method != "pic2word":
            raise CIRError(f"--phi-layers sizes Pic2Word's network; {self.method}'s has three fixed layers")

    def _check_sources(self) -> None:
        """The data options name what the method trains on, and nothing it would not read."""
        data, method = self.data, self.method
        if (data.dataset is None) != (data.data_root is None):
            raise CIRError("--dataset and --data-root go together (the benchmark to train on or validate on)")
        if data.gallery_dir is not None and data.image_list is not None:
            raise CIRError("give the training images once: --gallery-dir or --image-list, not both")
        if data.caption_column is not None and data.captions is None:
            raise CIRError("--caption-column names a column of --captions FILE, which is not given")
        if data.concepts is not None and method != "searle":
            raise CIRError(f"--concepts is read by --method searle only, not by {method}")
        if method in ZERO_SHOT_IMAGE_METHODS:
            if data.image_source is None:
                raise CIRError(f"--method {method} trains on images: give --gallery-dir PHOTOS, --image-list FILE "
                               f"or --dataset/--data-root (its training images)")
            if method == "pic2word" and data.captions is not None:
                raise CIRError("--method pic2word trains on images alone: --captions is not read")
            if method == "searle" and data.concepts is None and data.caption_source is None:
                raise CIRError("--method searle needs concept words: --concepts FILE (one per line), or captions "
                               "to take them from (--captions FILE or --dataset/--data-root)")
        else:
            if data.gallery_dir is not None or data.image_list is not None:
                raise CIRError(f"--method {method} trains on captions alone: {data.image_source} is not read")
            if data.caption_source is None:
                raise CIRError(f"--method {method} trains on captions: give --captions FILE or "
                               f"--dataset/--data-root (its training captions)")
