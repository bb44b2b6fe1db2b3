"""Typed settings of every program: one dataclass per concern, one per program built from them.

The command lines (`clip_cir.params`) and the Python API build these from the same flat option
names (`Stage1Config.from_options({"dataset": "cirr", "lr": 1e-5, ...})`, the names `config.json`
records), and the library below the programs takes them instead of parsed command lines. Each
default lives here, once: the parsers read their defaults from these classes. Importing this
module loads no torch (fast `--help`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

from clip_cir.constants import (
    COMBINING,
    ENCODERS,
    FAISS_INDEXES,
    LR_SCHEDULERS,
    SEARCH_BACKENDS,
    TRACKERS,
    TRANSFORMS,
    VALIDATION_SCHEDULES,
)
from clip_cir.errors import CIRError

C = TypeVar("C", bound="Options")

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


class Options:
    """A settings dataclass whose fields (and its sections' fields) have unique flat names: the
    command line's option names with `_` for `-`, and the keys of a run's `config.json`."""

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any], base: C | None = None) -> C:
        """Settings from flat options; `base` (default: this class's defaults) supplies the rest.
        An unknown name is refused, so a misspelt option cannot be silently ignored."""
        remaining = dict(options)
        built = _build(cls, remaining, base if base is not None else cls())
        if remaining:
            raise CIRError(f"unknown option{'s' if len(remaining) > 1 else ''} for {cls.__name__}: "
                           f"{', '.join(sorted(remaining))} (known: {', '.join(sorted(cls.option_names()))})")
        return built

    @classmethod
    def option_names(cls) -> list[str]:
        names = []
        for f in dataclasses.fields(cls):
            kind = _section_type(cls, f)
            names += kind.option_names() if kind else [f.name]
        return names

    def to_options(self) -> dict[str, Any]:
        """The flat options (what `config.json` records; `from_options` reads them back)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out.update(value.to_options() if isinstance(value, Options) else {f.name: value})
        return out


def portable_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Flat options as JSON, with local paths made absolute so the config means the same from any
    working directory (a later stage, the report or a resumed run reads it)."""
    def value(v: Any) -> Any:
        if isinstance(v, Path) or (isinstance(v, str) and os.path.sep in v and os.path.exists(v)):
            return str(Path(v).resolve())
        if isinstance(v, tuple):
            return list(v)
        return v
    return {k: value(v) for k, v in options.items()}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns=globals())


def _section_type(cls: type, f: dataclasses.Field) -> type[Options] | None:
    hint = _hints(cls)[f.name]
    return hint if isinstance(hint, type) and issubclass(hint, Options) else None


CHOICES = {"lr_scheduler": LR_SCHEDULERS, "validation_schedule": VALIDATION_SCHEDULES, "encoder": ENCODERS,
           "mixed_precision": (None, "no", "fp16", "bf16"), "channels_last": ("auto", "on", "off"),
           "pixel_cache": ("auto", "on", "off"), "transform": TRANSFORMS, "tracker": TRACKERS,
           "combining": COMBINING, "search": SEARCH_BACKENDS, "faiss_index": FAISS_INDEXES}
"""The settings that take one of a few values (the command lines' `choices`)."""


KINDS = {int: "an integer", float: "a number", str: "a string", bool: "True or False", Path: "a path"}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """A value from JSON, a command line or Python as the field's type (paths from strings, a
    list or one string as a tuple of strings, an int where a float goes), or a one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        hint, origin, args = inner[0], typing.get_origin(inner[0]), typing.get_args(inner[0])
    coerced = value
    if hint is Path and isinstance(value, (str, os.PathLike)):
        coerced = Path(value)
    elif hint is str and isinstance(value, os.PathLike):  # a checkpoint path as `pretrained`
        coerced = os.fspath(value)
    elif hint is float and isinstance(value, int) and not isinstance(value, bool):
        coerced = float(value)
    elif origin is tuple:
        items = [value] if isinstance(value, str) else value
        coerced = tuple(items) if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items) else None
    expected = tuple if origin is tuple else hint
    if coerced is None or not isinstance(coerced, expected) or (expected is int and isinstance(coerced, bool)):
        kind = "a list of strings" if origin is tuple else KINDS.get(expected, expected.__name__)
        raise CIRError(f"{option_flag(name)} takes {kind}, got {value!r}")
    if name in CHOICES and coerced not in CHOICES[name]:
        raise CIRError(f"{option_flag(name)} must be one of {', '.join(str(c) for c in CHOICES[name] if c)}, "
                       f"got {value!r}")
    return coerced


def _build(cls: type[C], options: dict[str, Any], base: C) -> C:
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = _section_type(cls, f)
        if kind is not None:
            # A section may share its name with one of its options (`model`): only a section instance
            # given whole is taken as the section.
            if isinstance(options.get(f.name), kind):
                values[f.name] = options.pop(f.name)
            else:
                values[f.name] = _build(kind, options, getattr(base, f.name))
        elif f.name in options:
            values[f.name] = _coerce(f.name, options.pop(f.name), hints[f.name])
    return dataclasses.replace(base, **values)


# ---- sections -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig(Options):
    """Which benchmark and how to read it (docs/datasets.md)."""

    dataset: str | None = None
    data_root: Path | None = None
    fashioniq_categories: tuple[str, ...] | None = FASHIONIQ_CATEGORIES
    circo_query_text: str = "caption"
    csv_reference_key: str = "reference"
    csv_caption_key: str = "caption"
    csv_target_key: str = "target"
    csv_separator: str | None = None
    keep_reference: bool = False
    skip_missing_images: bool = False


@dataclass(frozen=True)
class QueryDataConfig(DataConfig):
    """What the commands that rank read: one split of a benchmark, or a folder of photos as the
    gallery (with a file of queries, or none)."""

    split: str = "val"
    gallery_dir: Path | None = None
    query_file: Path | None = None


@dataclass(frozen=True)
class CaptionDataConfig(Options):
    """Pretraining's data: open_clip's CSV of image paths and captions."""

    train_data: Path | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = "\t"
    val_fraction: float = 0.05
    skip_missing_images: bool = False


@dataclass(frozen=True)
class ModelConfig(Options):
    """Which CLIP (`models.clip.load_clip`) and how images are preprocessed for it."""

    model: str | None = None
    pretrained: str | None = None
    transform: str = "targetpad"
    target_ratio: float = 1.25


@dataclass(frozen=True)
class CacheConfig(Options):
    """The feature cache (frozen towers' features) and the pixel cache (decoded images)."""

    cache_dir: Path | None = None
    no_cache: bool = False
    pixel_cache: str = "auto"
    pixel_cache_dir: Path | None = None


@dataclass(frozen=True)
class DeviceConfig(Options):
    """Where and how the math runs. `mixed_precision` None: what `accelerate launch` says."""

    cpu: bool = False
    mixed_precision: str | None = None
    num_workers: int | None = None
    channels_last: str = "auto"
    deterministic: bool = False
    """Off: cuDNN benchmark mode and TF32 matmuls on CUDA (faster); on: neither (bit-exact reruns)."""


@dataclass(frozen=True)
class CombiningConfig(Options):
    """How a reference image and a caption become one query: a function, or a Combiner checkpoint."""

    combining: str = "sum"
    combiner: str | None = None


@dataclass(frozen=True)
class SearchConfig(Options):
    """The nearest-neighbour back-end (`encoding.search`)."""

    search: str = "exact"
    faiss_index: str = "ivf"
    faiss_nprobe: int | None = None


@dataclass(frozen=True)
class EncodeConfig(Options):
    batch_size: int = 256
    """Images per forward pass."""


@dataclass(frozen=True)
class TrainingConfig(Options):
    """How long and how a training program optimises; each program has its published defaults."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "const"
    warmup: int = 0
    validation_frequency: int = 1
    validation_schedule: str = "published"
    """published: after 0-based epochs with epoch % N == 0 (1, N+1, 2N+1, ... counted from 1), as
    the published code; every-nth-and-last: after epochs N, 2N, ... and the last."""
    log_every: int = 10
    seed: int = 0

    def validates_after(self, epoch: int) -> bool:
        """Whether the loop validates after 0-based `epoch` (docs/training.md)."""
        n = self.validation_frequency
        if self.validation_schedule == "published":
            return epoch % n == 0
        return (epoch + 1) % n == 0 or epoch + 1 == self.epochs

    def check(self) -> None:
        for name in ("epochs", "batch_size", "lr", "validation_frequency", "log_every"):
            if getattr(self, name) <= 0:
                raise CIRError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.warmup < 0:
            raise CIRError("--weight-decay and --warmup must not be negative")

    def check_batch_split(self, num_processes: int, accum_steps: int = 1) -> None:
        """The global batch splits into equal per-process batches, and each of those into
        `accum_steps` equal micro-batches."""
        if accum_steps <= 0:
            raise CIRError(f"--accum-steps must be positive, got {accum_steps}")
        local = self.batch_size // num_processes
        if self.batch_size % num_processes or local % accum_steps:
            raise CIRError(f"--batch-size {self.batch_size} over {num_processes} process(es) does not split into "
                           f"--accum-steps {accum_steps} equal micro-batches; pick a batch size divisible by "
                           f"{num_processes * accum_steps}")


@dataclass(frozen=True)
class TowerTrainingConfig(Options):
    """What the programs that train CLIP towers (stage 1, pretraining) add: exact gradient
    accumulation (memory) and torch.compile (speed)."""

    accum_steps: int = 1
    """Micro-batches per optimizer step; the contrastive loss still sees the whole batch."""
    compile: bool = False


@dataclass(frozen=True)
class RunConfig(Options):
    """The run directory and the tracker (docs/training.md, "The run directory")."""

    output_dir: Path = Path("runs")
    experiment_name: str | None = None
    resume: Path | None = None
    tracker: str = "none"
    no_progress: bool = False


RESUME_OVERRIDABLE = ("epochs", "num_workers", "no_progress", "cpu", "cache_dir", "no_cache", "pixel_cache",
                      "pixel_cache_dir", "accum_steps", "log_every", "channels_last", "compile", "deterministic")
"""What a resumed run may change: how long and how it runs, not what it trains."""


def option_flag(name: str) -> str:
    """An option's command-line spelling: `accum_steps` -> `--accum-steps`."""
    return "--" + name.replace("_", "-")


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CIRError(f"{path}: not found; --resume takes a run directory")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CIRError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(saved, dict):
        raise CIRError(f"{path}: a run config is a JSON object, got {type(saved).__name__}")
    return saved


SAVED_BEFORE = {"validation_schedule": "every-nth-and-last"}
"""What a run whose config.json predates an option ran with (not that option's default today)."""


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run's `config.json`: the flat settings it was started with (see `SAVED_BEFORE`)."""
    return {**SAVED_BEFORE, **_read_json_object(Path(run_dir) / "config.json")}


def check_resumed_options(saved: Mapping[str, Any], given: Mapping[str, Any], known: list[str]) -> None:
    """A resumed run keeps its settings: each option `given` must agree with the run's `saved`
    value or be one of `RESUME_OVERRIDABLE` (how long and how it runs). `known`: the program's
    option names, for the message."""
    for key, value in given.items():
        changed = key in saved and portable_config({key: value})[key] != saved[key]
        if changed and key not in RESUME_OVERRIDABLE and key != "resume":
            may_change = ", ".join(option_flag(k) for k in RESUME_OVERRIDABLE if k in known)
            raise CIRError(f"{option_flag(key)} {value} differs from the resumed run's {saved[key]!r} (a resumed "
                           f"run keeps its settings; only {may_change} may change)")


# ---- programs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingProgramConfig(Options):
    """What every training program has."""

    program: ClassVar[str] = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def data_name(self) -> str:
        """What the run directory's default name and config.json call the data."""
        return self.data.dataset or "data"

    @property
    def accum_steps(self) -> int:
        """Micro-batches per optimizer step (1 where the program has no such setting)."""
        return 1

    def check(self, num_processes: int = 1) -> None:
        """Every setting makes sense, and the global batch splits over `num_processes`."""
        self.training.check()
        self.training.check_batch_split(num_processes, self.accum_steps)
        if self.device.num_workers is not None and self.device.num_workers < 0:
            raise CIRError(f"--num-workers must not be negative, got {self.device.num_workers}")


@dataclass(frozen=True)
class TowerTrainingProgramConfig(TrainingProgramConfig):
    """A program that trains CLIP towers (stage 1, pretraining)."""

    towers: TowerTrainingConfig = field(default_factory=TowerTrainingConfig)

    @property
    def accum_steps(self) -> int:
        return self.towers.accum_steps


@dataclass(frozen=True)
class Stage1Config(TowerTrainingProgramConfig):
    """Stage 1: fine-tune CLIP's towers on the normalised sum (docs/training.md)."""

    program: ClassVar[str] = "stage1"
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=100, batch_size=128, lr=2e-6, weight_decay=0.01, validation_frequency=1))
    encoder: str = "text"
    grad_checkpointing: bool = False


@dataclass(frozen=True)
class Stage2Config(TrainingProgramConfig):
    """Stage 2: train a Combiner on frozen CLIP features."""

    program: ClassVar[str] = "stage2"
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=300, batch_size=4096, lr=2e-5, weight_decay=0.0, validation_frequency=3))
    projection_dim: int | None = None
    """Default: 4x the CLIP embedding size."""
    hidden_dim: int | None = None
    """Default: 8x the CLIP embedding size."""

    def check(self, num_processes: int = 1) -> None:
        super().check(num_processes)
        for name in ("projection_dim", "hidden_dim"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise CIRError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass(frozen=True)
class PretrainConfig(TowerTrainingProgramConfig):
    """Contrastive image-caption pretraining of a CLIP (open_clip's loss)."""

    program: ClassVar[str] = "pretrain"
    data: CaptionDataConfig = field(default_factory=CaptionDataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=2, batch_size=128, lr=3e-4, weight_decay=0.1, validation_frequency=1))

    @property
    def data_name(self) -> str:
        return "captions"

    def check(self, num_processes: int = 1) -> None:
        super().check(num_processes)
        if self.data.train_data is None:
            raise CIRError("the following arguments are required: --train-data")
        if not 0 < self.data.val_fraction < 1:
            raise CIRError(f"--val-fraction must be between 0 and 1, got {self.data.val_fraction}")


@dataclass(frozen=True)
class RankingConfig(Options):
    """What every command that encodes and ranks has (eval, rank, the submissions, the demo)."""

    data: QueryDataConfig = field(default_factory=QueryDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    combining: CombiningConfig = field(default_factory=CombiningConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    device: DeviceConfig = field(default_factory=lambda: DeviceConfig(mixed_precision="no"))
    search: SearchConfig = field(default_factory=SearchConfig)
