"""The settings themselves: one dataclass per concern and one per program, with every default
the programs have."""


from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from clip_cir.config.options import Options
from clip_cir.constants import ADDE_TOP_K, ZERO_SHOT_METHODS
from clip_cir.errors import CIRError

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")

# ---- sections -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataConfig(Options):
    """Which benchmark and how to read it (docs/datasets.md)."""

    dataset: str | None = None
    data_root: Path | None = None
    fashioniq_categories: tuple[str, ...] | None = FASHIONIQ_CATEGORIES
    fashioniq_protocol: str = "clip4cir"
    shoes_protocol: str = "val"
    circo_query_text: str = "caption"
    css_query_images: str = "3d"
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

    split: str | None = None
    """None: the benchmark's validation split (`val`, or `test` for tirg's benchmarks)."""
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


def check_slerp_alpha(alpha: float) -> float:
    """Slerp's α as a float in [0, 1] (0: the reference image alone, 1: the caption alone), or a
    one-line error."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise CIRError(f"--slerp-alpha must be between 0 (the reference image alone) and 1 (the caption alone), "
                       f"got {alpha!r}")
    return float(alpha)


@dataclass(frozen=True)
class CombiningConfig(Options):
    """How a reference image and a caption become one query: a function, or a Combiner checkpoint."""

    combining: str = "sum"
    combiner: str | None = None
    slerp_alpha: float = 0.8
    """`--combining slerp`'s α: how far along the great circle from the image to the caption the
    query lies (docs/zero-shot.md)."""
    zero_shot: str | None = None
    """A zero-shot mapping network φ (`clip-cir zero-shot` run, φ file or `hf-hub:`): queries are the
    text features of its prompt with φ(reference) as the pseudo-word; its method is the combining."""
    prompt_template: str | None = None
    """The prompt φ's pseudo-word and the caption go into (None: the one φ was trained with)."""

    def __post_init__(self) -> None:
        check_slerp_alpha(self.slerp_alpha)  # refused with the other settings, before any work
        if self.combining in ZERO_SHOT_METHODS and self.zero_shot is None and self.combiner is None:
            raise CIRError(f"--combining {self.combining} needs --zero-shot RUN (a mapping network trained by "
                           f"`clip-cir zero-shot --method {self.combining}`)")
        if self.zero_shot is not None and self.combiner is not None:
            raise CIRError("give --combiner or --zero-shot, not both")
        if self.zero_shot is not None and self.combining not in (*ZERO_SHOT_METHODS, "sum"):
            raise CIRError(f"--zero-shot gives the pseudo-word composition; it does not go with --combining "
                           f"{self.combining}")
        if self.prompt_template is not None and self.zero_shot is None:
            raise CIRError("--prompt-template goes with --zero-shot (the prompt of a pseudo-word composition)")


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
    """The run directory and the tracker (docs/training.md, "Run directory")."""

    output_dir: Path = Path("runs")
    experiment_name: str | None = None
    resume: Path | None = None
    tracker: str = "none"
    no_progress: bool = False


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
    """Stage 2: train a compositor (the Combiner by default) on frozen CLIP features."""

    program: ClassVar[str] = "stage2"
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=300, batch_size=4096, lr=2e-5, weight_decay=0.0, validation_frequency=3))
    projection_dim: int | None = None
    """Default: 4x the CLIP embedding size."""
    hidden_dim: int | None = None
    """Default: 8x the CLIP embedding size."""
    compositor: str = "combiner"
    """Which network composes the query (docs/compositors.md); `projection_dim`/`hidden_dim` size the Combiner."""
    compositor_options: tuple[str, ...] = ()
    """`KEY=VALUE` settings of the compositor beyond its paper's defaults (e.g. `residual=true` for MAAF)."""
    token_grid: int | None = None
    """Average-pool the image token grid to at most this many cells a side (None: the tower's own grid)."""
    loss: str = "contrastive"
    """The method's batch contrastive loss, or TIRG/LBF's soft triplet plus batch classification."""

    def check(self, num_processes: int = 1) -> None:
        super().check(num_processes)
        for name in ("projection_dim", "hidden_dim", "token_grid"):
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
class AttributeDataConfig(Options):
    """An attribute-labelled catalogue (docs/attribute-manipulation.md): a folder in ADDE's layout or
    the CSV one (None: found from its files), and where its images are."""

    catalogue: Path | None = None
    catalogue_layout: str | None = None
    image_root: Path | None = None
    """Default: the catalogue folder."""
    validation_split: str | None = None
    """Default: `val` when the catalogue has one, else `test`."""
    skip_missing_images: bool = False


@dataclass(frozen=True)
class AttributesConfig(TrainingProgramConfig):
    """FLAM on frozen CLIP image features: epochs 1..`embedding_epochs` train the attribute
    embedders, the later ones every attribute's manipulator and discriminator. Defaults: the
    paper's k = 32 and its two phases, and `clip_cir.training.flam`'s settings where it gives none."""

    program: ClassVar[str] = "attributes"
    data: AttributeDataConfig = field(default_factory=AttributeDataConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=200, batch_size=64, lr=1e-3, weight_decay=0.0, validation_frequency=10,
        validation_schedule="every-nth-and-last"))
    embedding_epochs: int = 100
    gan_lr: float = 2e-4
    """The manipulators' and discriminators' learning rate (`--lr` is the embedders'; a schedule
    scales both alike)."""
    embedding_dim: int = 32
    embedder_hidden: int = 512
    manipulator_hidden: int = 512
    discriminator_hidden: int = 512
    single_matching: bool = False
    """The paper's "S" variant: D matches the manipulated attribute's embedding only."""
    residual: bool = False
    random_pairs: bool = False
    """x- drawn at random instead of by online sampling."""
    learned_dictionary: bool = False
    """Keep the learned dictionary vectors instead of the class centroids."""
    margin: float = 0.2
    adversarial_weight: float = 1.0
    matching_weight: float = 1.0
    cycle_weight: float = 1.0
    top_k: int = ADDE_TOP_K
    """k of the validation's top-k accuracy (the selection score) and NDCG@k (ADDE's 30)."""

    @property
    def data_name(self) -> str:
        return Path(self.data.catalogue).name if self.data.catalogue is not None else "catalogue"

    def check(self, num_processes: int = 1) -> None:
        super().check(num_processes)
        if self.data.catalogue is None:
            raise CIRError("the following arguments are required: --catalogue")
        if not 0 <= self.embedding_epochs < self.training.epochs:
            raise CIRError(f"--embedding-epochs must be at least 0 and below --epochs ({self.training.epochs}), "
                           f"got {self.embedding_epochs}")
        for name in ("gan_lr", "embedding_dim", "top_k", "margin"):
            if getattr(self, name) <= 0:
                raise CIRError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("embedder_hidden", "manipulator_hidden", "discriminator_hidden", "adversarial_weight",
                     "matching_weight", "cycle_weight"):
            if getattr(self, name) < 0 or (name in ("manipulator_hidden", "discriminator_hidden")
                                           and getattr(self, name) == 0):
                raise CIRError(f"--{name.replace('_', '-')} must not be negative (hidden widths of G and D: "
                               f"positive), got {getattr(self, name)}")


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
